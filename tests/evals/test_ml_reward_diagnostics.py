"""Reward-model diagnostics (evals/ml/reward_diagnostics.py), each tested numerically on a fixed
example worked by hand, then on the tiny reward model."""

import math

import pytest
from scipy.stats import spearmanr

from evals.ml import REWARD_DIAGNOSTICS_DEFINITIONS, load_best_of_n, pair_scores
from evals.ml.reward import reward_model_diagnostics
from evals.ml.reward_diagnostics import (
    agreement_bucket,
    best_of_n,
    bucketed_accuracy,
    calibration,
    length_correlation,
    strength_bucket,
)
from evals.services.suites import BEST_OF_N_ARITHMETIC
from loop.testing import tiny_reward_model, torch_threads

SIGMOID_2 = 1 / (1 + math.exp(-2))


def test_brier_and_ece_on_a_worked_example():
    # p = sigmoid(delta): 0.5 (a tie), 0.75, 0.25, sigmoid(2) = 0.8808.
    result = calibration([0.0, math.log(3), -math.log(3), 2.0])
    brier = (0.5**2 + 0.25**2 + 0.75**2 + (1 - SIGMOID_2) ** 2) / 4
    # Top-label confidence and correctness: (0.5, wrong) in bin 5, (0.75, right) and (0.75,
    # wrong) in bin 7, (0.8808, right) in bin 8.
    ece = 1 / 4 * 0.5 + 2 / 4 * abs(0.5 - 0.75) + 1 / 4 * (1 - SIGMOID_2)
    assert result["brier"] == pytest.approx(brier, abs=1e-12)
    assert result["ece"] == pytest.approx(ece, abs=1e-12)
    assert result["ece"] == pytest.approx(0.2798007, abs=1e-7)


def test_a_confident_right_model_is_well_calibrated_and_a_confident_wrong_one_is_not():
    right = calibration([50.0] * 4)
    assert right["brier"] == pytest.approx(0, abs=1e-12) and right["ece"] == pytest.approx(0)
    wrong = calibration([-50.0] * 4)
    assert wrong["brier"] == pytest.approx(1) and wrong["ece"] == pytest.approx(1)
    assert calibration([-1000.0])["brier"] == 1.0  # no overflow


def test_agreement_and_strength_buckets():
    assert agreement_bucket({"agreement": 1.0, "annotator_count": 3}) == "unanimous"
    assert agreement_bucket({"agreement": 1.0, "annotator_count": 1}) == "single"
    assert agreement_bucket({"agreement": 0.75, "annotator_count": 4}) == "0.75-1"
    assert agreement_bucket({"agreement": 0.6667, "annotator_count": 3}) == "0.5-0.75"
    assert agreement_bucket({}) is None
    assert [strength_bucket({"strength": s}) for s in (1, 1.4, 1.5, 2.49, 2.5, 3)] == [
        "slight",
        "slight",
        "clear",
        "clear",
        "strong",
        "strong",
    ]
    assert strength_bucket({"strength": 0}) is None and strength_bucket({}) is None


def test_bucketed_accuracy_counts_a_tie_as_wrong_and_skips_rows_without_a_bucket():
    deltas = [1.0, -1.0, 0.0, 2.0, 5.0]
    buckets = ["unanimous", "unanimous", "unanimous", "single", None]
    assert bucketed_accuracy(deltas, buckets) == {"single": (1.0, 1), "unanimous": (1 / 3, 3)}


def test_length_correlation_is_spearmans_rho_with_ties():
    scores = [0.3, -1.2, 2.5, 0.3, 1.1, -0.4]
    lengths = [10, 3, 40, 12, 12, 7]
    assert length_correlation(scores, lengths) == pytest.approx(
        spearmanr(scores, lengths).statistic, abs=1e-12
    )
    assert length_correlation([1, 2, 3], [3, 2, 1]) == pytest.approx(-1)
    assert length_correlation([1, 1, 1], [1, 2, 3]) is None  # constant: undefined
    assert length_correlation([1, 2], [1, 2]) is None


def test_best_of_n_against_random_and_oracle_on_a_worked_example():
    scores = [[1, 3, 2], [2, 2, 0], [5, 1]]
    correct = [[False, True, False], [True, False, False], [False, False]]
    # Prompt 1: the top score is right (1). Prompt 2: a tie at the top, one of two right (1/2).
    # Prompt 3: nothing right. Random: 1/3, 1/3, 0. Oracle: 1, 1, 0.
    assert best_of_n(scores, correct) == pytest.approx(
        {"reward": 1.5 / 3, "random": (2 / 3) / 3, "oracle": 2 / 3}
    )
    with pytest.raises(ValueError):
        best_of_n([[1, 2]], [[True]])


def test_every_diagnostic_documents_its_direction():
    for name, text in REWARD_DIAGNOSTICS_DEFINITIONS.items():
        assert any(w in text for w in ("Higher is better", "Lower is better", "Closer to 0")), name


def test_the_shipped_best_of_n_file_has_gold_answers_and_some_prompts_without_one():
    items = load_best_of_n(BEST_OF_N_ARITHMETIC)
    assert len(items) == 40 and all(len(item["candidates"]) == 4 for item in items)
    with_gold = sum(item["answer"] in item["candidates"] for item in items)
    assert with_gold == 36  # the oracle is 0.9, and a random pick 0.225


def test_a_bad_best_of_n_row_names_its_line(tmp_path):
    path = tmp_path / "bon.jsonl"
    path.write_text('{"prompt": "q", "candidates": ["1"], "answer": "1"}\n[1, 2]\n')
    with pytest.raises(ValueError, match="line 2"):
        load_best_of_n(path)


# -- on the tiny reward model


def message(role, text):
    return [{"role": role, "content": text}]


def test_diagnostics_on_the_tiny_reward_model_use_the_rows_metadata():
    with torch_threads(1):
        model, tokenizer = tiny_reward_model()
        pairs = [
            {
                "prompt": message("user", f"What is {a} + {a}?"),
                "chosen": message("assistant", str(2 * a)),
                "rejected": message("assistant", f"I think it is {2 * a + 1}."),
                "outcome": "chosen",
                "agreement": agreement,
                "annotator_count": 3,
                "strength": strength,
            }
            for a, agreement, strength in [(1, 1.0, 3), (2, 0.6667, 1), (3, 1.0, 2), (4, 1.0, 2)]
        ]
        # A kept tie has no preferred side: it is in no diagnostic.
        pairs.append({**pairs[0], "outcome": "tie", "agreement": 0.6667})
        chosen, rejected = pair_scores(model, tokenizer, pairs)
        items = load_best_of_n(BEST_OF_N_ARITHMETIC)[:5]
        result = reward_model_diagnostics(
            model, tokenizer, pairs, chosen, rejected, best_of_n_items=items
        )
    deltas = [c - r for c, r in zip(chosen[:4], rejected[:4], strict=True)]
    unanimous = [d > 0 for d in (deltas[0], deltas[2], deltas[3])]
    assert result["accuracy/agreement=unanimous"] == (sum(unanimous) / 3, 3)
    assert result["accuracy/agreement=0.5-0.75"] == (float(deltas[1] > 0), 1)
    assert result["accuracy/strength=clear"][1] == 2
    assert result["brier"] == pytest.approx((calibration(deltas)["brier"], 4))
    lengths = [len(p["chosen"][0]["content"]) for p in pairs[:4]] + [
        len(p["rejected"][0]["content"]) for p in pairs[:4]
    ]
    rho = spearmanr([*chosen[:4], *rejected[:4]], lengths).statistic
    assert result["length_correlation"] == pytest.approx((rho, 8))
    bon = {k: v for k, v in result.items() if k.startswith("best_of_n/")}
    assert set(bon) == {"best_of_n/reward", "best_of_n/random", "best_of_n/oracle"}
    assert all(n == 5 for _, n in bon.values())
    assert bon["best_of_n/random"][0] <= bon["best_of_n/oracle"][0]
