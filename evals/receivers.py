"""What evals does when training announces something (modeling.signals)."""

from __future__ import annotations

from evals.services import schedule_default_evals
from modeling.models import Checkpoint, TrainingJob


def evaluate_new_checkpoint(
    sender: type, *, checkpoint: Checkpoint, job: TrainingJob | None = None, **kwargs
) -> None:
    """Every trained or registered checkpoint gets the default suites, so every comparison has
    its baseline (a repeated announcement for the same job queues nothing new:
    schedule_default_evals is idempotent per job)."""
    schedule_default_evals(checkpoint=checkpoint, triggered_by_job=job)
