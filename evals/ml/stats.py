"""Small statistics shared by the evaluators, each following a named reference definition."""

from __future__ import annotations

import math
from collections.abc import Sequence

# Two-sided 95% normal quantile, scipy.stats.norm.ppf(0.975).
Z_95 = 1.959963984540054


def mean_stderr(values: Sequence[float]) -> float | None:
    """Standard error of the mean, lm_eval.api.metrics.mean_stderr: sample_stddev / sqrt(n),
    with sample_stddev using n - 1. None for fewer than two values (lm-eval would divide by 0;
    None also keeps results JSON-safe, unlike NaN)."""
    n = len(values)
    if n < 2:
        return None
    mu = math.fsum(values) / n
    return math.sqrt(math.fsum((x - mu) ** 2 for x in values) / (n - 1)) / math.sqrt(n)


def wilson_interval(successes: float, n: int, z: float = Z_95) -> tuple[float, float]:
    """Wilson score interval for a proportion successes / n (Wilson 1927), as in
    statsmodels.stats.proportion.proportion_confint(method="wilson"). successes may be
    fractional (ties counted as half a success)."""
    if n <= 0:
        raise ValueError("n must be positive")
    p = successes / n
    denominator = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denominator
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denominator
    return max(0.0, centre - half), min(1.0, centre + half)
