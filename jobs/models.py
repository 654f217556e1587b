"""One lifecycle for every kind of background work (training jobs, evaluation runs, comparison
generation, imports, snapshots):

    queued ──claim──▶ running ──finish──▶ succeeded | failed | cancelled
       └──────────────cancel──────────────────────────────────▲

A row is claimed by exactly one worker (a conditional UPDATE, so a redelivered message finds
nothing to claim), beats while it runs, and is finished with a reason by its worker, or by the
scheduled sweep (jobs.services.work_sweep) when its worker went silent, restarted or overran the
hard time limit. Concrete models subclass `BackgroundWork`; jobs.services works on any of them.
"""

from __future__ import annotations

from pathlib import Path
from typing import ClassVar

from django.db import models
from django.utils import timezone


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
# Celery's hard time limit comes this long after the soft one, which the work sees and answers;
# the hard one kills a wedged process.
HARD_LIMIT_GRACE_SECONDS = 300
FINISHED_STATUSES = (Status.SUCCEEDED, Status.FAILED, Status.CANCELLED)


class BackgroundWork(models.Model):
    """The lifecycle columns. Subclasses say how long a run may take (`time_limit_seconds`, a
    field or a class attribute) and add an index on ("status", "heartbeat_at") for the sweep."""

    status = models.CharField(max_length=12, choices=Status.choices, default=Status.QUEUED)
    error = models.TextField(blank=True, help_text="Why it failed, in words.")
    worker_host = models.CharField(max_length=255, blank=True, help_text="Worker that ran it.")
    started_at = models.DateTimeField(null=True, blank=True)
    heartbeat_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    # Where a worker launched it (jobs.backends): "local" or "ray", and the process group or Ray
    # submission id there. Blank for work done inside a worker or a management command.
    backend = models.CharField(max_length=16, blank=True)
    launch_id = models.CharField(max_length=100, blank=True)
    # When the broker accepted the row's message (jobs.services.work_enqueue). A queued row
    # without it was committed while the broker was down: the sweep sends it again (an outbox).
    enqueued_at = models.DateTimeField(null=True, blank=True)

    # A default for kinds without their own column; the sweep fails a run that overran it.
    time_limit_seconds: int = 6 * 3600
    # The function a launched process (jobs/entrypoint.py) calls with the claimed row.
    entrypoint: ClassVar[str] = ""
    # The Celery task that runs a row, given its id (routed by name: config/celery.py).
    task_name: ClassVar[str] = ""

    class Meta:
        abstract = True

    def task_options(self) -> dict:
        """Options the row's message is sent with (a training job carries its time limits)."""
        return {}

    def launch_processes(self) -> int:
        """Processes (one per device) the work needs; a worker must own that many devices."""
        return 1

    def launch_accelerate_config(self) -> Path | None:
        """The accelerate config to launch several processes with; None for one process."""
        return None

    def stop_requested(self) -> bool:
        """Whether a user asked the running work to stop (training jobs can be cancelled)."""
        return False

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class Worker(models.Model):
    """A Celery worker as it announced itself when it started: which queues it consumes and how
    many devices it owns (VEREDICTO_WORKER_DEVICES, else the GPUs it sees, else 1). A job asking
    for more devices than any recently seen worker owns is refused at launch."""

    name = models.CharField(max_length=255, unique=True)
    queues = models.JSONField(default=list)
    devices = models.PositiveSmallIntegerField(default=1)
    started_at = models.DateTimeField(default=timezone.now)

    def __str__(self) -> str:
        return f"{self.name} ({self.devices} device{'s' if self.devices != 1 else ''})"
