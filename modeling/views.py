"""Training screens (admins only): jobs and models, the launch form, a job's live progress; and
the checkpoint page (admins and reviewers): lineage, files, training metrics, the sections apps
above contribute (modeling.page_sections) and the playground. Each view checks the method and
role, calls one service, renders.

A dead worker's job reads `failed` within the heartbeat window: the scheduled sweep
(jobs.tasks.sweep) decides that, not these pages.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.urls import reverse
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.forms import add_service_errors
from core.roles import Role, role_required
from feedback.models import Project
from modeling import selectors, services
from modeling.forms import (
    CONFIG_PREFIX,
    DrafterForm,
    DraftRunForm,
    JobLaunchForm,
    PlaygroundForm,
    VoteRunForm,
)
from modeling.models import (
    AssistKind,
    AssistRun,
    Checkpoint,
    JobKind,
    PlaygroundTurn,
    ProjectDrafter,
    TrainingJob,
)
from modeling.page_sections import checkpoint_sections_render


@require_GET
@role_required(Role.ADMIN)
def jobs(request: HttpRequest) -> HttpResponse:
    recent = list(selectors.jobs_recent())
    context = {
        "jobs": recent,
        "any_active": any(job.is_active for job in recent),
        "checkpoints": selectors.checkpoints_all()[:200],
        "kinds": JobKind.choices,
    }
    polling = request.htmx and request.htmx.target == "job-table"
    return render(request, "modeling/jobs.html" + ("#job-table" if polling else ""), context)


@require_http_methods(["GET", "POST"])
@role_required(Role.ADMIN)
def job_new(request: HttpRequest, kind: str) -> HttpResponse:
    # "Train from here" links preselect the starting checkpoint.
    initial = {"parent": request.GET.get("parent")} if request.GET.get("parent") else None
    form = JobLaunchForm(
        request.POST or None,
        kind=_job_kind(kind),
        initial=initial,
        presets=request.GET.getlist("preset"),
    )
    if request.method == "POST" and form.is_valid():
        try:
            job = services.job_launch(kind=kind, launched_by=request.user, **form.launch_kwargs())
        except ValidationError as exc:
            add_service_errors(form, exc, field_prefix=CONFIG_PREFIX)
        else:
            messages.success(request, f"Job #{job.pk} is queued for a GPU worker.")
            return redirect("modeling:job", job_id=job.pk)
    return _render_launch(request, form, status=422 if form.is_bound else 200)


@require_POST
@role_required(Role.ADMIN)
def job_validate(request: HttpRequest, kind: str) -> HttpResponse:
    """htmx: the launch form re-rendered with its errors and step estimate, nothing launched."""
    form = JobLaunchForm(request.POST, kind=_job_kind(kind))
    form.is_valid()
    return _render_launch(request, form, partial=True)


@require_GET
@role_required(Role.ADMIN)
def job(request: HttpRequest, job_id: int) -> HttpResponse:
    try:
        job = selectors.job_detail(job_id=job_id)
    except TrainingJob.DoesNotExist:
        raise Http404("No such job.") from None
    polling = request.htmx and request.htmx.target == "job-progress"
    template = "modeling/job_detail.html" + ("#progress" if polling else "")
    return render(request, template, {"job": job})


@require_POST
@role_required(Role.ADMIN)
def job_cancel(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(TrainingJob, pk=job_id)
    try:
        job = services.job_cancel(job=job, cancelled_by=request.user)
    except ValidationError as exc:
        messages.error(request, exc.messages[0])
    else:
        verb = "cancelled" if job.status == "cancelled" else "asked to stop at the next step"
        messages.success(request, f"Job #{job.pk} {verb}.")
    return redirect("modeling:job", job_id=job.pk)


@require_POST
@role_required(Role.ADMIN)
def job_rerun(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(TrainingJob, pk=job_id)
    try:
        rerun = services.job_rerun(job=job, launched_by=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("modeling:job", job_id=job.pk)
    messages.success(request, f"Attempt {rerun.attempt} of job #{job.pk} is queued.")
    return redirect("modeling:job", job_id=rerun.pk)


@require_GET
@role_required(*services.PLAYGROUND_ROLES)
def checkpoint(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(selectors.checkpoints_all(), pk=checkpoint_id)
    turn_id = request.GET.get("turn", "")
    turn = selectors.playground_turn_shown(
        checkpoint=checkpoint,
        user=request.user,
        turn_id=int(turn_id) if turn_id.isdigit() else None,
    )
    return _render_checkpoint(request, checkpoint, turn=turn, form=PlaygroundForm.after(turn))


@require_POST
@role_required(*services.PLAYGROUND_ROLES)
def playground(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(selectors.checkpoints_all(), pk=checkpoint_id)
    form = PlaygroundForm(request.POST)
    is_htmx = bool(request.htmx)
    turn = None
    if form.is_valid():
        try:
            turn = services.playground_turn_request(
                checkpoint=checkpoint, requested_by=request.user, **form.request_kwargs()
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
    if turn is None:  # refused: the conversation it was meant for stays above the form
        previous = form.previous_turn(user=request.user)
        return _render_checkpoint(
            request, checkpoint, turn=previous, form=form, status=422, playground_only=is_htmx
        )
    if not is_htmx:
        return redirect(_turn_url(checkpoint.pk, turn.pk))
    form = PlaygroundForm.after(turn)
    return _render_checkpoint(request, checkpoint, turn=turn, form=form, playground_only=True)


@require_GET
@role_required(*services.PLAYGROUND_ROLES)
def playground_turn(request: HttpRequest, checkpoint_id: int, turn_id: int) -> HttpResponse:
    """htmx: a turn's reply, polled until it is there."""
    turn = get_object_or_404(
        PlaygroundTurn, pk=turn_id, checkpoint_id=checkpoint_id, requested_by=request.user
    )
    if not request.htmx:
        return redirect(_turn_url(checkpoint_id, turn.pk))
    return render(request, "modeling/checkpoint_detail.html#playground-reply", {"turn": turn})


# --- helpers -----------------------------------------------------------------------------------


def _turn_url(checkpoint_id: int, turn_id: int) -> str:
    return reverse("modeling:checkpoint", args=[checkpoint_id]) + f"?turn={turn_id}#playground"


def _render_checkpoint(
    request: HttpRequest,
    checkpoint: Checkpoint,
    *,
    turn: PlaygroundTurn | None,
    form: PlaygroundForm,
    status: int = 200,
    playground_only: bool = False,
) -> HttpResponse:
    """The page, or only its playground's box (what an htmx post swaps)."""
    if playground_only:
        context = {"checkpoint": checkpoint, "turn": turn, "form": form}
        return render(request, "modeling/checkpoint_detail.html#playground", context, status=status)
    lineage = selectors.checkpoint_lineage(checkpoint=checkpoint)
    context = {
        "checkpoint": checkpoint,
        "lineage": lineage,
        "files": selectors.checkpoint_files(checkpoint=checkpoint),
        "jobs": checkpoint.jobs.select_related("checkpoint")[:20],
        "sections": checkpoint_sections_render(request, checkpoint=checkpoint, lineage=lineage),
        "turn": turn,
        "form": form,
    }
    return render(request, "modeling/checkpoint_detail.html", context, status=status)


def _job_kind(kind: str) -> str:
    if kind not in JobKind.values:
        raise Http404("No such job kind.")
    return kind


def _render_launch(
    request: HttpRequest, form: JobLaunchForm, *, status: int = 200, partial: bool = False
) -> HttpResponse:
    if form.is_bound:
        snapshot = form.cleaned_data.get("snapshot") if hasattr(form, "cleaned_data") else None
        config = form.cleaned_config
    else:
        snapshot = form.fields["snapshot"].queryset.first()
        config = {**selectors.config_defaults(kind=form.kind), **form.preset_config}
    estimate = None
    if snapshot is not None and config is not None:
        estimate = selectors.steps_estimate(kind=form.kind, config=config, snapshot=snapshot)
    context = {
        "form": form,
        "kind": form.kind,
        "kind_label": JobKind(form.kind).label,
        "kinds": JobKind.choices,
        "snapshot": snapshot,
        "estimate": estimate,
    }
    template = "modeling/job_new.html" + ("#launch-form" if partial else "")
    return render(request, template, context, status=status)


# --- AI help with labelling (modeling.services.assist) ------------------------------------------


@require_GET
@role_required(Role.ADMIN)
def assist(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    drafter = ProjectDrafter.objects.filter(project=project).first()
    return _render_assist(request, project, drafter)


@require_POST
@role_required(Role.ADMIN)
def assist_drafter(request: HttpRequest, project_id: int) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    form = DrafterForm(request.POST)
    if form.is_valid():
        try:
            services.project_drafter_set(
                project=project, checkpoint=form.cleaned_data["checkpoint"], set_by=request.user
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, "The drafting model is saved.")
            return redirect("modeling:assist", project_id=project.pk)
    drafter = ProjectDrafter.objects.filter(project=project).first()
    return _render_assist(request, project, drafter, drafter_form=form, status=422)


@require_POST
@role_required(Role.ADMIN)
def assist_run_new(request: HttpRequest, project_id: int, kind: str) -> HttpResponse:
    project = get_object_or_404(Project, pk=project_id)
    if kind not in AssistKind.values:
        raise Http404("No such kind of help.")
    form = (DraftRunForm if kind == AssistKind.DRAFTS else VoteRunForm)(request.POST)
    if form.is_valid():
        extra = {"sampling": form.sampling()} if kind == AssistKind.DRAFTS else {}
        try:
            run = services.assist_request(
                kind=kind,
                project=project,
                requested_by=request.user,
                checkpoint=form.cleaned_data.get("checkpoint"),
                max_items=form.cleaned_data["max_items"],
                **extra,
            )
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(
                request, f"{run.get_kind_display()} (#{run.pk}) queued for a GPU worker."
            )
            return redirect("modeling:assist", project_id=project.pk)
    drafter = ProjectDrafter.objects.filter(project=project).first()
    bound = {"draft_form" if kind == AssistKind.DRAFTS else "vote_form": form}
    return _render_assist(request, project, drafter, **bound, status=422)


def _render_assist(request, project, drafter, *, status: int = 200, **forms) -> HttpResponse:
    context = {
        "project": project,
        "drafter": drafter,
        "drafter_form": forms.get("drafter_form")
        or DrafterForm(initial={"checkpoint": drafter and drafter.checkpoint_id}),
        "draft_form": forms.get("draft_form") or DraftRunForm(),
        "vote_form": forms.get("vote_form") or VoteRunForm(),
        "runs": AssistRun.objects.filter(project=project).select_related("checkpoint")[:20],
    }
    return render(request, "modeling/assist.html", context, status=status)
