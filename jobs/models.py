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

from django.db import models


class Status(models.TextChoices):
    QUEUED = "queued", "Queued"
    RUNNING = "running", "Running"
    SUCCEEDED = "succeeded", "Succeeded"
    FAILED = "failed", "Failed"
    CANCELLED = "cancelled", "Cancelled"


ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)
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

    # A default for kinds without their own column; the sweep fails a run that overran it.
    time_limit_seconds: int = 6 * 3600

    class Meta:
        abstract = True

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES
