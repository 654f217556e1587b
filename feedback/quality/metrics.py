"""Agreement statistics, each delegating to a maintained implementation.

- Krippendorff's alpha: the ``krippendorff`` package (Krippendorff 2011, "Computing
  Krippendorff's Alpha-Reliability"), nominal / ordinal / interval levels of measurement.
- Fleiss' kappa: ``statsmodels.stats.inter_rater.fleiss_kappa`` (Fleiss 1971).
- Kendall's tau-b between two annotators' rankings of the same item: ``scipy.stats.kendalltau``.
- Confidence intervals: percentile bootstrap over items (units), seeded, so a CI says how much
  the figure would move with a different sample of items.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations

import krippendorff
import numpy as np

# scipy.stats and statsmodels are imported where they are used: together they add over 100 MB
# to every process that imports this module (snapshot builds and Celery workers do, through
# feedback.services) and only the quality page needs them.

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


def fleiss_kappa(table: np.ndarray) -> float | None:
    """Kappa for a units × categories count table with the same number of ratings per unit."""
    from statsmodels.stats.inter_rater import fleiss_kappa as _fleiss_kappa

    counts = np.asarray(table, dtype=float)
    if counts.shape[0] < 2 or len(set(counts.sum(axis=1))) != 1 or counts.sum(axis=1)[0] < 2:
        return None
    value = _fleiss_kappa(counts, method="fleiss")
    return None if np.isnan(value) else float(value)


def mean_kendall_tau(rank_vectors_by_item: Sequence[Sequence[Sequence[float]]]) -> float | None:
    """Mean tau-b over every pair of annotators who ranked the same item (ties allowed)."""
    from scipy.stats import kendalltau

    taus = []
    for vectors in rank_vectors_by_item:
        for x, y in combinations(vectors, 2):
            tau = kendalltau(x, y).statistic
            if not np.isnan(tau):
                taus.append(tau)
    return float(np.mean(taus)) if taus else None


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
