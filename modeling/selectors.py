"""Reads for the training screens, the launch form and the management commands."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import Q, QuerySet

from feedback.models import DatasetSnapshot
from jobs.models import Status
from modeling.ml import CONFIG_CLASSES, estimate_steps, parse_job_config  # no torch: pydantic
from modeling.models import (
    SNAPSHOT_KIND_FOR_JOB,
    Checkpoint,
    CheckpointKind,
    JobKind,
    PlaygroundTurn,
    TrainingJob,
)

LINEAGE_MAX_DEPTH = 100  # a guard against a parent cycle someone made in the Django admin


def jobs_all() -> QuerySet[TrainingJob]:
    """Every job with what its row shows (lineage, checkpoint, who launched it), newest first."""
    return TrainingJob.objects.select_related(
        "parent", "snapshot", "reward_model", "checkpoint", "launched_by"
    )


def jobs_recent(*, limit: int = 100) -> QuerySet[TrainingJob]:
    return jobs_all()[:limit]


def job_detail(*, job_id: int) -> TrainingJob:
    return TrainingJob.objects.select_related(
        "parent", "snapshot", "reward_model", "checkpoint", "launched_by", "previous_attempt"
    ).get(pk=job_id)


def checkpoints_all() -> QuerySet[Checkpoint]:
    return Checkpoint.objects.select_related("parent", "job", "snapshot")


def parent_choices(*, kind: str) -> QuerySet[Checkpoint]:
    """Checkpoints a job of `kind` may start from: policies; a reward job may also continue a
    reward model."""
    kinds = [CheckpointKind.POLICY]
    if kind == JobKind.REWARD:
        kinds.append(CheckpointKind.REWARD)
    return Checkpoint.objects.filter(kind__in=kinds).order_by("-created_at", "-id")


def reward_model_choices() -> QuerySet[Checkpoint]:
    return Checkpoint.objects.filter(kind=CheckpointKind.REWARD).order_by("-created_at", "-id")


def snapshot_choices(*, kind: str) -> QuerySet[DatasetSnapshot]:
    """Ready snapshots of the kind a `kind` job trains on, newest first."""
    return DatasetSnapshot.objects.filter(
        kind=SNAPSHOT_KIND_FOR_JOB[kind], status=Status.SUCCEEDED
    ).select_related("project")


def checkpoint_find(*, reference: str) -> Checkpoint:
    """By id or by name (management commands take either)."""
    query = Q(name=reference)
    if reference.isdigit():
        query |= Q(pk=int(reference))
    return Checkpoint.objects.get(query)


def config_defaults(*, kind: str) -> dict[str, Any]:
    return CONFIG_CLASSES[kind]().model_dump(mode="json")


def steps_estimate(*, kind: str, config: dict[str, Any], snapshot: DatasetSnapshot) -> int | None:
    """Optimizer steps the job will take on the snapshot's training rows; None if the config
    does not parse."""
    try:
        parsed = parse_job_config(kind, config)
    except ValueError:  # pydantic's ValidationError is a ValueError
        return None
    return estimate_steps(kind, parsed, int(snapshot.row_counts.get("train", 0)))


@dataclass(frozen=True)
class LineageStep:
    """One checkpoint in a lineage, with the job and the labels that made it (none for a base)."""

    checkpoint: Checkpoint
    job: TrainingJob | None
    snapshot: DatasetSnapshot | None


def checkpoint_lineage(*, checkpoint: Checkpoint) -> list[LineageStep]:
    """Base model first, `checkpoint` last: base → parent → … → checkpoint, each with its job and
    dataset snapshot."""
    chain: list[LineageStep] = []
    seen: set[int] = set()
    current: Checkpoint | None = checkpoint
    while current is not None and current.pk not in seen and len(chain) < LINEAGE_MAX_DEPTH:
        seen.add(current.pk)
        chain.append(LineageStep(current, current.job, current.snapshot))
        if current.parent_id is None:
            break
        current = Checkpoint.objects.select_related("job", "snapshot__project").get(
            pk=current.parent_id
        )
    return chain[::-1]


@dataclass(frozen=True)
class FileEntry:
    name: str
    size: int
    is_dir: bool


def checkpoint_files(*, checkpoint: Checkpoint) -> list[FileEntry]:
    """The top level of a local checkpoint's directory (empty for hub ids or a missing dir)."""
    path = checkpoint.directory()
    if path is None or not path.is_dir():
        return []
    entries = []
    for entry in sorted(path.iterdir()):
        size = _tree_size(entry) if entry.is_dir() else entry.stat().st_size
        entries.append(FileEntry(entry.name, size, entry.is_dir()))
    return entries


def _tree_size(path: Path) -> int:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file())


def playground_turn_shown(
    *, checkpoint: Checkpoint, user: AbstractBaseUser, turn_id: int | None = None
) -> PlaygroundTurn | None:
    """The turn the playground shows: the one asked for, else the user's latest on this
    checkpoint. Only the user's own: nobody reads another's conversation."""
    turns = PlaygroundTurn.objects.filter(checkpoint=checkpoint, requested_by=user)
    if turn_id is not None:
        return turns.filter(pk=turn_id).first()
    return turns.first()
