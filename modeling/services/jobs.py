"""Launching, cancelling, re-running and reaping training jobs.

Everything is validated before a row is written, and the Celery message is sent only when the
transaction commits: a refused launch leaves no row and queues nothing.
"""

from __future__ import annotations

import importlib.util
import logging
from typing import Any

import pydantic
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.utils import timezone

from core.roles import require_admin
from feedback.models import DatasetSnapshot
from jobs.models import Status, Worker
from jobs.queues import CeleryQueue
from jobs.services import work_enqueue

# modeling.ml imports lazily: configs are plain pydantic, so web processes never load torch.
from modeling.ml import CONFIG_CLASSES, parse_job_config
from modeling.models import (
    JOBS_NEEDING_REWARD_MODEL,
    SNAPSHOT_KIND_FOR_JOB,
    Checkpoint,
    CheckpointKind,
    JobKind,
    JobStatus,
    TrainingJob,
)

from .model_checks import reward_tokenizer_error, sft_loss_fallback_note

logger = logging.getLogger(__name__)

MIN_TIME_LIMIT, MAX_TIME_LIMIT = 60, 30 * 24 * 3600
# Between Celery's soft limit (the job is failed cleanly) and the hard kill of the process.


class JobConfigInvalid(ValidationError):
    """The config did not validate. `field_errors` maps config field names ("" for the config as
    a whole) to messages, so forms can show each next to its input."""

    def __init__(self, field_errors: dict[str, list[str]]):
        self.field_errors = field_errors
        super().__init__(
            {
                "config": [
                    f"{field}: {message}" if field else message
                    for field, messages in field_errors.items()
                    for message in messages
                ]
            }
        )


def job_config_clean(*, kind: str, raw: Any) -> dict[str, Any]:
    """The config as modeling.ml parses it (defaults filled), as JSON. Unknown keys are errors."""
    if not isinstance(raw, dict):
        raise JobConfigInvalid({"": ["The config must be a JSON object."]})
    try:
        config = parse_job_config(kind, raw)
    except pydantic.ValidationError as exc:
        field_errors: dict[str, list[str]] = {}
        for error in exc.errors():
            field = ".".join(str(part) for part in error["loc"])
            message = error["msg"].removeprefix("Value error, ")  # a validator's own words
            if error["type"] == "extra_forbidden":
                message = f"unknown setting for {kind} (allowed: {allowed_config_keys(kind)})"
            field_errors.setdefault(field, []).append(message)
        raise JobConfigInvalid(field_errors) from exc
    except ValueError as exc:
        raise JobConfigInvalid({"": [str(exc)]}) from exc
    return config.model_dump(mode="json")


def allowed_config_keys(kind: str) -> str:
    return ", ".join(sorted(CONFIG_CLASSES[kind].model_fields))


def _validate(
    *,
    kind: str,
    parent: Checkpoint | None,
    snapshot: DatasetSnapshot | None,
    reward_model: Checkpoint | None,
    config: Any,
    time_limit_seconds: int,
) -> tuple[dict[str, Any], list[str]]:
    """Every reason the job cannot run, all at once; returns the cleaned config (adjusted where
    the model needs a fallback) and the notes saying so, for the job's log."""
    errors: dict[str, Any] = {}
    if kind not in JobKind.values:
        raise ValidationError({"kind": f"Kind is one of {', '.join(JobKind.values)}."})
    if parent is None:
        errors["parent"] = "Choose the checkpoint to start from."
    elif parent.kind == CheckpointKind.VALUE or (
        parent.kind == CheckpointKind.REWARD and kind != JobKind.REWARD
    ):
        errors["parent"] = f"A {kind} job starts from a policy, not a {parent.kind} model."
    wanted = SNAPSHOT_KIND_FOR_JOB[kind]
    if snapshot is None:
        errors["snapshot"] = "Choose a dataset snapshot."
    elif snapshot.kind != wanted:
        errors["snapshot"] = (
            f"A {kind} job trains on a {wanted} snapshot; "
            f"{snapshot.name!r} is a {snapshot.kind} snapshot."
        )
    elif snapshot.status != Status.SUCCEEDED:
        errors["snapshot"] = f"Snapshot {snapshot.name!r} is {snapshot.status}, not ready."
    elif not (snapshot.path() / "train.jsonl").is_file():
        errors["snapshot"] = f"Snapshot {snapshot.name!r} has no train.jsonl on this host."
    elif not snapshot.row_counts.get("train"):
        errors["snapshot"] = f"Snapshot {snapshot.name!r} has no training rows."
    if not MIN_TIME_LIMIT <= time_limit_seconds <= MAX_TIME_LIMIT:
        errors["time_limit_seconds"] = "The time limit is between a minute and 30 days."
    cleaned = None
    try:
        cleaned = job_config_clean(kind=kind, raw=config if config is not None else {})
    except ValidationError as exc:
        errors.update(exc.message_dict)
    # RLOO and GRPO may score with registered reward functions instead of a reward model.
    functions = (cleaned or {}).get("reward_functions") or []
    if kind in JOBS_NEEDING_REWARD_MODEL:
        if reward_model is None and not functions and cleaned is not None:
            errors["reward_model"] = f"A {kind} job needs a reward model to score its samples" + (
                " (or reward_functions in its config)." if kind != JobKind.PPO else "."
            )
        elif reward_model is not None and reward_model.kind != CheckpointKind.REWARD:
            errors["reward_model"] = f"{reward_model.name!r} is a {reward_model.kind} model."
    elif reward_model is not None:
        errors["reward_model"] = f"A {kind} job does not use a reward model."
    weights = (cleaned or {}).get("reward_weights")
    if weights is not None and len(weights) != len(functions) + (reward_model is not None):
        errors.setdefault("config", []).append(
            f"reward_weights: {len(weights)} weights for "
            + ("the reward model and " if reward_model is not None else "")
            + f"{len(functions)} reward function(s); give one weight each."
        )
    if kind == JobKind.PPO and not errors.keys() & {"parent", "reward_model"}:
        reason = reward_tokenizer_error(parent=parent, reward_model=reward_model)
        if reason:
            errors["reward_model"] = reason
    if cleaned is not None and (reason := _distributed_error(cleaned.get("distributed") or {})):
        errors["distributed"] = reason
    if cleaned is not None and (reason := _quantization_error(cleaned.get("quantization"))):
        errors["quantization"] = reason
    if errors:
        raise ValidationError(errors)
    notes = []
    if kind == JobKind.SFT:
        note = sft_loss_fallback_note(parent=parent, snapshot=snapshot, config=cleaned)
        if note:
            cleaned = {**cleaned, "assistant_only_loss": False, "completion_only_loss": True}
            notes.append(note)
    return cleaned, notes


def _distributed_error(distributed: dict[str, Any]) -> str:
    """Why no worker can run a job spread over this many devices, if none can. A Ray cluster
    places its jobs itself; local workers announce their devices when they start."""
    processes = int(distributed.get("processes") or 1)
    strategy = distributed.get("strategy") or "none"
    if strategy.startswith("deepspeed") and importlib.util.find_spec("deepspeed") is None:
        return f"{strategy} needs DeepSpeed: `pip install deepspeed` on the GPU workers."
    if processes == 1 or settings.VEREDICTO_JOB_BACKEND == "ray":
        return ""
    workers = Worker.objects.filter(queues__contains=CeleryQueue.GPU.value)
    if connection.vendor == "sqlite":  # no JSON containment on SQLite: workers are few
        workers = [w for w in Worker.objects.all() if CeleryQueue.GPU.value in w.queues]
    largest = max(workers, key=lambda worker: worker.devices, default=None)
    if largest is not None and largest.devices >= processes:
        return ""
    most = f"the largest, {largest.name}, owns {largest.devices}" if largest else "none is running"
    return (
        f"No GPU worker owns {processes} devices ({most}). Ask for fewer processes, or start a "
        f"worker with that many devices (VEREDICTO_WORKER_DEVICES)."
    )


def _quantization_error(quantization: str | None) -> str:
    """Why the workers cannot load a quantized base, if they cannot. Their libraries are not
    visible from here: the deployment declares them (VEREDICTO_GPU_BITSANDBYTES)."""
    if quantization in (None, "none") or settings.VEREDICTO_GPU_BITSANDBYTES:
        return ""
    return (
        f"quantization {quantization!r} (QLoRA) needs GPU workers with CUDA and bitsandbytes, and "
        'this deployment declares none: install them with `pip install ".[gpu]"` on the GPU '
        "workers and set VEREDICTO_GPU_BITSANDBYTES=true, or set quantization to none."
    )


@transaction.atomic
def job_launch(
    *,
    kind: str,
    parent: Checkpoint | None,
    snapshot: DatasetSnapshot | None,
    config: dict[str, Any] | None = None,
    reward_model: Checkpoint | None = None,
    launched_by: AbstractBaseUser | None,
    time_limit_seconds: int | None = None,
    enqueue: bool = True,
) -> TrainingJob:
    """Validate and queue a training job. PermissionDenied for non-admins, ValidationError for
    anything that would make it fail; in both cases nothing is written or queued.

    `enqueue=False` leaves the row queued for a caller that runs it in-process
    (`launch_job --run-here`).
    """
    require_admin(launched_by, "launch training jobs")
    limit = time_limit_seconds or settings.VEREDICTO_JOB_TIME_LIMIT_SECONDS
    cleaned, notes = _validate(
        kind=kind,
        parent=parent,
        snapshot=snapshot,
        reward_model=reward_model,
        config=config,
        time_limit_seconds=limit,
    )
    job = TrainingJob.objects.create(
        kind=kind,
        parent=parent,
        snapshot=snapshot,
        reward_model=reward_model,
        config=cleaned,
        time_limit_seconds=limit,
        launched_by=launched_by,
        log_tail="\n".join(notes),
    )
    if enqueue:
        work_enqueue(job)
    return job


@transaction.atomic
def job_rerun(*, job: TrainingJob, launched_by: AbstractBaseUser | None) -> TrainingJob:
    """A new attempt of a failed or cancelled job with the same inputs. It resumes from the last
    trainer checkpoint the previous attempt saved, if any (see runner.prepare_resume). Asking twice
    returns the same new attempt."""
    require_admin(launched_by, "re-run training jobs")
    job = TrainingJob.objects.select_for_update().get(pk=job.pk)
    if not job.can_rerun:
        raise ValidationError(
            f"Only failed or cancelled jobs can be re-run; job #{job.pk} is {job.status}."
        )
    existing = TrainingJob.objects.filter(previous_attempt=job).first()
    if existing is not None:
        return existing
    cleaned, notes = _validate(
        kind=job.kind,
        parent=job.parent,
        snapshot=job.snapshot,
        reward_model=job.reward_model,
        config=job.config,
        time_limit_seconds=job.time_limit_seconds,
    )
    rerun = TrainingJob.objects.create(
        kind=job.kind,
        parent=job.parent,
        snapshot=job.snapshot,
        reward_model=job.reward_model,
        config=cleaned,
        time_limit_seconds=job.time_limit_seconds,
        attempt=job.attempt + 1,
        previous_attempt=job,
        launched_by=launched_by,
        log_tail="\n".join(notes),
    )
    work_enqueue(rerun)
    return rerun


def job_cancel(*, job: TrainingJob, cancelled_by: AbstractBaseUser | None) -> TrainingJob:
    """A queued job is cancelled at once (its message will find nothing to claim); a running one
    is asked to stop, and its worker ends it `cancelled` at the next step boundary."""
    require_admin(cancelled_by, "cancel training jobs")
    now = timezone.now()
    jobs = TrainingJob.objects.filter(pk=job.pk)
    if jobs.filter(status=JobStatus.QUEUED).update(
        status=JobStatus.CANCELLED, cancel_requested=True, finished_at=now
    ):
        return jobs.get()
    if jobs.filter(status=JobStatus.RUNNING).update(cancel_requested=True):
        return jobs.get()
    job.refresh_from_db()
    raise ValidationError(f"Job #{job.pk} has already finished ({job.get_status_display()}).")
