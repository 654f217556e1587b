"""The Evaluations section of the checkpoint page (modeling.page_sections; registered in
EvalsConfig.ready): the latest result of each metric, one metric charted along the lineage
(base → … → this checkpoint) and every run, with the actions that start more."""

from __future__ import annotations

from typing import Any

from django.http import HttpRequest

from evals import selectors
from modeling.models import Checkpoint
from modeling.page_sections import CheckpointSection
from modeling.selectors import LineageStep


def evaluations_context(
    request: HttpRequest, *, checkpoint: Checkpoint, lineage: list[LineageStep]
) -> dict[str, Any]:
    metrics = selectors.checkpoint_metrics(checkpoint=checkpoint)
    board = selectors.lineage_board(checkpoints=[step.checkpoint for step in lineage])
    # The chart shows the chosen metric, else the first this checkpoint has.
    metric = request.GET.get("metric", "")
    if board.column(metric) is None:
        metric = metrics[0][0].key if metrics else ""
    return {
        "metrics": metrics,
        "runs": selectors.checkpoint_runs(checkpoint=checkpoint),
        "board": board,
        "metric": metric,
        # A chart of one point says nothing: only a lineage with an ancestor gets one.
        "series": board.series(metric) if len(lineage) > 1 else None,
    }


EVALUATIONS = CheckpointSection(
    key="evaluations",
    title="Evaluations",
    template="evals/_checkpoint_evaluations.html",
    context=evaluations_context,
    order=10,
)
