"""The human-vote arena: which pairwise judgements are battles between two models, and the
leaderboard over them (Bradley-Terry with bootstrap intervals, and online Elo)."""

from __future__ import annotations

import math
from collections import Counter, defaultdict
from dataclasses import dataclass, field
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
    return [battle for battle, _ in _votes(project, include_simulated, with_style=False)]


def _votes(project: Project, include_simulated: bool, *, with_style: bool) -> list[tuple]:
    """((model_a, model_b, winner), (style of reply a, style of reply b) or None) per vote."""
    from evals.ml.arena import style_features  # no numpy work at import: regexes only

    votes = (
        _battle_judgements(include_simulated=include_simulated)
        .filter(item__project=project)
        .order_by("created_at", "id")
    )
    if not with_style:
        rows = votes.values_list("model_a", "model_b", "choice")
        return [((a, b, WINNER_FOR_CHOICE[choice]), None) for a, b, choice in rows]
    rows = votes.annotate(text_a=_side(0, "text"), text_b=_side(1, "text")).values_list(
        "model_a", "model_b", "choice", "text_a", "text_b"
    )
    return [
        ((a, b, WINNER_FOR_CHOICE[choice]), (style_features(ta), style_features(tb)))
        for a, b, choice, ta, tb in rows
    ]


def arena_projects() -> list[dict[str, Any]]:
    """Projects with human arena votes, and how many."""
    return list(
        _battle_judgements()
        .values("item__project_id", "item__project__name")
        .annotate(votes=Count("id"))
        .order_by("item__project__name")
    )


MIN_ARENA_VOTES = 10  # fewer, and a model's interval is too wide to say much: "not enough votes"
MATRIX_MODELS = 12  # the win-rate matrix shows the best this many of a group
STYLE_ROUNDS = 50  # bootstrap rounds of the style-controlled ratings (a refit per round)


@dataclass
class LeaderboardGroup:
    """Models linked by votes (directly or through a chain of battles), rated on one scale."""

    rows: list[dict[str, Any]]
    reference: str | None
    battles: int
    rateable: bool  # finite maximum-likelihood ratings exist for every model in the group
    matrix: list[dict[str, Any]] = field(default_factory=list)
    # Style control's coefficient per feature (logit per standard deviation of the normalised
    # difference): positive when voters favour the reply with more of it.
    style_effects: dict[str, float] = field(default_factory=dict)

    @property
    def models(self) -> list[str]:
        return [row["model"] for row in self.rows]


@dataclass
class Leaderboard:
    project: Project
    rows: list[dict[str, Any]]  # every group's rows, group by group (row["group"])
    reference: str | None
    models: list[str]
    battles: int
    unknown_reference: str = ""
    definition: str = ARENA_DEFINITION
    groups: list[LeaderboardGroup] = field(default_factory=list)

    def chart(self) -> dict[str, Any]:
        """The first group's rated models: other groups are on scales of their own."""
        group = self.groups[0] if self.groups else None
        rows = [row for row in (group.rows if group else []) if row["enough"]]
        return {
            "labels": [row["model"] for row in rows],
            "ratings": [row["rating"] for row in rows],
            "errorBars": [[row["low"], row["high"]] for row in rows],
            "reference": self.reference,
        }


def _default_reference(checkpoints: list[Checkpoint], models: list[str]) -> str | None:
    """The first base checkpoint among the models, else the first checkpoint, else the first
    model by name."""
    checkpoints = [c for c in checkpoints if c.name in models]
    if checkpoints:
        first = min(checkpoints, key=lambda c: (not c.is_base, c.created_at, c.pk))
        return first.name
    return min(models) if models else None


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
    counts, and online Elo (FastChat's K=4, in vote order) for comparison.

    Models that never met the reference's group, even through a chain of battles, have no
    common scale with it: each such group is rated on its own, anchored on its own default
    reference, and listed after the reference's group."""
    from evals.ml.arena import battle_counts, battle_groups  # numpy/scipy, no torch

    votes = _votes(project, include_simulated, with_style=True)
    battles = [battle for battle, _ in votes]
    styles = [style for _, style in votes]
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    checkpoints = list(Checkpoint.objects.filter(name__in=models))
    unknown = ""
    if reference and reference not in models:
        unknown, reference = reference, None
    reference = reference or _default_reference(checkpoints, models)
    if not battles:
        return Leaderboard(project, [], reference, models, 0, unknown)
    counts = battle_counts(battles)
    split = battle_groups(counts)
    split.sort(key=lambda group: reference not in group)  # stable: the reference's group first
    groups = []
    for index, members in enumerate(split):
        anchor = reference if index == 0 else _default_reference(checkpoints, members)
        rated = _rate_group(
            index, members, anchor, battles=battles, styles=styles, counts=counts,
            checkpoints=checkpoints, rounds=rounds, seed=seed,
        )  # fmt: skip
        groups.append(rated)
    rows = [row for group in groups for row in group.rows]
    return Leaderboard(project, rows, reference, models, len(battles), unknown, groups=groups)


def _rate_group(
    index: int,
    members: list[str],
    reference: str | None,
    *,
    battles: list[tuple[str, str, str]],
    styles: list[tuple],
    counts: Any,
    checkpoints: list[Checkpoint],
    rounds: int,
    seed: int,
) -> LeaderboardGroup:
    from evals.ml.arena import (
        bradley_terry,
        length_controlled_win_rates,
        mle_exists,
        online_elo,
        style_controlled,
        subset_counts,
    )

    inside = set(members)
    mine = [k for k, battle in enumerate(battles) if battle[0] in inside]
    own = [battles[k] for k in mine]
    styled = style_controlled(
        own, [styles[k] for k in mine], reference=reference, rounds=STYLE_ROUNDS, seed=seed
    )
    against_reference = (
        length_controlled_win_rates(
            own,
            [(styles[k][0][0], styles[k][1][0]) for k in mine],  # reply lengths in words
            baseline=reference,
            rounds=STYLE_ROUNDS,
            seed=seed,
        )
        if reference is not None
        else {}
    )
    group_counts = subset_counts(counts, members)
    rows = bradley_terry(group_counts, reference=reference, rounds=rounds, seed=seed)
    rateable = mle_exists(group_counts)
    elo = online_elo(own)
    outcomes: dict[str, Counter] = defaultdict(Counter)
    for a, b, winner in own:
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
        row["style_rating"] = styled["ratings"][row["model"]]
        row["style_low"] = styled["low"][row["model"]]
        row["style_high"] = styled["high"][row["model"]]
        # Against the reference, plain and length-controlled (AlpacaEval 2), once they have met
        # often enough for a win rate to mean something.
        versus = against_reference.get(row["model"], {})
        met = versus.get("n", 0) >= MIN_ARENA_VOTES
        row["vs_reference_battles"] = versus.get("n", 0)
        for key in ("win_rate", "lc_win_rate", "low", "high"):
            row[f"vs_reference_{key}"] = versus[key] if met else None
        row["checkpoint_id"] = ids.get(row["model"])
        row["is_reference"] = row["model"] == reference
        row["finite"] = all(math.isfinite(row[k]) for k in ("rating", "low", "high"))
        row["group"] = index
        # A model that never lost (or never won) has no finite rating whatever the optimiser
        # stopped at; the others' ratings still hold (their order among themselves is bounded).
        both_ways = row["wins"] + row["ties"] > 0 and row["losses"] + row["ties"] > 0
        row["enough"] = both_ways and row["finite"] and row["votes"] >= MIN_ARENA_VOTES
    group = LeaderboardGroup(rows, reference, len(own), rateable)
    group.style_effects = styled["coefficients"]
    group.matrix = _win_matrix(group_counts, [row["model"] for row in rows[:MATRIX_MODELS]])
    return group


def _win_matrix(counts: Any, models: list[str]) -> list[dict[str, Any]]:
    """Per model (best first): its battles with each other model and its win rate over it
    (a tie half a win), None where they never met."""
    position = {model: k for k, model in enumerate(counts.models)}
    matrix = []
    for model in models:
        i = position[model]
        cells = []
        for other in models:
            j = position[other]
            votes = int(counts.wins[i, j] + counts.wins[j, i] + counts.ties[i, j])
            rate = (counts.wins[i, j] + 0.5 * counts.ties[i, j]) / votes if votes else None
            cells.append({"model": other, "votes": votes, "win_rate": rate, "self": i == j})
        matrix.append({"model": model, "cells": cells})
    return matrix
