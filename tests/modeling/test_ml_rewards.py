"""Verifiable rewards: the registry, the built-in functions, and GRPO learning from one."""

import pytest
import torch

from modeling.ml import generate, parse_job_config, train
from modeling.ml.rewards import (
    exact_match,
    format_reward,
    register_reward,
    registered_rewards,
    reward_function,
)
from tests.modeling.test_ml_training import write_jsonl


def reply(text):
    return [{"role": "assistant", "content": text}]


def test_builtins_and_the_loop_checker_are_registered():
    # toy_task comes from loop's AppConfig.ready: modeling never imports loop.
    assert {"exact_match", "format", "toy_task"} <= set(registered_rewards())


def test_unknown_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"Unknown reward function 'nope'; registered: .*format"):
        reward_function("nope")


def test_another_function_cannot_take_a_registered_name():
    register_reward("format", format_reward)  # the same one again: a no-op
    with pytest.raises(ValueError, match="already registered"):
        register_reward("format", lambda **_: [])


def test_exact_match_compares_with_the_reference_column_and_skips_rows_without_one():
    completions = [reply(" Paris "), reply("paris."), reply("Rome"), reply("x")]
    assert exact_match(completions=completions, reference=["Paris", "Paris", "Paris", None]) == [
        1.0,
        0.0,
        0.0,
        None,
    ]
    assert exact_match(completions=completions[:1]) == [None]


def test_format_reward_matches_the_whole_reply_against_the_pattern():
    bound = reward_function("format", pattern=r"\d+")
    assert bound.__name__ == "format"  # TRL logs rewards under the function's name
    assert bound(prompts=[[]] * 3, completions=[reply("12"), reply("12 cats"), "7"]) == [
        1.0,
        0.0,
        1.0,
    ]


def test_toy_task_reward_is_the_strict_checker():
    toy = reward_function("toy_task")
    prompts = [[{"role": "user", "content": q}] for q in ("Reverse the word cat.",) * 3] + [
        [{"role": "user", "content": "Explain recursion."}]
    ]
    completions = [reply("tac"), reply("yob tac god"), reply("cat"), reply("anything")]
    assert toy(prompts=prompts, completions=completions) == [1.0, 0.0, 0.0, None]


# -- GRPO learns from a Python reward


def digit_share(*, completions, **_):
    """Share of a reply's characters that are digits: dense, so a near-untrained model's samples
    differ in it and every group has a gradient."""
    texts = [reply_text[0]["content"] for reply_text in completions]
    return [sum(c.isdigit() for c in t) / max(len(t), 1) for t in texts]


register_reward("test_digit_share", digit_share)

PROMPTS = [
    "What is 2 + 3?",
    "Sort: 3, 1, 2",
    "Compute 7 * 6.",
    "What is 40 - 15?",
    "How many legs does a dog have?",
    "12 + 9 = ?",
    "Sort the list: 9, 4, 7",
    "What is 8 * 8?",
]


def mean_reward(model_path: str, seed: int) -> float:
    conversations = [[{"role": "user", "content": q}] for q in PROMPTS]
    samples = generate(model_path, conversations, n=8, temperature=1.0, max_new_tokens=8, seed=seed)
    flat = [reply(text) for texts in samples for text in texts]
    return sum(digit_share(completions=flat)) / len(flat)


def test_grpo_with_a_python_reward_raises_the_mean_reward(tiny_model_dir, tmp_path):
    """Several seeds, a few dozen CPU steps each: the trend, not one lucky run."""
    torch.set_num_threads(1)
    data = tmp_path / "data"
    write_jsonl(
        data / "train.jsonl", [{"prompt": [{"role": "user", "content": q}]} for q in PROMPTS]
    )
    gains = []
    for seed in (0, 1, 2):
        config = parse_job_config(
            "grpo",
            {
                "learning_rate": 3e-3,
                "max_steps": 30,
                "batch_size": 8,
                "num_generations": 4,
                "max_completion_length": 8,
                "reward_functions": ["test_digit_share"],
                "seed": seed,
                "save_steps": None,
            },
        )
        out = tmp_path / f"out-{seed}"
        result = train(
            "grpo", config, model_path=tiny_model_dir, dataset_dir=str(data), output_dir=str(out)
        )
        assert result.steps == 30
        gains.append(
            mean_reward(str(out), seed=100 + seed) - mean_reward(tiny_model_dir, 100 + seed)
        )
    assert all(gain > 0 for gain in gains), gains
    assert sum(gains) / len(gains) > 0.05, gains
