"""Arena maths: Bradley-Terry against an independent fit, ties, bootstrap, ranks, online Elo."""

import math

import numpy as np
import pytest
import statsmodels.api as sm

from evals.ml import ARENA_DEFINITION, BattleCounts, battle_counts, bradley_terry, online_elo
from evals.ml.arena import mle_exists, rank_by_intervals, style_controlled, style_features


def synthetic_battles(strengths: dict[str, float], n: int, seed: int, tie_rate: float = 0.0):
    """Votes drawn from the model itself: P(a wins) = 1 / (1 + 10^((R_b - R_a) / 400))."""
    rng = np.random.default_rng(seed)
    names = list(strengths)
    ratings = np.array([strengths[m] for m in names])
    a = rng.integers(0, len(names), n)
    b = (a + rng.integers(1, len(names), n)) % len(names)
    p_a = 1 / (1 + 10 ** ((ratings[b] - ratings[a]) / 400))
    winner = np.where(rng.random(n) < p_a, "model_a", "model_b")
    winner = np.where(rng.random(n) < tie_rate, "tie", winner)
    return [(names[i], names[j], w) for i, j, w in zip(a, b, winner, strict=True)]


def logistic_fit(battles, reference: str) -> dict[str, float]:
    """Independent Bradley-Terry fit: statsmodels Logit (Newton) on expanded rows, one row per
    outcome with a tie expanded to half a win each way (all rows doubled to stay integral),
    the reference model's column dropped so its strength is 0."""
    models = sorted({m for a, b, _ in battles for m in (a, b)})
    others = [m for m in models if m != reference]
    rows, outcomes = [], []
    for a, b, winner in battles:
        x = np.zeros(len(others))
        if a != reference:
            x[others.index(a)] = 1.0
        if b != reference:
            x[others.index(b)] = -1.0
        labels = {"model_a": [1, 1], "model_b": [0, 0]}.get(winner, [1, 0])
        for y in labels:
            rows.append(x)
            outcomes.append(y)
    fit = sm.Logit(np.array(outcomes), np.array(rows)).fit(disp=0, method="newton", tol=1e-12)
    theta = dict(zip(others, fit.params, strict=True)) | {reference: 0.0}
    return {m: 1000 + 400 * theta[m] / math.log(10) for m in models}


def ratings(rows) -> dict[str, float]:
    return {row["model"]: row["rating"] for row in rows}


def test_recovers_known_strengths():
    truth = {"alpha": 1000, "beta": 1100, "gamma": 900, "delta": 1250, "eps": 1000}
    rows = bradley_terry(synthetic_battles(truth, 40_000, seed=1), reference="alpha", rounds=20)
    for model, rating in ratings(rows).items():
        assert rating == pytest.approx(truth[model], abs=15)
    assert [row["model"] for row in rows[:2]] == ["delta", "beta"]


def test_matches_an_independent_logistic_fit_within_1e_3():
    truth = {"m1": 1000, "m2": 1080, "m3": 950, "m4": 1200, "m5": 1010, "m6": 700}
    battles = synthetic_battles(truth, 6_000, seed=2, tie_rate=0.2)
    battles += [("m1", "m2", "tie (bothbad)")] * 50
    ours = ratings(bradley_terry(battles, reference="m3", rounds=0))
    expected = logistic_fit(battles, reference="m3")
    assert ours.keys() == expected.keys()
    for model in ours:
        assert ours[model] == pytest.approx(expected[model], abs=1e-3)


def test_a_tie_is_half_a_win_for_each_side():
    decisive = [("a", "b", "model_a")] * 3 + [("b", "c", "model_b")] * 2 + [("c", "a", "model_a")]
    tied = [("a", "b", "tie")] * 4 + [("c", "b", "tie (bothbad)")] * 2
    # the same votes with each tie replaced by one win each way and each decisive vote doubled
    expanded = decisive * 2 + [("a", "b", "model_a"), ("a", "b", "model_b")] * 4
    expanded += [("c", "b", "model_a"), ("c", "b", "model_b")] * 2
    with_ties = ratings(bradley_terry(decisive + tied, reference="a", rounds=0))
    without = ratings(bradley_terry(expanded, reference="a", rounds=0))
    for model in with_ties:
        assert with_ties[model] == pytest.approx(without[model], abs=1e-6)


def test_only_ties_give_equal_ratings():
    rows = bradley_terry([("a", "b", "tie")] * 10 + [("b", "a", "tie (bothbad)")] * 3, rounds=10)
    assert [row["rating"] for row in rows] == pytest.approx([1000, 1000], abs=1e-6)
    assert [row["votes"] for row in rows] == [13, 13]


def test_scale_and_anchor_follow_fastchat():
    # 10:1 odds are 400 points; the reference sits at 1000 with no uncertainty
    battles = [("strong", "weak", "model_a")] * 100 + [("weak", "strong", "model_a")] * 10
    rows = {row["model"]: row for row in bradley_terry(battles, reference="weak")}
    assert rows["weak"]["rating"] == pytest.approx(1000, abs=1e-6)
    assert rows["weak"]["low"] == rows["weak"]["high"] == pytest.approx(1000, abs=1e-6)
    assert rows["strong"]["rating"] == pytest.approx(1400, abs=1e-3)
    # without a reference the mean is 1000
    free = bradley_terry(battles)
    assert sum(row["rating"] for row in free) / 2 == pytest.approx(1000, abs=1e-6)
    assert free[0]["rating"] - free[1]["rating"] == pytest.approx(400, abs=1e-3)
    assert "400" in ARENA_DEFINITION


def test_bootstrap_is_reproducible_under_a_seed():
    battles = synthetic_battles({"a": 1000, "b": 1030, "c": 980}, 3_000, seed=3, tie_rate=0.1)
    first = bradley_terry(battles, reference="a", rounds=50, seed=7)
    again = bradley_terry(battles, reference="a", rounds=50, seed=7)
    other = bradley_terry(battles, reference="a", rounds=50, seed=8)
    assert first == again
    assert [r["low"] for r in first] != [r["low"] for r in other]
    assert [r["rating"] for r in first] == [r["rating"] for r in other]  # the fit is not random
    for row in first:
        assert row["low"] <= row["rating"] <= row["high"]


def test_counts_and_battle_lists_give_the_same_table():
    battles = synthetic_battles({"a": 1000, "b": 1100, "c": 950}, 2_000, seed=4, tie_rate=0.1)
    counts = battle_counts(battles)
    assert counts.models == ["a", "b", "c"]
    assert counts.votes.tolist() == [sum(m in (x, y) for x, y, _ in battles) for m in counts.models]
    assert counts.wins.sum() + counts.ties.sum() / 2 == len(battles)
    assert bradley_terry(counts, reference="b", seed=1) == bradley_terry(
        battles, reference="b", seed=1
    )


def test_rank_is_one_plus_models_whose_lower_bound_beats_my_upper_bound():
    low = np.array([30.0, 15.0, 10.0, 0.0])
    high = np.array([40.0, 25.0, 20.0, 35.0])
    # model 0: no low above 40; model 1: 30 > 25; model 2: 30 > 20; model 3: no low above 35
    assert rank_by_intervals(low, high).tolist() == [1, 2, 2, 1]

    battles = synthetic_battles({"top": 1400, "mid": 1000, "mid2": 1002, "low": 600}, 8_000, seed=5)
    rows = {row["model"]: row for row in bradley_terry(battles, rounds=60)}
    assert rows["top"]["rank"] == 1
    assert rows["mid"]["rank"] == rows["mid2"]["rank"] == 2  # indistinguishable: same rank
    assert rows["low"]["rank"] == 4


def test_bad_votes_are_rejected():
    with pytest.raises(ValueError, match="unknown winner"):
        bradley_terry([("a", "b", "model_c")])
    with pytest.raises(ValueError, match="cannot battle itself"):
        bradley_terry([("a", "a", "tie")])
    with pytest.raises(ValueError, match="tuples"):
        bradley_terry([("a", "b")])
    with pytest.raises(ValueError, match="has no votes"):
        bradley_terry([("a", "b", "tie")], reference="z")
    with pytest.raises(ValueError, match="symmetric"):
        BattleCounts(["a", "b"], np.zeros((2, 2)), np.array([[0, 1], [0, 0]]))
    assert bradley_terry([]) == []


def test_online_elo_follows_fastchat_compute_elo():
    # first vote from 1000/1000: expected 0.5, a wins, K=4 -> +2 / -2
    assert online_elo([("a", "b", "model_a")]) == {"a": 1002.0, "b": 998.0}
    ratings_after = online_elo([("a", "b", "model_a"), ("b", "a", "tie")], k=32)
    ea = 1 / (1 + 10 ** ((1016 - 984) / 400))  # b (984) against a (1016)
    assert ratings_after["b"] == pytest.approx(984 + 32 * (0.5 - ea))
    assert ratings_after["a"] == pytest.approx(1016 + 32 * (0.5 - (1 - ea)))
    # sums are conserved: every update moves the two ratings by opposite amounts
    battles = synthetic_battles({"x": 1000, "y": 1200, "z": 900}, 500, seed=6, tie_rate=0.2)
    assert sum(online_elo(battles).values()) == pytest.approx(3000)


def test_a_model_that_never_lost_is_flagged(caplog):
    battles = [("a", "b", "model_a")] * 5 + [("b", "c", "model_a"), ("c", "b", "model_a")]
    assert not mle_exists(battle_counts(battles))
    assert mle_exists(battle_counts([*battles, ("b", "a", "tie")]))
    with caplog.at_level("WARNING", logger="evals.ml.arena"):
        bradley_terry(battles, rounds=0)
    assert "unbounded" in caplog.text


# --- style control (issue #18) ------------------------------------------------------------------


def test_style_features_count_length_headers_lists_and_bold():
    text = "# Title\n\nSome **bold** words.\n\n- one\n- two\n1. three\n__also bold__"
    assert style_features(text) == (13, 1, 3, 2)


def test_style_control_separates_a_length_bias_from_strength():
    """Two equally strong models; voters prefer the longer reply, and `verbose` writes longer
    ones on average (the lengths overlap, or length and model could not be told apart). Plain
    Bradley-Terry rates `verbose` far above; with style control the two are level and the
    length coefficient carries the preference."""
    rng = np.random.default_rng(3)
    battles, styles = [], []
    for _ in range(3000):
        a, b = ("verbose", "terse") if rng.random() < 0.5 else ("terse", "verbose")
        length = {"verbose": int(rng.integers(60, 400)), "terse": int(rng.integers(20, 200))}
        # one strength, and a preference for the longer reply (logit 2 per unit of the
        # normalised length difference)
        d = (length[a] - length[b]) / (length[a] + length[b])
        p_a = 1 / (1 + math.exp(-2.0 * d))
        battles.append((a, b, "model_a" if rng.random() < p_a else "model_b"))
        styles.append(((length[a], 0, 0, 0), (length[b], 0, 0, 0)))
    plain = {row["model"]: row["rating"] for row in bradley_terry(battles, reference="terse")}
    assert plain["verbose"] - 1000 > 60
    controlled = style_controlled(battles, styles, reference="terse", rounds=30, seed=1)
    assert controlled["ratings"]["terse"] == pytest.approx(1000)
    assert abs(controlled["ratings"]["verbose"] - 1000) < 40
    assert controlled["low"]["verbose"] <= 1000 <= controlled["high"]["verbose"]
    assert controlled["coefficients"]["length"] > 0.3
    assert controlled["coefficients"]["lists"] == 0  # no variation, no effect


def test_without_style_differences_style_control_is_plain_bradley_terry():
    battles = synthetic_battles({"x": 1000, "y": 1100, "z": 1250}, 600, seed=5)
    same = [((10, 0, 0, 0), (10, 0, 0, 0))] * len(battles)
    plain = {row["model"]: row["rating"] for row in bradley_terry(battles, reference="x")}
    controlled = style_controlled(battles, same, reference="x", rounds=0)["ratings"]
    for model, rating in plain.items():
        assert controlled[model] == pytest.approx(rating, abs=0.5)
