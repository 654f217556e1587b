"""Generative tasks: stop sequences, scorers, greedy determinism, seeded sampling."""

import json

import pytest

from evals.ml import evaluate_generative, load_gen_task, shipped_tasks
from evals.ml.generative import (
    GENERATION_CACHE_BYTES,
    MAX_GENERATION_ROWS,
    cut_at_stop,
    generation_batch_size,
    score_output,
)
from loop.testing import tiny_lm, torch_threads


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def test_scorers():
    assert score_output("exact_match", " 12 ", "12")
    assert not score_output("exact_match", "12.", "12")
    assert score_output("contains", "the answer is 12.", "12")
    assert not score_output("contains", "the answer is 1", "12")
    assert score_output("regex", " 12 ", r"1\d")
    assert not score_output("regex", "112", r"1\d")  # the whole answer must match
    with pytest.raises(ValueError):
        score_output("bleu", "a", "a")


def test_output_is_cut_before_the_earliest_stop_sequence():
    assert cut_at_stop("12\nQuestion: 3", ["Question:", "\n"]) == "12"
    assert cut_at_stop("no stop here", ["\n"]) == "no stop here"
    assert cut_at_stop("abc", []) == "abc"


def test_generation_is_scored_per_sample_and_greedy_is_batch_independent(lm):
    model, tokenizer = lm
    task = load_gen_task(shipped_tasks()["toy_qa_gen"])
    one = evaluate_generative(model, tokenizer, task, limit=5, batch_size=1, max_new_tokens=6)
    five = evaluate_generative(model, tokenizer, task, limit=5, batch_size=5, max_new_tokens=6)
    assert [s["output"] for s in one["samples"]] == [s["output"] for s in five["samples"]]
    assert one["n"] == 5 and set(one) == {"exact_match", "exact_match_stderr", "n", "samples"}
    for sample, item in zip(one["samples"], task.items, strict=False):
        assert sample["target"] == item.target
        assert sample["prompt"].endswith("<|assistant|>")
        assert sample["correct"] == (sample["output"].strip() == item.target)
        assert "\n" not in sample["output"]
    assert one["exact_match"] == sum(s["correct"] for s in one["samples"]) / 5


def test_without_a_batch_size_every_prompt_goes_in_one_batch_with_the_same_answers(lm):
    """The default batch is as wide as the cap allows (a small model's decode step costs about
    the same for 8 rows as for 64), and greedy answers do not depend on it."""
    model, tokenizer = lm
    task = load_gen_task(shipped_tasks()["toy_qa_gen"])
    calls = []
    generate = model.generate

    def counted(*args, **kwargs):
        calls.append(kwargs["input_ids"].shape[0])
        return generate(*args, **kwargs)

    model.generate = counted
    try:
        wide = evaluate_generative(model, tokenizer, task, limit=12, max_new_tokens=6)
    finally:
        del model.generate
    assert calls == [12]
    one = evaluate_generative(model, tokenizer, task, limit=12, batch_size=1, max_new_tokens=6)
    assert [s["output"] for s in wide["samples"]] == [s["output"] for s in one["samples"]]


def test_the_default_batch_is_bounded_by_the_kv_cache_of_a_large_model(lm):
    from types import SimpleNamespace

    import torch
    from transformers import LlamaConfig

    model, _ = lm
    assert generation_batch_size(model, 1000, 512) == MAX_GENERATION_ROWS
    assert generation_batch_size(model, 5, 512) == 5
    # Llama 3 8B's shape in bf16: 128 KiB of keys and values per position
    config = LlamaConfig(
        hidden_size=4096, num_attention_heads=32, num_key_value_heads=8, num_hidden_layers=32
    )
    big = SimpleNamespace(
        config=config, parameters=lambda: iter([torch.zeros(1, dtype=torch.bfloat16)])
    )
    per_row = 2 * 32 * 8 * 128 * 2048 * 2
    assert generation_batch_size(big, 1000, 2048) == GENERATION_CACHE_BYTES // per_row == 8
    assert generation_batch_size(big, 1000, 10**7) == 1


def test_the_stop_strings_criterion_is_built_once_per_tokenizer_and_stop_list(lm, monkeypatch):
    """transformers would rebuild it, a loop over the vocabulary, in every generate call."""
    from evals.ml import generative

    model, tokenizer = lm
    task = load_gen_task(shipped_tasks()["toy_qa_gen"])
    assert task.stop
    built = []
    original = generative.StopStringCriteria

    def counted(*args, **kwargs):
        built.append(args)
        return original(*args, **kwargs)

    monkeypatch.setattr(generative, "StopStringCriteria", counted)
    monkeypatch.setattr(generative, "_STOP_CRITERIA", generative.weakref.WeakKeyDictionary())
    for _ in range(2):
        evaluate_generative(model, tokenizer, task, limit=4, batch_size=2, max_new_tokens=4)
    assert len(built) == 1


def test_stop_sequences_end_the_output(tmp_path, lm):
    model, tokenizer = lm
    greedy = load_gen_task(shipped_tasks()["toy_qa_gen"])
    first = evaluate_generative(model, tokenizer, greedy, limit=1, max_new_tokens=8)
    output = first["samples"][0]["output"]
    assert len(output) > 2
    stop = output[2:4]  # the random model's output, cut where this text appears
    path = tmp_path / "t.jsonl"
    path.write_text(
        json.dumps({"config": {"kind": "generative", "chat": True, "stop": [stop]}})
        + "\n"
        + json.dumps({"question": greedy.items[0].prompt, "target": output[: output.index(stop)]})
        + "\n"
    )
    result = evaluate_generative(model, tokenizer, load_gen_task(path), max_new_tokens=8)
    assert result["samples"][0]["output"] == output[: output.index(stop)]
    assert result["exact_match"] == 1.0


def test_sampling_is_reproducible_with_a_seed(lm):
    model, tokenizer = lm
    task = load_gen_task(shipped_tasks()["toy_qa_gen"])
    kwargs = {"limit": 3, "max_new_tokens": 6, "do_sample": True, "temperature": 1.0}
    a = evaluate_generative(model, tokenizer, task, seed=1, **kwargs)
    b = evaluate_generative(model, tokenizer, task, seed=1, **kwargs)
    c = evaluate_generative(model, tokenizer, task, seed=2, **kwargs)
    assert a["samples"] == b["samples"]
    assert a["samples"] != c["samples"]


def test_an_over_long_prompt_keeps_its_end(tmp_path, lm):
    model, tokenizer = lm
    path = tmp_path / "long.jsonl"
    question = "Sort: " + ", ".join(["7"] * 2000)  # far more than the model's 512 positions
    path.write_text(json.dumps({"question": question, "target": "7"}) + "\n")
    result = evaluate_generative(model, tokenizer, load_gen_task(path), max_new_tokens=4)
    assert result["n"] == 1 and isinstance(result["samples"][0]["output"], str)
