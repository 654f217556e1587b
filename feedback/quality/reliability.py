"""Annotator reliability from Dawid–Skene models (dawid_skene.py) of the labels annotators give
the same items: the pairwise choice, and each yes/no label (a flag such as "unsafe").

Only items two or more annotators answered are fitted: an item one person judged says nothing
about who is right.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Collection, Hashable
from dataclasses import dataclass

from feedback.models import Demonstration, PairwiseJudgement, Project, RankingJudgement

from .dawid_skene import dawid_skene


@dataclass(frozen=True)
class YesNoReliability:
    """One annotator on one yes/no label. Such labels are mostly "no", so a share of right
    answers would say little: the model's two rates say it instead."""

    label: str
    catches: float | None  # P(they tick it | it applies); None: too few items where it does
    false_alarms: float | None  # P(they tick it | it does not apply); None: likewise


def shared(answers: list[tuple]) -> list[tuple]:
    """The (item, annotator, answer) triples of items two or more annotators answered."""
    by_item = Counter(item for item, *_ in answers)
    return [answer for answer in answers if by_item[answer[0]] >= 2]


def pairwise_reliability(choices: list[tuple]) -> dict[Hashable, tuple[float, int]]:
    """Per annotator, from (item, annotator, choice) triples: the model's probability that their
    choice (A, B, tie or both bad) is the item's true one, averaged over their votes on shared
    items, and how many votes that is."""
    fitted = shared(choices)
    return dawid_skene(fitted).reliability() if fitted else {}


def yes_no_reliability(
    project: Project, origins: Collection[str], min_items: int
) -> dict[int, list[YesNoReliability]]:
    """Per annotator, for each flag label of the project: how often they tick it where the
    model says it applies and where it does not, on ordinary items with `origins` judgements,
    each rate once `min_items` such items (by the posterior) are behind it. A flag nobody
    ticked, or everybody always ticked, has no model."""
    flags = {spec["name"]: spec.get("label") or spec["name"]
             for spec in project.label_schema if spec["kind"] == "flag"}  # fmt: skip
    if not flags:
        return {}
    answers: dict[str, list[tuple]] = {name: [] for name in flags}
    for model in (Demonstration, PairwiseJudgement, RankingJudgement):
        judged = model.objects.filter(item__project=project, item__is_gold=False,
                                      origin__in=origins)  # fmt: skip
        for item, who, labels in judged.values_list("item_id", "annotator_id", "labels"):
            for name, found in answers.items():
                if isinstance(labels.get(name), bool):
                    found.append((item, who, labels[name]))
    figures: dict[int, list[YesNoReliability]] = {}
    for name, label in flags.items():
        fit = dawid_skene(shared(answers[name]))
        if fit.labels != [False, True]:
            continue
        for i, who in enumerate(fit.workers):
            true_mix = fit.posteriors[fit.task_of[fit.worker_of == i]].sum(axis=0)
            catches, false_alarms = (
                round(float(fit.errors[i, 1, truth]), 3) if true_mix[truth] >= min_items else None
                for truth in (1, 0)
            )
            figures.setdefault(who, []).append(YesNoReliability(label, catches, false_alarms))
    return figures
