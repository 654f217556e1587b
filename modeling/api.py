"""API endpoints for training jobs and checkpoints. Launches go through the same services and
the same admin-only rule as the UI: the training screens are admin pages, so every endpoint here
is admin only (others get 403, anonymous callers 401).

    GET  /api/jobs                    recent jobs (?status=, ?kind=), newest first
    POST /api/jobs                    launch: validated like the form, queued when it commits
    GET  /api/jobs/{id}               status, progress, metrics, history, log tail, checkpoint
    POST /api/jobs/{id}/cancel        queued: cancelled now; running: stops at the next step
    POST /api/jobs/{id}/rerun         a new attempt of a failed or cancelled job (resumes)
    GET  /api/checkpoints             the registry (?kind=)
    GET  /api/checkpoints/{id}        one checkpoint with its lineage, base model first

A refused launch (invalid config, unknown or wrong-kind snapshot, ...) is a 422 whose details
name each field, and neither writes a row nor queues a message.
"""

from datetime import datetime
from typing import Any

from django.core.exceptions import ValidationError
from django.http import HttpRequest
from django.shortcuts import get_object_or_404
from ninja import Field, Router, Schema, Status
from ninja.pagination import paginate

from core.api import ERRORS, Pagination, lookup  # one error shape for the whole API
from core.errors import PermissionDenied
from core.idempotency import idempotent
from core.roles import Role, has_role
from feedback.models import DatasetSnapshot
from modeling import selectors, services
from modeling.models import Checkpoint, CheckpointKind, JobKind, JobStatus, TrainingJob

router = Router(tags=["training"])


def _require_admin(request: HttpRequest) -> None:
    if not has_role(request.user, Role.ADMIN):
        raise PermissionDenied("Only admins can use the training API.")


def _conflict(message: str) -> Status:
    return Status(409, {"error": {"code": "conflict", "message": message, "details": None}})


# --- schemas -----------------------------------------------------------------------------------


class CheckpointOut(Schema):
    id: int
    name: str
    kind: str
    source: str
    storage_path: str
    is_adapter: bool
    base_model_id: int | None
    parent_id: int | None
    job_id: int | None
    snapshot_id: int | None
    parameter_count: int | None
    size_bytes: int | None
    train_tokens: int | None
    metrics: dict[str, Any]
    created_at: datetime


class LineageStepOut(Schema):
    checkpoint_id: int
    name: str
    kind: str
    job_id: int | None
    job_kind: str | None
    snapshot_id: int | None
    snapshot_name: str | None


class CheckpointDetailOut(CheckpointOut):
    lineage: list[LineageStepOut] = Field(
        description="Base model first, this checkpoint last, each with its job and snapshot."
    )


class JobOut(Schema):
    id: int
    kind: str
    status: str
    attempt: int
    previous_attempt_id: int | None
    parent_id: int
    snapshot_id: int
    reward_model_id: int | None
    step: int
    total_steps: int
    progress_percent: int
    eta_seconds: float | None
    metrics: dict[str, Any]
    worker_host: str
    cancel_requested: bool
    error: str
    launched_by: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None
    checkpoint: CheckpointOut | None = Field(description="The checkpoint it produced, if any.")

    @staticmethod
    def resolve_launched_by(job: TrainingJob) -> str | None:
        return job.launched_by.get_username() if job.launched_by else None

    @staticmethod
    def resolve_checkpoint(job: TrainingJob) -> Checkpoint | None:
        return job.result


class JobDetailOut(JobOut):
    config: dict[str, Any]
    time_limit_seconds: int
    resumed_from: str
    metric_history: list[dict[str, Any]]
    log_tail: str


class JobIn(Schema):
    kind: JobKind
    parent_id: int = Field(description="The checkpoint to start from.")
    snapshot_id: int = Field(description="A ready dataset snapshot of the kind the job needs.")
    reward_model_id: int | None = Field(None, description="PPO, RLOO and GRPO only.")
    config: dict[str, Any] = Field(
        default_factory=dict, description="The kind's settings; unknown keys are refused."
    )
    time_limit_seconds: int | None = Field(None, description="Default: the server's limit.")


# --- jobs --------------------------------------------------------------------------------------


@router.get("/jobs", response={200: list[JobOut], **ERRORS})
@paginate(Pagination)
def list_jobs(request, status: JobStatus | None = None, kind: JobKind | None = None):
    _require_admin(request)
    jobs = selectors.jobs_all()
    if status:
        jobs = jobs.filter(status=status)
    if kind:
        jobs = jobs.filter(kind=kind)
    return jobs


@router.get("/jobs/{job_id}", response={200: JobDetailOut, **ERRORS})
def get_job(request, job_id: int):
    _require_admin(request)
    return _job_or_404(job_id)


def _job_or_404(job_id: int) -> TrainingJob:
    return get_object_or_404(selectors.jobs_all(), pk=job_id)


@router.post(
    "/jobs",
    response={202: JobDetailOut, **ERRORS},
    summary="Launch a training job; it is queued for a GPU worker when the request commits",
)
@idempotent
def launch_job(request, body: JobIn):
    _require_admin(request)
    missing: dict[str, str] = {}
    parent = lookup(Checkpoint, body.parent_id, "parent_id", missing, "checkpoint")
    snapshot = lookup(DatasetSnapshot, body.snapshot_id, "snapshot_id", missing, "snapshot")
    reward_model = lookup(
        Checkpoint, body.reward_model_id, "reward_model_id", missing, "checkpoint"
    )
    if missing:
        raise ValidationError(missing)
    job = services.job_launch(
        kind=body.kind,
        parent=parent,
        snapshot=snapshot,
        reward_model=reward_model,
        config=body.config,
        time_limit_seconds=body.time_limit_seconds,
        launched_by=request.user,
    )
    return Status(202, _job_or_404(job.pk))


@router.post("/jobs/{job_id}/cancel", response={200: JobDetailOut, **ERRORS})
def cancel_job(request, job_id: int):
    _require_admin(request)
    job = _job_or_404(job_id)
    try:
        services.job_cancel(job=job, cancelled_by=request.user)
    except ValidationError as exc:
        return _conflict(exc.messages[0])
    return Status(200, _job_or_404(job_id))


@router.post(
    "/jobs/{job_id}/rerun",
    response={202: JobDetailOut, **ERRORS},
    summary="Re-run a failed or cancelled job as a new attempt (asking twice returns the same)",
)
@idempotent
def rerun_job(request, job_id: int):
    _require_admin(request)
    job = _job_or_404(job_id)
    if not job.can_rerun:
        return _conflict(
            f"Only failed or cancelled jobs can be re-run; job #{job.pk} is {job.status}."
        )
    # Inputs that stopped validating since (a deleted snapshot file, say) are a 422.
    rerun = services.job_rerun(job=job, launched_by=request.user)
    return Status(202, _job_or_404(rerun.pk))


# --- checkpoints -------------------------------------------------------------------------------


@router.get("/checkpoints", response={200: list[CheckpointOut], **ERRORS})
@paginate(Pagination)
def list_checkpoints(request, kind: CheckpointKind | None = None):
    _require_admin(request)
    checkpoints = selectors.checkpoints_all()
    return checkpoints.filter(kind=kind) if kind else checkpoints


@router.get("/checkpoints/{checkpoint_id}", response={200: CheckpointDetailOut, **ERRORS})
def get_checkpoint(request, checkpoint_id: int):
    _require_admin(request)
    checkpoint = get_object_or_404(selectors.checkpoints_all(), pk=checkpoint_id)
    lineage = [
        LineageStepOut(
            checkpoint_id=step.checkpoint.pk,
            name=step.checkpoint.name,
            kind=step.checkpoint.kind,
            job_id=step.job.pk if step.job else None,
            job_kind=step.job.kind if step.job else None,
            snapshot_id=step.snapshot.pk if step.snapshot else None,
            snapshot_name=step.snapshot.name if step.snapshot else None,
        )
        for step in selectors.checkpoint_lineage(checkpoint=checkpoint)
    ]
    return CheckpointDetailOut(**CheckpointOut.from_orm(checkpoint).dict(), lineage=lineage)
