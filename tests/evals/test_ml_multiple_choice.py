"""Multiple choice: lm-eval's request construction, acc/acc_norm and stderr, and lm-eval itself."""

import importlib
import json
import math
import sys

import numpy as np
import pytest

from evals.ml import LmEvalNotInstalled, evaluate_mc, load_mc_task, run_lm_eval, shipped_tasks
from evals.ml import multiple_choice as mc_module
from evals.ml.lm import encode_pair, loglikelihood_tokens
from evals.ml.multiple_choice import mc_prompt
from loop.testing import tiny_lm, tiny_model_dir, torch_threads

ITEMS = [
    {"question": "The capital of France is", "choices": ["Paris", "Rome", "Madrid"], "answer": 0},
    {"question": "A spider has", "choices": ["8", "6", "4 legs"], "answer": 0},
    {"question": "Grass is", "choices": ["green", "blue", "a very long colour"], "answer": 0},
    {"question": "Sort: 3, 1, 2 gives", "choices": ["1, 2, 3", "3, 2, 1"], "answer": 0},
    {"question": "The sky is ", "choices": ["blue", "red"], "answer": 1},  # trailing space
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def lm():
    return tiny_lm()


def write_task(path, items, config=None):
    lines = ([{"config": config}] if config else []) + items
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))
    return path


def test_acc_and_acc_norm_on_a_hand_checkable_case(tmp_path, monkeypatch):
    """Log-likelihoods fixed by hand: acc takes the largest, acc_norm the largest per char."""
    items = [
        {"question": "q1", "choices": ["a", "bbbb"], "answer": 0},
        {"question": "q2", "choices": ["a", "bbbb"], "answer": 1},
        {"question": "q3", "choices": ["xx", "y", "zzz"], "answer": 2},
        {"question": "q4", "choices": ["x", "y"], "answer": 0},
    ]
    # q1, q2: -2 vs -4 -> acc picks "a"; per char -2 vs -1 -> acc_norm picks "bbbb"
    # q3: -3, -1, -2.4 -> acc picks "y"; per char -1.5, -1, -0.8 -> acc_norm picks "zzz"
    # q4: a tie -> both pick the first, as np.argmax does
    lls = [-2.0, -4.0, -2.0, -4.0, -3.0, -1.0, -2.4, -5.0, -5.0]
    monkeypatch.setattr(mc_module, "loglikelihood_tokens", lambda *a, **k: lls)
    model, tokenizer = tiny_lm()
    result = evaluate_mc(model, tokenizer, load_mc_task(write_task(tmp_path / "t.jsonl", items)))
    # acc per item: 1, 0, 0, 1 -> 0.5; acc_norm: 0, 1, 1, 1 -> 0.75
    assert result["acc"] == 0.5
    assert result["acc_norm"] == 0.75
    # lm-eval mean_stderr: sqrt(sum((x - mean)^2) / (n - 1)) / sqrt(n)
    assert result["acc_stderr"] == pytest.approx(math.sqrt(4 * 0.25 / 3) / 2)
    assert result["acc_norm_stderr"] == pytest.approx(math.sqrt((0.5625 + 3 * 0.0625) / 3) / 2)
    assert result["n"] == 4


def test_requests_are_tokenised_as_lm_eval_does(lm):
    _, tokenizer = lm
    # the context's trailing space moves into the continuation
    context, continuation = encode_pair(tokenizer, "The sky is ", " blue")
    assert context == tokenizer.encode("The sky is", add_special_tokens=False)
    assert context + continuation == tokenizer.encode("The sky is  blue", add_special_tokens=False)
    # an empty context is the prefix (BOS) token
    context, continuation = encode_pair(tokenizer, "", "blue")
    assert context == [tokenizer.bos_token_id]
    # chat prompts end where the assistant's reply starts, and BOS is not doubled
    task = load_mc_task(shipped_tasks()["facts_mc"])
    prompt = mc_prompt(tokenizer, task, task.items[0].prompt)
    assert prompt == "<|bos|><|user|>What is the capital of France?<|eos|><|assistant|>"
    context, _ = encode_pair(tokenizer, prompt, "Paris")
    assert context.count(tokenizer.bos_token_id) == 1


def _rows_computed(model):
    """A list that collects the [rows, width] of every decoder forward pass, and its remover."""
    shapes = []
    handle = model.model.register_forward_pre_hook(
        lambda module, args, kwargs: shapes.append(tuple(kwargs["input_ids"].shape)),
        with_kwargs=True,
    )
    return shapes, handle.remove


def test_answers_of_one_token_to_one_prompt_share_one_row(lm):
    """lm-eval's one-token continuation cache: requests whose model input is the same token
    sequence are computed once, each reading its own token; results as if scored apart."""
    model, tokenizer = lm
    context = tokenizer("The capital of France is", add_special_tokens=False)["input_ids"]
    answers = [[tokenizer.convert_tokens_to_ids(t)] for t in ("a", "b", "c", "d")]
    answers = [a for a in answers if a[0] is not None and a[0] != tokenizer.unk_token_id]
    longer = [answers[0][0], answers[1][0]]  # its input is context + one token: a row of its own
    requests = [(context, answer) for answer in answers] + [(context, longer)]
    loglikelihood_tokens(model, requests[:1], max_length=512)  # the model's one-off probe
    shapes, remove = _rows_computed(model)
    try:
        together = loglikelihood_tokens(model, requests, max_length=512)
    finally:
        remove()
    assert sum(rows for rows, _ in shapes) == 2, shapes
    apart = [loglikelihood_tokens(model, [request], max_length=512)[0] for request in requests]
    assert together == pytest.approx(apart, rel=1e-6)


def test_without_a_batch_size_a_cpu_pass_holds_up_to_64_short_rows(lm):
    model, tokenizer = lm
    task = load_mc_task(shipped_tasks()["arithmetic_mc"])
    requests = [
        encode_pair(tokenizer, mc_prompt(tokenizer, task, item.prompt), choice)
        for item in task.items[:40]
        for choice in item.choices
    ]
    shapes, remove = _rows_computed(model)
    try:
        wide = loglikelihood_tokens(model, requests, max_length=512)
    finally:
        remove()
    assert max(rows for rows, _ in shapes) > 8
    assert all(rows <= 64 and (rows == 1 or rows * width <= 512) for rows, width in shapes)
    narrow = loglikelihood_tokens(model, requests, max_length=512, batch_size=8)
    assert wide == pytest.approx(narrow, rel=1e-6)


def test_loglikelihoods_do_not_depend_on_batch_size(lm):
    model, tokenizer = lm
    task = load_mc_task(shipped_tasks()["arithmetic_mc"])
    requests = [
        encode_pair(tokenizer, mc_prompt(tokenizer, task, item.prompt), choice)
        for item in task.items[:4]
        for choice in item.choices
    ]
    by_batch = [
        loglikelihood_tokens(model, requests, max_length=512, batch_size=size) for size in (1, 3, 8)
    ]
    assert by_batch[1] == pytest.approx(by_batch[0], rel=1e-6)
    assert by_batch[2] == pytest.approx(by_batch[0], rel=1e-6)
    results = [evaluate_mc(model, tokenizer, task, limit=4, batch_size=s) for s in (1, 8)]
    assert results[0] == results[1]


def test_every_shipped_mc_task_scores(lm):
    model, tokenizer = lm
    for name in ("arithmetic_mc", "word_order_mc", "facts_mc"):
        result = evaluate_mc(model, tokenizer, load_mc_task(shipped_tasks()[name]), limit=8)
        assert result["n"] == 8
        assert 0 <= result["acc"] <= 1 and 0 <= result["acc_norm"] <= 1
        assert result["acc_stderr"] is not None


def test_run_lm_eval_says_clearly_when_lm_eval_is_missing(monkeypatch):
    monkeypatch.setitem(sys.modules, "lm_eval", None)  # import lm_eval -> ImportError
    with pytest.raises(LmEvalNotInstalled, match="pip install lm-eval"):
        run_lm_eval("var/models/tiny", "wikitext")


def test_scores_equal_lm_evaluation_harness_on_a_local_task(tmp_path, lm):
    """The same items through lm-eval's own task machinery (simple_evaluate, model="hf", the
    tiny checkpoint by path), offline: same per-choice log-likelihoods, same metrics."""
    importlib.import_module("lm_eval")
    model, tokenizer = lm
    data = write_task(tmp_path / "items.jsonl", ITEMS)
    (tmp_path / "toy.yaml").write_text(
        "task: veredicto_toy_mc\n"
        "dataset_path: json\n"
        f"dataset_kwargs:\n  data_files:\n    test: {data}\n"
        "test_split: test\n"
        "output_type: multiple_choice\n"
        "doc_to_text: question\ndoc_to_choice: choices\ndoc_to_target: answer\n"
        "metric_list:\n"
        "  - metric: acc\n    aggregation: mean\n    higher_is_better: true\n"
        "  - metric: acc_norm\n    aggregation: mean\n    higher_is_better: true\n"
    )
    out = run_lm_eval(
        tiny_model_dir(), "veredicto_toy_mc", include_path=tmp_path, batch_size=2, log_samples=True
    )
    theirs = out["results"]["veredicto_toy_mc"]
    ours = evaluate_mc(model, tokenizer, load_mc_task(write_task(tmp_path / "ours.jsonl", ITEMS)))
    for metric in ("acc", "acc_stderr", "acc_norm", "acc_norm_stderr"):
        assert ours[metric] == pytest.approx(theirs[f"{metric},none"], rel=1e-9), metric
    samples = sorted(out["samples"]["veredicto_toy_mc"], key=lambda s: s["doc_id"])
    for item, sample in zip(ITEMS, samples, strict=True):
        requests = [encode_pair(tokenizer, item["question"], f" {c}") for c in item["choices"]]
        lls = loglikelihood_tokens(model, requests, max_length=512)
        assert np.allclose(lls, [resp[0][0] for resp in sample["resps"]], rtol=1e-5)
