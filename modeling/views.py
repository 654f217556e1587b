"""Training screens (admins only): jobs and models, the launch form, a job's live progress and a
checkpoint's lineage. Each view checks the method and role, calls one service, renders.

Reading any job page first fails running jobs whose worker stopped beating (one indexed query),
so a dead worker shows up as `failed` within the heartbeat window without any scheduler.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from feedback.roles import Role, role_required
from modeling import selectors, services
from modeling.forms import ComparisonForm, JobLaunchForm, add_service_errors
from modeling.models import Checkpoint, JobKind, TrainingJob


@require_GET
@role_required(Role.ADMIN)
def jobs(request: HttpRequest) -> HttpResponse:
    services.job_mark_stale()
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
    form = JobLaunchForm(request.POST or None, kind=_job_kind(kind), initial=initial)
    if request.method == "POST" and form.is_valid():
        try:
            job = services.job_launch(kind=kind, launched_by=request.user, **form.launch_kwargs())
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(request, f"Job #{job.pk} is queued for a GPU worker.")
            return redirect("job", job_id=job.pk)
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
    services.job_mark_stale()
    try:
        job = selectors.job_detail(job_id)
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
    return redirect("job", job_id=job.pk)


@require_POST
@role_required(Role.ADMIN)
def job_rerun(request: HttpRequest, job_id: int) -> HttpResponse:
    job = get_object_or_404(TrainingJob, pk=job_id)
    try:
        rerun = services.job_rerun(job=job, launched_by=request.user)
    except ValidationError as exc:
        messages.error(request, " ".join(exc.messages))
        return redirect("job", job_id=job.pk)
    messages.success(request, f"Attempt {rerun.attempt} of job #{job.pk} is queued.")
    return redirect("job", job_id=rerun.pk)


@require_GET
@role_required(Role.ADMIN)
def checkpoint(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(selectors.checkpoints_all(), pk=checkpoint_id)
    return _render_checkpoint(request, checkpoint, ComparisonForm(checkpoint=checkpoint))


@require_POST
@role_required(Role.ADMIN)
def checkpoint_generate(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(selectors.checkpoints_all(), pk=checkpoint_id)
    form = ComparisonForm(request.POST, checkpoint=checkpoint)
    if form.is_valid():
        kwargs = form.request_kwargs()
        try:
            services.comparisons_request(checkpoint=checkpoint, requested_by=request.user, **kwargs)
        except ValidationError as exc:
            add_service_errors(form, exc)
        else:
            messages.success(
                request,
                f"Generating replies to {kwargs['n_prompts']} prompts of "
                f"{kwargs['project'].name} on a GPU worker; the comparisons appear below.",
            )
            return redirect("checkpoint", checkpoint_id=checkpoint.pk)
    return _render_checkpoint(request, checkpoint, form, status=422)


# --- helpers -----------------------------------------------------------------------------------


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
        config = selectors.config_defaults(form.kind)
    estimate = None
    if snapshot is not None and config is not None:
        estimate = selectors.steps_estimate(form.kind, config, snapshot)
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


def _render_checkpoint(
    request: HttpRequest, checkpoint: Checkpoint, form: ComparisonForm, status: int = 200
) -> HttpResponse:
    context = {
        "checkpoint": checkpoint,
        "lineage": selectors.checkpoint_lineage(checkpoint),
        "files": selectors.checkpoint_files(checkpoint),
        "children": checkpoint.children.all(),
        "jobs": checkpoint.jobs.all()[:20],
        "comparisons": selectors.checkpoint_comparisons(checkpoint),
        "form": form,
    }
    return render(request, "modeling/checkpoint_detail.html", context, status=status)
