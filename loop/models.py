"""Closing the loop: one request to turn a checkpoint's replies into next-round comparisons."""

from __future__ import annotations

from django.conf import settings
from django.db import models
from django.utils import timezone

from feedback.models import Project
from jobs.models import BackgroundWork
from loop.active import Strategy
from modeling.models import Checkpoint


class ComparisonBatch(BackgroundWork):
    """Sample `n_prompts` replies from `checkpoint` and from `reference` and make each pair a
    pairwise item of `project`. Runs on a GPU worker with the shared lifecycle (jobs.models);
    `batch` is stamped on every completion it writes, so a resumed batch continues, never
    doubles."""

    checkpoint = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="+")
    reference = models.ForeignKey(Checkpoint, on_delete=models.PROTECT, related_name="+")
    project = models.ForeignKey(Project, on_delete=models.CASCADE, related_name="+")
    n_prompts = models.PositiveIntegerField()
    sampling = models.JSONField(default=dict, help_text="max_new_tokens, temperature, top_p, seed")
    batch = models.CharField(max_length=32, unique=True)
    outcome = models.JSONField(
        default=dict, blank=True, help_text="items, skipped_empty, skipped_identical, …"
    )
    # Active sampling (loop.active): once the items exist, the project's waiting pairwise items
    # are prioritised by this strategy with this ensemble of reward models.
    strategy = models.CharField(max_length=16, choices=Strategy.choices, default=Strategy.RANDOM)
    reward_models = models.ManyToManyField(Checkpoint, blank=True, related_name="+")
    requested_by = models.ForeignKey(
        settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL, related_name="+"
    )
    created_at = models.DateTimeField(default=timezone.now)

    time_limit_seconds = 2 * 3600
    entrypoint = "loop.comparisons.comparison_batch_execute"
    task_name = "loop.tasks.generate_comparisons"

    class Meta:
        ordering = ["-created_at", "-id"]
        indexes = [models.Index(fields=["status", "heartbeat_at"])]
        verbose_name_plural = "comparison batches"

    def __str__(self) -> str:
        return f"Comparisons of {self.checkpoint} vs {self.reference} (#{self.pk})"
