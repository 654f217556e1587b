"""What the ``dawid_skene`` aggregation needs: the judgements as labels for the Dawid–Skene model
(feedback.quality.dawid_skene), and each pair's posterior in the answers rows.py aggregates.

The model needs labels that mean the same on every task: a pairwise item's choice (A, B, tie,
both bad), and for a ranking's pair whether its lower or higher completion id won, or a tie.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from itertools import combinations

from django.db.models import QuerySet

from feedback.quality.dawid_skene import DawidSkeneFit, dawid_skene

from .policy import CHUNK


def ranked_pairs(ranking: list[list[int]]) -> Iterator[tuple[tuple[int, int], int | None]]:
    """Every pair of completions a ranking orders, sorted, with the better one (None for a pair
    ranked level)."""
    for better, worse in combinations(range(len(ranking)), 2):
        for winner in ranking[better]:
            for loser in ranking[worse]:
                yield (min(winner, loser), max(winner, loser)), winner
    for group in ranking:
        for pair in combinations(sorted(group), 2):
            yield pair, None


def pairwise_labels(judgements: Iterator[tuple]) -> Iterator[tuple]:
    """(item_id, annotator_id, choice) rows are already the model's (task, worker, label)."""
    return judgements


def ranking_labels(judgements: Iterator[tuple]) -> Iterator[tuple]:
    for item_id, annotator_id, ranking in judgements:
        for (first, second), winner in ranked_pairs(ranking):
            label = "tie" if winner is None else "first" if winner == first else "second"
            yield (item_id, first, second), annotator_id, label


def pairwise_posterior(fit: DawidSkeneFit, item_id: int, pair: tuple, completions: dict) -> dict:
    """{answer: probability}, answers as rows.py votes give them: a completion id, or an outcome
    ("tie", "both_bad")."""
    side = {position: cid for cid, (position, _) in completions.items()}
    answers = {"a": side[0], "b": side[1]}
    return {answers.get(label, label): p for label, p in fit.posterior(item_id).items()}


def ranking_posterior(fit: DawidSkeneFit, item_id: int, pair: tuple, completions: dict) -> dict:
    answers = {"first": pair[0], "second": pair[1]}
    return {answers.get(label, label): p for label, p in fit.posterior((item_id, *pair)).items()}


def dawid_skene_fit(
    judgements: QuerySet,
    fields: tuple,
    to_labels: Callable[[Iterator[tuple]], Iterator[tuple]],
) -> DawidSkeneFit:
    """The model fitted on every judgement the snapshot takes (one read of three columns
    before the rows stream: each item's label depends on every annotator's other work). An
    annotator is their user: imported labels, all owned by one system user, are one source."""
    rows = judgements.order_by().values_list("item_id", "annotator_id", *fields)
    return dawid_skene(to_labels(rows.iterator(CHUNK)))
