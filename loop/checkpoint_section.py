"""The Generations section of the checkpoint page (modeling.page_sections; registered in
LoopConfig.ready): the comparison batches sampled from the checkpoint and how many of its
replies became comparison items, per project."""

from __future__ import annotations

from typing import Any

from django.db.models import Count
from django.http import HttpRequest

from feedback.models import Completion, CompletionSource
from loop.models import ComparisonBatch
from modeling.models import Checkpoint
from modeling.page_sections import CheckpointSection
from modeling.selectors import LineageStep

RECENT_BATCHES = 10


def generations_context(
    request: HttpRequest, *, checkpoint: Checkpoint, lineage: list[LineageStep]
) -> dict[str, Any]:
    batches = ComparisonBatch.objects.filter(checkpoint=checkpoint).select_related(
        "project", "reference"
    )
    return {"batches": batches[:RECENT_BATCHES], "per_project": comparison_counts(checkpoint)}


def comparison_counts(checkpoint: Checkpoint) -> list[dict[str, Any]]:
    """Per project: how many replies of this checkpoint were turned into comparison items."""
    return list(
        Completion.objects.filter(
            source=CompletionSource.CHECKPOINT, generation_params__checkpoint_id=checkpoint.pk
        )
        .values("prompt__project_id", "prompt__project__name")
        .annotate(completions=Count("id"), items=Count("items", distinct=True))
        .order_by("prompt__project__name")
    )


GENERATIONS = CheckpointSection(
    key="generations",
    title="Generations",
    template="loop/_checkpoint_generations.html",
    context=generations_context,
    order=20,
)
