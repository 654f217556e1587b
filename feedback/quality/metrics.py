"""Agreement statistics, each following a published definition and tested against a maintained
implementation (tests/feedback/test_quality_metrics.py).

- Krippendorff's alpha: the ``krippendorff`` package (Krippendorff 2011, "Computing
  Krippendorff's Alpha-Reliability"), nominal / ordinal / interval levels of measurement.
- Fleiss' kappa (Fleiss 1971), as ``statsmodels.stats.inter_rater.fleiss_kappa(method="fleiss")``.
- Kendall's tau-b between two annotators' rankings of the same item, as
  ``scipy.stats.kendalltau`` (its default, variant "b").
- The exact two-sided binomial test, as ``scipy.stats.binomtest(k, n, p).pvalue``.
- Confidence intervals: percentile bootstrap over items (units), seeded, so a CI says how much
  the figure would move with a different sample of items.

The last three are a few lines of numpy here rather than imports: scipy.stats and statsmodels take
3 to 6 s to import cold, which the first Quality page of each server process paid (8.1 s against
0.4 s later; issue #17), and add over 100 MB to it.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import krippendorff
import numpy as np

LEVELS = ("nominal", "ordinal", "interval")


@dataclass(frozen=True)
class Estimate:
    value: float | None
    low: float | None
    high: float | None
    n_items: int

    def as_dict(self) -> dict:
        return {"value": self.value, "low": self.low, "high": self.high, "n_items": self.n_items}


def krippendorff_alpha(
    reliability: np.ndarray, level: str, value_domain: Sequence[float] | None = None
) -> float | None:
    """Alpha for a raters × units matrix with NaN for "not rated". None when undefined (fewer
    than two pairable values, or no variation at all)."""
    if level not in LEVELS:
        raise ValueError(f"level is one of {LEVELS}")
    data = np.asarray(reliability, dtype=float)
    pairable = np.sum(~np.isnan(data), axis=0) >= 2
    if pairable.sum() == 0 or len(np.unique(data[:, pairable][~np.isnan(data[:, pairable])])) < 2:
        return None
    alpha = krippendorff.alpha(
        reliability_data=data, level_of_measurement=level, value_domain=value_domain
    )
    return float(alpha)


def unit_value_counts(reliability: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """A raters × units matrix (NaN for "not rated") as units × values counts: how many raters
    gave each value to each unit, with the sorted values. Coincidences add up over units, so α
    of any resample of units is α of these rows (`krippendorff_alpha_of_counts`): the bootstrap
    converts the matrix once, not once per round (which was 70% of its time)."""
    data = np.asarray(reliability, dtype=float)
    values = np.unique(data[~np.isnan(data)])
    return (data.T[..., np.newaxis] == values).sum(axis=1), values


def krippendorff_alpha_of_counts(
    counts: np.ndarray, values: np.ndarray, level: str
) -> float | None:
    """Alpha of units given as `unit_value_counts` rows (every unit rated at least twice);
    None when fewer than two values occur."""
    if level not in LEVELS:
        raise ValueError(f"level is one of {LEVELS}")
    if np.count_nonzero(counts.sum(axis=0)) < 2:
        return None
    alpha = krippendorff.alpha(value_counts=counts, value_domain=values, level_of_measurement=level)
    return float(alpha)


def fleiss_kappa(table: np.ndarray) -> float | None:
    """Kappa for a units × categories count table with the same number of ratings per unit."""
    counts = np.asarray(table, dtype=float)
    if counts.shape[0] < 2 or len(set(counts.sum(axis=1))) != 1 or counts.sum(axis=1)[0] < 2:
        return None
    raters = counts.sum(axis=1)[0]
    category_share = counts.sum(axis=0) / counts.sum()
    unit_agreement = ((counts * counts).sum(axis=1) - raters) / (raters * (raters - 1))
    expected = float((category_share * category_share).sum())
    if expected == 1.0:  # every rating in one category: chance explains it all, kappa undefined
        return None
    return float((unit_agreement.mean() - expected) / (1 - expected))


def kendall_tau_b(x: Sequence[float], y: Sequence[float]) -> float:
    """Tau-b of two rankings of the same items: (concordant − discordant) pairs over the square
    root of the product of the pairs not tied in each. NaN when either ranking is all ties."""
    first, second = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
    i, j = np.triu_indices(len(first), 1)
    dx, dy = np.sign(first[i] - first[j]), np.sign(second[i] - second[j])
    untied = float(np.count_nonzero(dx)) * float(np.count_nonzero(dy))
    return float((dx * dy).sum() / math.sqrt(untied)) if untied else math.nan


def mean_kendall_tau(rank_vectors_by_item: Sequence[Sequence[Sequence[float]]]) -> float | None:
    """Mean tau-b over every pair of annotators who ranked the same item (ties allowed)."""
    taus = []
    for vectors in rank_vectors_by_item:
        for x, y in combinations(vectors, 2):
            tau = kendall_tau_b(x, y)
            if not math.isnan(tau):
                taus.append(tau)
    return float(np.mean(taus)) if taus else None


def binomial_test_p(k: int, n: int, p: float = 0.5) -> float:
    """Two-sided exact binomial test: the probability of every outcome no more likely than `k`
    successes in `n` trials (scipy's rule, with its 1e-7 relative tolerance for equal ones)."""
    if n == 0:
        return 1.0
    outcomes = np.arange(n + 1)
    log_pmf = (
        math.lgamma(n + 1)
        - np.array([math.lgamma(i + 1) + math.lgamma(n - i + 1) for i in outcomes])
        + outcomes * math.log(p)
        + (n - outcomes) * math.log1p(-p)
    )
    as_likely = log_pmf <= log_pmf[k] + math.log1p(1e-7)
    return min(1.0, float(np.exp(log_pmf[as_likely]).sum()))


def bootstrap(
    statistic: Callable[[np.ndarray], float | None],
    n_items: int,
    *,
    rounds: int = 200,
    seed: int = 0,
    confidence: float = 0.95,
) -> Estimate:
    """`statistic(indices)` computed on all items and on `rounds` resamples of items."""
    if n_items == 0:
        return Estimate(None, None, None, 0)
    value = statistic(np.arange(n_items))
    if value is None:
        return Estimate(None, None, None, n_items)
    rng = np.random.default_rng(seed)
    samples = [statistic(rng.integers(0, n_items, n_items)) for _ in range(rounds)]
    samples = [s for s in samples if s is not None]
    if len(samples) < rounds // 2:
        return Estimate(round(value, 4), None, None, n_items)
    tail = (1 - confidence) / 2 * 100
    low, high = np.percentile(samples, [tail, 100 - tail])
    return Estimate(round(value, 4), round(float(low), 4), round(float(high), 4), n_items)
