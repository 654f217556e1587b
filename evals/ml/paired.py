"""Paired comparisons of two models on the same prompts: did the change help, beyond luck?

Two policies answer the same held-out prompts, so their per-prompt scores are paired and the
comparison is of the per-prompt differences (far tighter than two independent accuracies):

- `paired_difference`: the mean difference after - before with a Student-t 95% interval on the
  per-prompt differences, as `scipy.stats.ttest_rel(after, before).confidence_interval()`. For
  0/1 scores (greedy right/wrong) this is the paired difference of two proportions; for
  sampled accuracy each prompt's score is its share of right samples.
- `mcnemar_p`: McNemar's exact test for 0/1 scores, the two-sided binomial test on the
  discordant prompts (right before and wrong after, or the reverse), as
  `statsmodels.stats.contingency_tables.mcnemar(table, exact=True).pvalue`.

tests/evals/test_paired.py checks both against those libraries on fixed examples.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from scipy import stats


@dataclass(frozen=True)
class PairedDifference:
    n: int
    before: float  # mean score before
    after: float
    mean: float  # mean of after - before
    low: float  # the confidence interval of `mean`
    high: float

    @property
    def above_zero(self) -> bool:
        return self.low > 0

    def __str__(self) -> str:
        return f"{self.mean:+.3f} [{self.low:+.3f}, {self.high:+.3f}]"


def paired_difference(
    before: Sequence[float], after: Sequence[float], *, confidence: float = 0.95
) -> PairedDifference:
    if len(before) != len(after) or len(before) < 2:
        raise ValueError("paired scores need the same prompts, at least two")
    n = len(before)
    diffs = [a - b for a, b in zip(after, before, strict=True)]
    mean = sum(diffs) / n
    variance = sum((d - mean) ** 2 for d in diffs) / (n - 1)
    half = stats.t.ppf((1 + confidence) / 2, n - 1) * math.sqrt(variance / n)
    return PairedDifference(
        n=n,
        before=sum(before) / n,
        after=sum(after) / n,
        mean=mean,
        low=mean - half,
        high=mean + half,
    )


def mcnemar_p(before: Sequence[bool], after: Sequence[bool]) -> float:
    if len(before) != len(after):
        raise ValueError("paired verdicts need the same prompts")
    lost = sum(1 for b, a in zip(before, after, strict=True) if b and not a)
    gained = sum(1 for b, a in zip(before, after, strict=True) if a and not b)
    if lost + gained == 0:
        return 1.0
    return float(stats.binomtest(min(lost, gained), lost + gained, 0.5).pvalue)
