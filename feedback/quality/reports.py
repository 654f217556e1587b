"""Quality reports for a project: agreement per label kind with bootstrap CIs, per-annotator
figures with outlier flags, and the items whose judgements split.

Only human judgements on ordinary (non-gold) items count towards agreement; gold items are
used for each annotator's accuracy instead.
"""

from __future__ import annotations

import statistics
from collections import Counter, defaultdict
from collections.abc import Collection, Hashable, Iterable
from dataclasses import dataclass, field

import numpy as np
from django.db.models import QuerySet

from feedback.models import (
    Assignment,
    AssignmentStatus,
    Demonstration,
    Item,
    Origin,
    PairwiseJudgement,
    Project,
    RankingJudgement,
    TaskKind,
)

from .metrics import (
    Estimate,
    binomial_test_p,
    bootstrap,
    fleiss_kappa,
    krippendorff_alpha_of_counts,
    mean_kendall_tau,
    unit_value_counts,
)
from .reliability import YesNoReliability, pairwise_reliability, yes_no_reliability

CHOICE_CODES = {"a": 0, "b": 1, "tie": 2, "both_bad": 3}
STRENGTH = {"slight": 1, "clear": 2, "strong": 3}
# Outlier thresholds, each needing enough evidence before it fires.
MIN_FOR_FLAGS = 10
TOO_FAST_SECONDS = 3.0
TOO_FAST_SHARE_OF_MEDIAN = 0.3
SIDE_BIAS_P = 0.01
LOW_AGREEMENT = 0.5
LOW_GOLD_ACCURACY = 0.6
# Agreement with others needs an item that two or more others judged (a majority to agree
# with); a Dawid–Skene reliability resting on fewer shared items than this is not shown.
MIN_OTHERS_FOR_AGREEMENT = 2
MIN_SHARED_FOR_RELIABILITY = 5


@dataclass(frozen=True)
class AgreementRow:
    label: str
    metric: str
    level: str
    estimate: Estimate

    @property
    def gap(self) -> str:
        """Why there is no value, in words ("" when there is one)."""
        if self.estimate.value is not None:
            return ""
        if not self.estimate.n_items:
            return "overlap too low: no item has 2 or more judgements yet"
        n = self.estimate.n_items
        return f"undefined on {n} item{'' if n == 1 else 's'}: every answer the same, or too few"


@dataclass
class AnnotatorRow:
    username: str
    user_id: int = 0
    judgements: int = 0
    skips: int = 0
    median_seconds: float | None = None
    left_share: float | None = None
    decisive: int = 0
    tie_rate: float | None = None
    both_bad_rate: float | None = None
    loo_agreement: float | None = None
    loo_n: int = 0
    pairwise: int = 0  # pairwise votes on ordinary items: the only ones compared with others
    shared_items: int = 0  # ... on items someone else also judged
    loo_items: int = 0  # ... on items MIN_OTHERS_FOR_AGREEMENT or more others judged
    reliability: float | None = None  # Dawid–Skene: P(their vote is the true label)
    yes_no: list[YesNoReliability] = field(default_factory=list)  # one per flag label
    gold_accuracy: float | None = None
    gold_n: int = 0
    flags: list[str] = field(default_factory=list)

    @property
    def skip_rate(self) -> float | None:
        seen = self.judgements + self.skips
        return round(self.skips / seen, 3) if seen else None

    @property
    def agreement_gap(self) -> str:
        """Why there is no agreement figure, in words ("" when there is one)."""
        if self.loo_agreement is not None:
            return ""
        if not self.pairwise:
            return "no pairwise votes"
        if not self.loo_items:
            return (
                f"overlap too low: {self.loo_items} items shared with "
                f"≥ {MIN_OTHERS_FOR_AGREEMENT} others, needs ≥ 1"
            )
        return f"no majority among the others on its {self.loo_items} shared items"

    @property
    def reliability_gap(self) -> str:
        """Why there is no Dawid–Skene reliability, in words ("" when there is one)."""
        if self.reliability is not None:
            return ""
        if not self.pairwise:
            return "no pairwise votes"
        items = "item" if self.shared_items == 1 else "items"
        return (
            f"overlap too low: {self.shared_items} shared {items}, "
            f"needs ≥ {MIN_SHARED_FOR_RELIABILITY}"
        )


@dataclass(frozen=True)
class QualityReport:
    agreement: list[AgreementRow]
    annotators: list[AnnotatorRow]
    disagreements: int
    # Each AI annotator with a person's figures, measured against the people (ai_annotator_rows).
    ai_annotators: list[AnnotatorRow] = field(default_factory=list)
    min_shared_for_reliability: int = MIN_SHARED_FOR_RELIABILITY


def signed_preference(choice: str, strength: str) -> int:
    """A = +1…+3 by strength, B = −1…−3, tie 0 (both-bad has no place on this scale)."""
    if choice == "tie":
        return 0
    return (1 if choice == "a" else -1) * STRENGTH.get(strength, 1)


def _matrix(rows: list[tuple[int, int, float]]) -> tuple[np.ndarray, int]:
    """(unit, rater, value) triples -> raters × units matrix over units with ≥ 2 ratings."""
    by_unit: dict[int, dict[int, float]] = defaultdict(dict)
    for unit, rater, value in rows:
        by_unit[unit][rater] = value
    units = [u for u, ratings in by_unit.items() if len(ratings) >= 2]
    raters = sorted({r for u in units for r in by_unit[u]})
    index = {r: i for i, r in enumerate(raters)}
    data = np.full((len(raters), len(units)), np.nan)
    for column, unit in enumerate(units):
        for rater, value in by_unit[unit].items():
            data[index[rater], column] = value
    return data, len(units)


def _alpha_estimate(rows, level: str, seed: int) -> Estimate:
    data, n = _matrix(rows)
    counts, values = unit_value_counts(data)
    return bootstrap(lambda idx: krippendorff_alpha_of_counts(counts[idx], values, level), n,
                     seed=seed)  # fmt: skip


def _pairwise(project: Project) -> list[tuple]:
    return list(
        PairwiseJudgement.objects.filter(
            item__project=project, item__is_gold=False, origin=Origin.HUMAN
        ).values_list("item_id", "annotator_id", "choice", "strength")
    )


def project_agreement(project: Project, *, seed: int = 0) -> list[AgreementRow]:
    """Agreement per label kind; a kind the project does not collect, and has no judgements
    of, gets no row (rather than a row of dashes)."""
    rows: list[AgreementRow] = []
    pairwise = _pairwise(project)
    if pairwise or TaskKind.PAIRWISE in project.task_kinds:
        rows += _pairwise_agreement(pairwise, seed)
    rankings = _ranking_tau(project, seed)
    if rankings.n_items or TaskKind.RANKING in project.task_kinds:
        rows.append(AgreementRow("Rankings", "Kendall's τ-b (mean over pairs)", "ordinal",
                                 rankings))  # fmt: skip
    for spec in project.label_schema:
        # A per-reply scale holds one answer per reply: not a number per item to agree on.
        if spec["kind"] == "likert" and spec.get("scope", "item") == "item":
            values = _label_values(project, spec["name"])
            for level in ("ordinal", "interval"):
                rows.append(
                    AgreementRow(spec.get("label") or spec["name"], "Krippendorff's α", level,
                                 _alpha_estimate(values, level, seed))
                )  # fmt: skip
    return rows


def _pairwise_agreement(pairwise: list[tuple], seed: int) -> list[AgreementRow]:
    nominal = [(item, who, CHOICE_CODES[choice]) for item, who, choice, _ in pairwise]
    signed = [
        (item, who, signed_preference(choice, strength))
        for item, who, choice, strength in pairwise
        if choice != "both_bad"
    ]
    return [
        AgreementRow("Pairwise choice", "Krippendorff's α", "nominal",
                     _alpha_estimate(nominal, "nominal", seed)),
        AgreementRow("Preference with strength (−3…+3)", "Krippendorff's α", "ordinal",
                     _alpha_estimate(signed, "ordinal", seed)),
        AgreementRow("Pairwise choice", "Fleiss' κ", "nominal", _fleiss(pairwise, seed)),
    ]  # fmt: skip


def _fleiss(pairwise, seed: int) -> Estimate:
    """Fleiss' κ needs the same number of ratings per item: the most common count is used."""
    by_item: dict[int, Counter] = defaultdict(Counter)
    for item, _, choice, _ in pairwise:
        by_item[item][CHOICE_CODES[choice]] += 1
    sizes = Counter(sum(c.values()) for c in by_item.values() if sum(c.values()) >= 2)
    if not sizes:
        return Estimate(None, None, None, 0)
    k = sizes.most_common(1)[0][0]
    table = np.array(
        [[c[code] for code in range(4)] for c in by_item.values() if sum(c.values()) == k]
    )
    return bootstrap(lambda idx: fleiss_kappa(table[idx]), len(table), seed=seed)


def _ranking_tau(project: Project, seed: int) -> Estimate:
    by_item: dict[int, list[list[int]]] = defaultdict(list)
    judgements = RankingJudgement.objects.filter(
        item__project=project, item__is_gold=False, origin=Origin.HUMAN
    ).values_list("item_id", "ranking")
    for item, ranking in judgements:
        rank_of = {cid: position for position, group in enumerate(ranking) for cid in group}
        by_item[item].append([rank_of[cid] for cid in sorted(rank_of)])
    vectors = [v for v in by_item.values() if len(v) >= 2]
    return bootstrap(
        lambda idx: mean_kendall_tau([vectors[i] for i in idx]), len(vectors), seed=seed
    )


def _label_values(project: Project, name: str) -> list[tuple[int, int, float]]:
    values = []
    for model in (Demonstration, PairwiseJudgement, RankingJudgement):
        rows = model.objects.filter(
            item__project=project, item__is_gold=False, origin=Origin.HUMAN, labels__has_key=name
        ).values_list("item_id", "annotator_id", "labels")
        # A scale that was per reply before an admin changed it holds objects: not comparable.
        values += [
            (item, who, float(labels[name]))
            for item, who, labels in rows
            if isinstance(labels[name], int | float)
        ]
    return values


def annotator_rows(
    project: Project, *, origins: Collection[str] = (Origin.HUMAN,), leave_out: Collection[int] = ()
) -> list[AnnotatorRow]:
    """Figures for everyone whose judgements have one of `origins`: the quality page measures
    human work; a snapshot that also exports simulated work measures that population.
    `leave_out`: annotators whose judgements count for nothing (the other AI annotators, when
    one is measured against the people)."""
    judged = PairwiseJudgement.objects.filter(item__project=project, origin__in=origins).exclude(
        annotator_id__in=leave_out
    )
    rows: dict[int, AnnotatorRow] = {}
    seconds: dict[int, list[float]] = defaultdict(list)
    for model in (Demonstration, PairwiseJudgement, RankingJudgement):
        for who, username, spent in (
            model.objects.filter(item__project=project, origin__in=origins)
            .exclude(annotator_id__in=leave_out)
            .values_list("annotator_id", "annotator__username", "seconds_spent")
        ):
            row = rows.setdefault(who, AnnotatorRow(username, who))
            row.judgements += 1
            if spent is not None:
                seconds[who].append(spent)
    skips = Assignment.objects.filter(item__project=project, status=AssignmentStatus.SKIPPED)
    for who, username in skips.values_list("annotator_id", "annotator__username"):
        if who in rows or Origin.HUMAN in origins:
            rows.setdefault(who, AnnotatorRow(username, who)).skips += 1

    pairwise = list(
        judged.values_list("item_id", "annotator_id", "choice", "shown_left", "item__is_gold")
    )
    _position_and_ties(rows, pairwise)
    ordinary = [p for p in pairwise if not p[4]]
    _leave_one_out(rows, ordinary)
    _reliability(rows, ordinary, project, origins)
    _gold_accuracy(rows, project, origins)
    all_seconds = [s for values in seconds.values() for s in values]
    project_median = statistics.median(all_seconds) if all_seconds else None
    for who, row in rows.items():
        if seconds[who]:
            row.median_seconds = round(statistics.median(seconds[who]), 1)
        row.flags = _flags(row, project_median)
    return sorted(rows.values(), key=lambda r: (-len(r.flags), r.username))


def _position_and_ties(rows: dict[int, AnnotatorRow], pairwise) -> None:
    """Share of decisive choices that picked the reply shown on the left: sides are shuffled
    per annotator, so a fair annotator sits near 50%."""
    stats: dict[int, Counter] = defaultdict(Counter)
    for _, who, choice, shown_left, _ in pairwise:
        stats[who]["all"] += 1
        stats[who][choice] += 1
        if choice in ("a", "b"):
            stats[who]["decisive"] += 1
            stats[who]["left"] += choice == shown_left
    for who, counts in stats.items():
        row = rows[who]
        row.decisive = counts["decisive"]
        row.left_share = (
            round(counts["left"] / counts["decisive"], 3) if counts["decisive"] else None
        )
        row.tie_rate = round(counts["tie"] / counts["all"], 3)
        row.both_bad_rate = round(counts["both_bad"] / counts["all"], 3)


def plurality_share(answers: Iterable[Hashable]) -> float:
    """Agreement on one item: the share of its judgements that give its most common answer
    (1.0 for a single judgement; A, B, tie and both-bad are four different answers)."""
    counts = Counter(answers)
    total = sum(counts.values())
    return max(counts.values()) / total if total else 1.0


def _leave_one_out(rows: dict[int, AnnotatorRow], pairwise) -> None:
    """Agreement with the consensus of the *other* annotators of each item (a strict plurality
    of at least two of them); items without such a consensus do not count. Counts on the way
    each annotator's votes, shared items and items shared with enough others, which the page
    gives when a figure is missing."""
    by_item: dict[int, list[tuple[int, str]]] = defaultdict(list)
    for item, who, choice, _, _ in pairwise:
        by_item[item].append((who, choice))
    hits: dict[int, list[bool]] = defaultdict(list)
    for votes in by_item.values():
        for who, choice in votes:
            others = Counter(c for w, c in votes if w != who)
            row = rows[who]
            row.pairwise += 1
            row.shared_items += sum(others.values()) >= 1
            row.loo_items += sum(others.values()) >= MIN_OTHERS_FOR_AGREEMENT
            ranked = others.most_common(2)
            if sum(others.values()) < 2 or (len(ranked) == 2 and ranked[0][1] == ranked[1][1]):
                continue
            hits[who].append(choice == ranked[0][0])
    for who, outcomes in hits.items():
        rows[who].loo_n = len(outcomes)
        rows[who].loo_agreement = round(sum(outcomes) / len(outcomes), 3)


def _reliability(
    rows: dict[int, AnnotatorRow], pairwise: list[tuple], project: Project, origins: Collection[str]
) -> None:
    ordinary = [(item, who, choice) for item, who, choice, *_ in pairwise]
    for who, (value, shared) in pairwise_reliability(ordinary).items():
        if shared >= MIN_SHARED_FOR_RELIABILITY:
            rows[who].reliability = round(value, 3)
    for who, figures in yes_no_reliability(project, origins, MIN_SHARED_FOR_RELIABILITY).items():
        rows[who].yes_no = figures


def _gold_accuracy(
    rows: dict[int, AnnotatorRow], project: Project, origins: Collection[str]
) -> None:
    results: dict[int, list[bool]] = defaultdict(list)
    gold_pairwise = PairwiseJudgement.objects.filter(
        item__project=project, item__is_gold=True, origin__in=origins
    ).values_list("annotator_id", "choice", "item__gold_answer")
    for who, choice, answer in gold_pairwise:
        results[who].append(choice == answer.get("choice"))
    gold_rankings = RankingJudgement.objects.filter(
        item__project=project, item__is_gold=True, origin__in=origins
    ).values_list("annotator_id", "ranking", "item__gold_answer")
    for who, ranking, answer in gold_rankings:
        gold = answer.get("ranking") or []
        results[who].append(bool(gold) and set(ranking[0]) == set(gold[0]))  # same best reply
    for who, outcomes in results.items():
        if who in rows:
            rows[who].gold_n = len(outcomes)
            rows[who].gold_accuracy = round(sum(outcomes) / len(outcomes), 3)


def _flags(row: AnnotatorRow, project_median: float | None) -> list[str]:
    flags = []
    if row.median_seconds is not None and row.judgements >= MIN_FOR_FLAGS:
        floor = max(TOO_FAST_SECONDS, TOO_FAST_SHARE_OF_MEDIAN * (project_median or 0))
        if row.median_seconds < floor:
            flags.append(f"too fast (median {row.median_seconds}s)")
    if row.decisive >= 2 * MIN_FOR_FLAGS:
        left = round(row.left_share * row.decisive)
        if binomial_test_p(left, row.decisive) < SIDE_BIAS_P:
            flags.append(f"side bias ({row.left_share:.0%} left)")
    loo_evidence = row.loo_agreement is not None and row.loo_n >= MIN_FOR_FLAGS
    if loo_evidence and row.loo_agreement < LOW_AGREEMENT:
        flags.append(f"low agreement ({row.loo_agreement:.0%})")
    if row.gold_accuracy is not None and row.gold_n >= 5 and row.gold_accuracy < LOW_GOLD_ACCURACY:
        flags.append(f"low gold accuracy ({row.gold_accuracy:.0%})")
    return flags


def disagreement_items(project: Project) -> list[tuple[Item, Counter]]:
    """Ordinary pairwise and ranking items with two or more human judgements that do not all
    agree and have no adjudication yet, with their vote counts (per choice; per distinct
    ranking, as a tuple of sorted groups): the queue for adjudicators."""
    votes, split = _split_items(project)
    items = split.select_related("prompt").prefetch_related("item_completions").order_by("id")
    return [(item, votes[item.pk]) for item in items]


def _split_items(project: Project) -> tuple[dict[int, Counter], QuerySet[Item]]:
    """Every item's vote counts, and the split items awaiting adjudication."""
    votes: dict[int, Counter] = defaultdict(Counter)
    for item, _, choice, _ in _pairwise(project):
        votes[item][choice] += 1
    rankings = RankingJudgement.objects.filter(
        item__project=project, item__is_gold=False, origin=Origin.HUMAN
    ).values_list("item_id", "ranking")
    for item, ranking in rankings:
        votes[item][tuple(tuple(sorted(group)) for group in ranking)] += 1
    split = [item for item, counts in votes.items() if len(counts) > 1]
    return votes, Item.objects.filter(
        pk__in=split, kind__in=[TaskKind.PAIRWISE, TaskKind.RANKING], adjudications__isnull=True
    )


def ai_annotator_rows(project: Project) -> list[AnnotatorRow]:
    """Each AI annotator (feedback.services.assist) with the figures a person gets, taken over
    the human judgements and its own: its agreement is with the people who judged the same
    items, never with another model. The people's own rows leave AI votes out."""
    voters = set(
        PairwiseJudgement.objects.filter(item__project=project, origin=Origin.AI).values_list(
            "annotator_id", flat=True
        )
    )
    rows = []
    for voter in sorted(voters):
        measured = annotator_rows(
            project, origins=(Origin.HUMAN, Origin.AI), leave_out=voters - {voter}
        )
        rows += [row for row in measured if row.user_id == voter]
    return sorted(rows, key=lambda r: r.username)


def project_quality(project: Project) -> QualityReport:
    return QualityReport(
        agreement=project_agreement(project),
        annotators=annotator_rows(project),
        disagreements=_split_items(project)[1].count(),
        ai_annotators=ai_annotator_rows(project),
    )
