"""Reward-model accuracy (RewardBench convention) and RM-judged win rate (Wilson interval)."""

import pytest
from statsmodels.stats.proportion import proportion_confint

from evals.ml import load_preference_pairs, reward_accuracy, reward_win_rate
from evals.ml.reward import reward_scores
from evals.ml.stats import mean_stderr, wilson_interval
from loop.testing import tiny_reward_model, torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def rm():
    return tiny_reward_model()


def pair(prompt, chosen, rejected):
    return {
        "prompt": [{"role": "user", "content": prompt}],
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
    }


def test_a_tie_counts_as_wrong(rm):
    model, tokenizer = rm
    result = reward_accuracy(model, tokenizer, [pair("What is 2 + 2?", "4", "4")] * 3)
    assert result == {"accuracy": 0.0, "n": 3, "stderr": 0.0}


def test_accuracy_counts_strictly_higher_chosen_scores(rm):
    model, tokenizer = rm
    a, b = "4", "The answer is five."
    prompt = [{"role": "user", "content": "q"}]
    score_a, score_b = reward_scores(
        model,
        tokenizer,
        [
            [*prompt, {"role": "assistant", "content": a}],
            [*prompt, {"role": "assistant", "content": b}],
        ],
    )
    assert score_a != score_b
    pairs = [pair("q", a, b), pair("q", b, a), pair("q", a, a), pair("q", a, b)]
    better_first = score_a > score_b
    expected = [better_first, not better_first, False, better_first]
    result = reward_accuracy(model, tokenizer, pairs)
    assert result["accuracy"] == sum(expected) / 4
    assert result["stderr"] == pytest.approx(mean_stderr([float(x) for x in expected]))


def test_scores_do_not_depend_on_batch_size(rm):
    model, tokenizer = rm
    rows = [p["prompt"] + p["chosen"] for p in load_preference_pairs()[:7]]
    rows += ["a plain text row", "another, longer plain text row"]
    one = reward_scores(model, tokenizer, rows, batch_size=1)
    four = reward_scores(model, tokenizer, rows, batch_size=4)
    assert four == pytest.approx(one, rel=1e-5, abs=1e-6)
    pairs = load_preference_pairs()[:6]
    assert reward_accuracy(model, tokenizer, pairs, batch_size=1) == reward_accuracy(
        model, tokenizer, pairs, batch_size=5
    )


def test_win_rate_counts_ties_half_with_a_wilson_interval(rm):
    model, tokenizer = rm
    prompts = ["What is 2 + 2?", [{"role": "user", "content": "Reverse: cat"}], "Sort: 3, 1"]
    policy = ["4", "tac", "1, 3"]
    result = reward_win_rate(model, tokenizer, policy, policy, prompts)
    assert (result["wins"], result["ties"], result["losses"]) == (0, 3, 0)
    assert result["win_rate"] == 0.5
    low, high = proportion_confint(1.5, 3, alpha=0.05, method="wilson")
    assert (result["low"], result["high"]) == pytest.approx((low, high))

    reference = ["5", "cat", "1, 3"]
    forward = reward_win_rate(model, tokenizer, policy, reference, prompts)
    backward = reward_win_rate(model, tokenizer, reference, policy, prompts)
    assert forward["ties"] == backward["ties"] == 1
    assert forward["wins"] == backward["losses"]
    assert forward["win_rate"] + backward["win_rate"] == pytest.approx(1.0)
    assert forward["n"] == 3


def test_wilson_interval_matches_statsmodels():
    for successes, n in [(0, 10), (3, 10), (10, 10), (57.5, 120)]:
        expected = proportion_confint(successes, n, alpha=0.05, method="wilson")
        assert wilson_interval(successes, n) == pytest.approx(expected)


def test_mismatched_inputs_are_rejected(rm):
    model, tokenizer = rm
    with pytest.raises(ValueError):
        reward_win_rate(model, tokenizer, ["a"], ["b", "c"], ["q"])
    with pytest.raises(ValueError):
        reward_accuracy(model, tokenizer, [])
    with pytest.raises(ValueError, match="missing"):
        reward_accuracy(model, tokenizer, [{"prompt": [], "chosen": []}])
