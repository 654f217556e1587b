"""The human-vote arena: which pairwise judgements are battles between two models, and the
leaderboard over them (Bradley-Terry with bootstrap intervals, and online Elo)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass
from typing import Any

from django.db.models import Count, F, OuterRef, QuerySet, Subquery

from evals.ml.definitions import ARENA_DEFINITION
from feedback.models import (
    CompletionSource,
    ItemCompletion,
    Origin,
    PairwiseChoice,
    PairwiseJudgement,
    Project,
    TaskKind,
)
from modeling.models import Checkpoint

# FastChat's winner labels for our canonical pairwise choices (A = item position 0).
WINNER_FOR_CHOICE = {
    PairwiseChoice.A: "model_a",
    PairwiseChoice.B: "model_b",
    PairwiseChoice.TIE: "tie",
    PairwiseChoice.BOTH_BAD: "tie (bothbad)",
}
MODEL_SOURCES = (CompletionSource.CHECKPOINT, CompletionSource.MODEL)
ARENA_ROUNDS = 100  # bootstrap rounds behind the leaderboard's intervals (FastChat's default)


def _side(position: int, field_name: str) -> Subquery:
    return Subquery(
        ItemCompletion.objects.filter(item_id=OuterRef("item_id"), position=position).values(
            f"completion__{field_name}"
        )[:1]
    )


def _battle_judgements(*, include_simulated: bool = False) -> QuerySet[PairwiseJudgement]:
    """Pairwise judgements on battles: ordinary (not gold) pairwise items whose two completions
    come from two different named models. Human judgements only, unless simulated ones are asked
    for (dry runs of the loop); imported labels are never arena votes."""
    origins = [Origin.HUMAN, Origin.SIMULATED] if include_simulated else [Origin.HUMAN]
    return (
        PairwiseJudgement.objects.filter(
            item__kind=TaskKind.PAIRWISE, item__is_gold=False, origin__in=origins
        )
        .annotate(
            model_a=_side(0, "model_name"),
            model_b=_side(1, "model_name"),
            source_a=_side(0, "source"),
            source_b=_side(1, "source"),
        )
        .filter(source_a__in=MODEL_SOURCES, source_b__in=MODEL_SOURCES)
        .exclude(model_a="")
        .exclude(model_b="")
        .exclude(model_a=F("model_b"))
    )


def arena_battles(
    *, project: Project, include_simulated: bool = False
) -> list[tuple[str, str, str]]:
    """(model_a, model_b, winner) per vote in the order they were cast, winner in FastChat's
    labels: "model_a", "model_b", "tie" or "tie (bothbad)"."""
    votes = (
        _battle_judgements(include_simulated=include_simulated)
        .filter(item__project=project)
        .order_by("created_at", "id")
        .values_list("model_a", "model_b", "choice")
    )
    return [(a, b, WINNER_FOR_CHOICE[choice]) for a, b, choice in votes]


def arena_projects() -> list[dict[str, Any]]:
    """Projects with human arena votes, and how many."""
    return list(
        _battle_judgements()
        .values("item__project_id", "item__project__name")
        .annotate(votes=Count("id"))
        .order_by("item__project__name")
    )


@dataclass
class Leaderboard:
    project: Project
    rows: list[dict[str, Any]]
    reference: str | None
    models: list[str]
    battles: int
    unknown_reference: str = ""
    definition: str = ARENA_DEFINITION

    def chart(self) -> dict[str, Any]:
        rows = [row for row in self.rows if row["finite"]]  # JSON has no NaN or infinity
        return {
            "labels": [row["model"] for row in rows],
            "ratings": [row["rating"] for row in rows],
            "errorBars": [[row["low"], row["high"]] for row in rows],
            "reference": self.reference,
        }


def _default_reference(checkpoints: list[Checkpoint], models: list[str]) -> str | None:
    """The first base checkpoint among the models, else the first checkpoint, else the first
    model by name."""
    if checkpoints:
        first = min(checkpoints, key=lambda c: (not c.is_base, c.created_at, c.pk))
        return first.name
    return models[0] if models else None


def arena_leaderboard(
    *,
    project: Project,
    reference: str | None = None,
    rounds: int = ARENA_ROUNDS,
    seed: int = 0,
    include_simulated: bool = False,
) -> Leaderboard:
    """Bradley-Terry ratings (evals.ml.bradley_terry: FastChat's fit, a tie half a win each side)
    over the project's arena votes with seeded bootstrap 95% intervals, anchored at 1000 on
    `reference` (default: the first base checkpoint among the models), the interval rank, vote
    counts, and online Elo (FastChat's K=4, in vote order) for comparison."""
    from evals.ml.arena import bradley_terry, online_elo  # numpy/scipy, no torch

    battles = arena_battles(project=project, include_simulated=include_simulated)
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    checkpoints = list(Checkpoint.objects.filter(name__in=models))
    unknown = ""
    if reference and reference not in models:
        unknown, reference = reference, None
    reference = reference or _default_reference(checkpoints, models)
    if not battles:
        return Leaderboard(project, [], reference, models, 0, unknown)
    rows = bradley_terry(battles, reference=reference, rounds=rounds, seed=seed)
    elo = online_elo(battles)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for a, b, winner in battles:
        if winner == "model_a":
            outcomes[a]["wins"] += 1
            outcomes[b]["losses"] += 1
        elif winner == "model_b":
            outcomes[b]["wins"] += 1
            outcomes[a]["losses"] += 1
        else:
            outcomes[a]["ties"] += 1
            outcomes[b]["ties"] += 1
    ids = {c.name: c.pk for c in checkpoints}
    for row in rows:
        for outcome in ("wins", "losses", "ties"):
            row[outcome] = outcomes[row["model"]][outcome]
        row["elo"] = elo[row["model"]]
        row["checkpoint_id"] = ids.get(row["model"])
        row["is_reference"] = row["model"] == reference
        row["finite"] = all(math.isfinite(row[k]) for k in ("rating", "low", "high"))
    return Leaderboard(project, rows, reference, models, len(battles), unknown)
