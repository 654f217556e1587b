"""Agreement metrics against published worked examples."""

import numpy as np
import pytest

from feedback.quality.metrics import (
    binomial_test_p,
    bootstrap,
    fleiss_kappa,
    kendall_tau_b,
    krippendorff_alpha,
    krippendorff_alpha_of_counts,
    mean_kendall_tau,
    unit_value_counts,
)

NAN = np.nan
# Krippendorff (2011), "Computing Krippendorff's Alpha-Reliability", section E: 4 observers,
# 12 units, values 1..5, missing data. Published: nominal .743, ordinal .815, interval .849.
KRIPPENDORFF_2011 = np.array(
    [
        [1, 2, 3, 3, 2, 1, 4, 1, 2, NAN, NAN, NAN],
        [1, 2, 3, 3, 2, 2, 4, 1, 2, 5, NAN, 3],
        [NAN, 3, 3, 3, 2, 3, 4, 2, 2, 5, 1, NAN],
        [1, 2, 3, 3, 2, 4, 4, 1, 2, 5, 1, NAN],
    ]
)
# Fleiss (1971) as worked on Wikipedia's "Fleiss' kappa" page: 10 subjects, 14 raters, 5
# categories; kappa = 0.210.
FLEISS_EXAMPLE = np.array(
    [
        [0, 0, 0, 0, 14],
        [0, 2, 6, 4, 2],
        [0, 0, 3, 5, 6],
        [0, 3, 9, 2, 0],
        [2, 2, 8, 1, 1],
        [7, 7, 0, 0, 0],
        [3, 2, 6, 3, 0],
        [2, 5, 3, 2, 2],
        [6, 5, 2, 1, 0],
        [0, 2, 2, 3, 7],
    ]
)


@pytest.mark.parametrize(
    ("level", "expected"), [("nominal", 0.743), ("ordinal", 0.815), ("interval", 0.849)]
)
def test_krippendorff_alpha_matches_the_published_example(level, expected):
    assert krippendorff_alpha(KRIPPENDORFF_2011, level) == pytest.approx(expected, abs=5e-4)


def test_krippendorff_alpha_is_one_for_perfect_agreement_and_undefined_without_pairs():
    assert krippendorff_alpha(np.array([[1, 2, 1], [1, 2, 1]]), "nominal") == pytest.approx(1.0)
    assert krippendorff_alpha(np.array([[1, NAN], [NAN, 2]]), "nominal") is None
    assert krippendorff_alpha(np.array([[1, 1], [1, 1]]), "nominal") is None


@pytest.mark.parametrize("level", ["nominal", "ordinal", "interval"])
def test_alpha_of_resampled_unit_counts_equals_alpha_of_the_resampled_matrix(level):
    # What the bootstrap relies on: α of units given as counts, repeats included, is α of the
    # raters × units matrix with those columns. Units rated at least twice, as the page's are.
    rng = np.random.default_rng(7)
    data = rng.integers(1, 6, size=(6, 80)).astype(float)
    data[rng.random(data.shape) < 0.5] = NAN
    data = data[:, np.sum(~np.isnan(data), axis=0) >= 2]
    published = KRIPPENDORFF_2011[:, np.sum(~np.isnan(KRIPPENDORFF_2011), axis=0) >= 2]
    for matrix in (data, published):
        counts, values = unit_value_counts(matrix)
        units = matrix.shape[1]
        for idx in [np.arange(units), *(rng.integers(0, units, units) for _ in range(20))]:
            expected = krippendorff_alpha(matrix[:, idx], level)
            assert krippendorff_alpha_of_counts(counts[idx], values, level) == pytest.approx(
                expected, abs=1e-12
            )
    one_value = unit_value_counts(np.array([[1.0, 1.0], [1.0, 1.0]]))
    assert krippendorff_alpha_of_counts(*one_value, "nominal") is None


def test_fleiss_kappa_matches_the_worked_example():
    assert fleiss_kappa(FLEISS_EXAMPLE) == pytest.approx(0.210, abs=5e-4)


def test_fleiss_kappa_needs_equal_ratings_per_unit():
    assert fleiss_kappa(np.array([[2, 0], [1, 2]])) is None


def test_mean_kendall_tau_averages_annotator_pairs():
    same = [[1, 2, 3, 4], [1, 2, 3, 4]]
    reversed_ = [[1, 2, 3], [3, 2, 1]]
    assert mean_kendall_tau([same]) == pytest.approx(1.0)
    assert mean_kendall_tau([same, reversed_]) == pytest.approx(0.0)
    assert mean_kendall_tau([]) is None


def test_bootstrap_interval_brackets_the_estimate_and_is_reproducible():
    rng = np.random.default_rng(1)
    values = rng.normal(0.6, 0.2, 300)
    first = bootstrap(lambda idx: float(values[idx].mean()), len(values), seed=3)
    second = bootstrap(lambda idx: float(values[idx].mean()), len(values), seed=3)
    assert first == second
    assert first.low < first.value < first.high
    assert first.high - first.low == pytest.approx(2 * 1.96 * 0.2 / np.sqrt(300), rel=0.25)


def test_kendall_tau_b_matches_hand_counts_with_and_without_ties():
    # [1..5] against [3, 4, 1, 2, 5]: 6 concordant and 4 discordant pairs of 10 -> (6 - 4) / 10.
    assert mean_kendall_tau([[[1, 2, 3, 4, 5], [3, 4, 1, 2, 5]]]) == pytest.approx(0.2)
    # [1, 1, 2, 3] against [1, 2, 2, 3]: 4 concordant, 0 discordant, one pair tied in each of
    # the two rankings: tau-b = 4 / sqrt((6 - 1) * (6 - 1)) = 0.8.
    assert mean_kendall_tau([[[1, 1, 2, 3], [1, 2, 2, 3]]]) == pytest.approx(0.8)


# --- the same numbers as the maintained implementations (imported here, never by the app) ---------


def test_fleiss_kappa_is_statsmodels_fleiss_kappa():
    from statsmodels.stats.inter_rater import fleiss_kappa as reference

    rng = np.random.default_rng(7)
    for _ in range(50):
        table = rng.multinomial(int(rng.integers(2, 8)), [0.4, 0.3, 0.2, 0.1], rng.integers(2, 40))
        assert fleiss_kappa(table) == pytest.approx(reference(table, method="fleiss"), abs=1e-12)
    assert fleiss_kappa(np.array([[3, 0], [3, 0]])) is None  # every rating alike: undefined


def test_kendall_tau_b_is_scipys_kendalltau():
    from scipy.stats import kendalltau

    rng = np.random.default_rng(7)
    for _ in range(200):
        n = int(rng.integers(2, 9))
        x, y = rng.integers(1, 4, n), rng.integers(1, 4, n)  # many ties
        expected = kendalltau(x, y).statistic
        got = kendall_tau_b(x, y)
        assert (np.isnan(got) and np.isnan(expected)) or got == pytest.approx(expected, abs=1e-12)


@pytest.mark.parametrize("n", [0, 1, 7, 20, 21, 40, 101, 2000])
@pytest.mark.parametrize("p", [0.5, 0.3])
def test_binomial_test_is_scipys_two_sided_binomtest(n, p):
    from scipy.stats import binomtest

    for k in range(0, n + 1, max(1, n // 25)):
        expected = binomtest(k, n, p).pvalue if n else 1.0
        assert binomial_test_p(k, n, p) == pytest.approx(expected, rel=1e-9, abs=1e-15)
