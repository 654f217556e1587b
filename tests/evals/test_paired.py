"""The paired statistics against the libraries that define them."""

import random

import pytest
from scipy import stats
from statsmodels.stats.contingency_tables import mcnemar

from evals.ml.paired import mcnemar_p, paired_difference

BEFORE = [1, 0, 0, 1, 1, 0, 0, 0, 1, 0, 1, 0, 0, 0, 1, 0, 0, 1, 0, 0]
AFTER = [1, 1, 0, 1, 1, 1, 0, 1, 1, 0, 1, 1, 0, 0, 0, 1, 0, 1, 1, 0]


def test_paired_interval_is_scipys_paired_t_interval():
    ours = paired_difference(BEFORE, AFTER)
    theirs = stats.ttest_rel(AFTER, BEFORE).confidence_interval(0.95)
    assert ours.mean == pytest.approx(0.25)
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high), abs=1e-12)
    assert (ours.before, ours.after) == (0.35, 0.6)


def test_paired_interval_on_sampled_accuracies():
    rng = random.Random(0)
    before = [rng.randrange(9) / 8 for _ in range(200)]
    after = [min(1.0, b + rng.choice([0, 0, 0.125, 0.25, -0.125])) for b in before]
    ours = paired_difference(before, after, confidence=0.9)
    theirs = stats.ttest_rel(after, before).confidence_interval(0.9)
    assert (ours.low, ours.high) == pytest.approx((theirs.low, theirs.high), abs=1e-12)


def test_mcnemar_is_statsmodels_exact_test():
    table = [[0, 0], [0, 0]]
    for b, a in zip(BEFORE, AFTER, strict=True):
        table[1 - b][1 - a] += 1
    assert mcnemar_p(BEFORE, AFTER) == pytest.approx(mcnemar(table, exact=True).pvalue, abs=1e-12)
    assert mcnemar_p([1, 0], [1, 0]) == 1.0


def test_unpaired_input_is_refused():
    with pytest.raises(ValueError):
        paired_difference([1, 0], [1])
    with pytest.raises(ValueError):
        mcnemar_p([1], [1, 0])
