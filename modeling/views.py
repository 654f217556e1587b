"""Training screens (admins only): jobs and models, the launch form, a job's live progress and a
checkpoint's lineage. Each view checks the method and role, calls one service, renders.

A dead worker's job reads `failed` within the heartbeat window: the scheduled sweep
(jobs.tasks.sweep) decides that, not these pages.
"""

from __future__ import annotations

from django.contrib import messages
from django.core.exceptions import ValidationError
from django.http import Http404, HttpRequest, HttpResponse
from django.shortcuts import get_object_or_404, redirect, render
from django.views.decorators.http import require_GET, require_http_methods, require_POST

from core.forms import add_service_errors
from core.roles import Role, role_required
from modeling import selectors, services
from modeling.forms import CONFIG_PREFIX, JobLaunchForm
from modeling.models import JobKind, TrainingJob


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
@role_required(Role.ADMIN)
def checkpoint(request: HttpRequest, checkpoint_id: int) -> HttpResponse:
    checkpoint = get_object_or_404(selectors.checkpoints_all(), pk=checkpoint_id)
    context = {
        "checkpoint": checkpoint,
        "lineage": selectors.checkpoint_lineage(checkpoint=checkpoint),
        "files": selectors.checkpoint_files(checkpoint=checkpoint),
        "children": checkpoint.children.all(),
        "jobs": checkpoint.jobs.all()[:20],
        "comparisons": selectors.checkpoint_comparisons(checkpoint=checkpoint),
    }
    return render(request, "modeling/checkpoint_detail.html", context)


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
