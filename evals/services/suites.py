"""What each suite computes: load the data, load the model(s), call evals.ml, return plain rows.

    evaluate(run) -> Outcome(metrics, samples, summary)

Runs on a GPU worker (evals.tasks.run_eval → services.run_eval). The data is read and validated
before any model is loaded, so a bad task file fails in a second, not after minutes of loading.
Errors meant for the person who launched the run are `EvalInputError`s, whose message becomes
the run's `error` as it stands.
"""

from __future__ import annotations

import gc
import math
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from evals.ml.stats import Z_95  # plain math: no torch in the web process
from evals.ml.tasks import HELDOUT_PREFERENCES, HELDOUT_PROSE, TASKS_DIR, shipped_tasks
from evals.models import EvalRun, Suite
from modeling.models import Checkpoint

# Task names that are not shipped task files.
HELDOUT_PROSE_TASK = HELDOUT_PROSE.stem
HELDOUT_PREFERENCES_TASK = HELDOUT_PREFERENCES.stem
SNAPSHOT_TEST_TASK = "snapshot-test"
DEFAULT_BATCH_SIZE = 8
DEFAULT_MAX_NEW_TOKENS = 32
DEFAULT_WIN_RATE_PROMPTS = 100
# Prompts with candidate replies and gold answers, for the shipped pairs' best-of-n diagnostic.
BEST_OF_N_ARITHMETIC = TASKS_DIR / "best_of_n" / "arithmetic.jsonl"


class EvalInputError(ValueError):
    """Something the run was given cannot be evaluated (a missing checkpoint directory, a bad task
    file, an empty test split). The message is shown to people as it stands."""


@dataclass(frozen=True)
class Metric:
    name: str
    value: float
    stderr: float | None = None
    low: float | None = None
    high: float | None = None
    n: int | None = None


@dataclass
class Outcome:
    metrics: list[Metric]
    samples: list[dict[str, Any]] = field(default_factory=list)
    summary: dict[str, Any] = field(default_factory=dict)


def mean_metric(name: str, value: float, stderr: float | None, n: int) -> Metric:
    """A proportion with lm-eval's standard error and the normal 95% interval around it, clipped
    to [0, 1] (the interval lm-eval's tables imply: value ± 1.96 stderr)."""
    if stderr is None:
        return Metric(name, value, n=n)
    return Metric(
        name,
        value,
        stderr=stderr,
        low=max(0.0, value - Z_95 * stderr),
        high=min(1.0, value + Z_95 * stderr),
        n=n,
    )


# --- inputs ------------------------------------------------------------------------------------


def task_file(run: EvalRun, default: Path | None = None) -> Path:
    """The file a run reads: params.task_path, else the shipped file named by the task."""
    if run.params.get("task_path"):
        path = Path(run.params["task_path"])
    elif default is not None:
        path = default
    else:
        path = shipped_tasks().get(run.task)
        if path is None:
            raise EvalInputError(f"No shipped task is called {run.task!r}.")
    if not path.is_file():
        raise EvalInputError(f"Task file {path} does not exist on {socket.gethostname()}.")
    return path


def _read(loader: Callable[[Path], Any], path: Path) -> Any:
    """A loader's ValueError (it names the file and line) becomes the run's error."""
    try:
        return loader(path)
    except (ValueError, OSError, UnicodeDecodeError) as exc:
        raise EvalInputError(f"Bad task file: {exc}") from exc


def _limit(run: EvalRun) -> int | None:
    return run.params.get("limit")


def _batch_size(run: EvalRun) -> int:
    return int(run.params.get("batch_size") or DEFAULT_BATCH_SIZE)


def _batch_size_or_automatic(run: EvalRun) -> int | None:
    """The run's batch size, or None for the evaluation's own default (multiple choice: 64 short
    rows a CPU pass; generation: as wide as the KV cache allows)."""
    return run.params.get("batch_size") or None


# --- models ------------------------------------------------------------------------------------


def _require_weights(checkpoint: Checkpoint) -> None:
    path = checkpoint.directory()
    if path is not None and not path.is_dir():
        raise EvalInputError(
            f"Checkpoint {checkpoint.name}: directory {path} does not exist on "
            f"{socket.gethostname()}."
        )


def load_policy(checkpoint: Checkpoint):
    """(model, tokenizer) in eval mode, bf16 on a GPU; the tokenizer from where the checkpoint
    keeps it (a trained checkpoint saved without one uses its parent's)."""
    from evals.ml.lm import eval_device_dtype
    from modeling.ml import load_causal_lm, load_tokenizer

    _require_weights(checkpoint)
    device, dtype = eval_device_dtype()
    model = load_causal_lm(checkpoint.load_path(), dtype=dtype, device=device).eval()
    return model, load_tokenizer(checkpoint.tokenizer_load_path())


def load_reward(checkpoint: Checkpoint):
    import torch

    from evals.ml.lm import eval_device_dtype
    from modeling.ml import load_reward_model, load_tokenizer

    _require_weights(checkpoint)
    device, dtype = eval_device_dtype()
    # A model registered as a reward model without a trained score head gets a fresh one on
    # load; seeding makes that head, and so the run, repeatable.
    torch.manual_seed(0)
    model = load_reward_model(checkpoint.load_path(), dtype=dtype, device=device).eval()
    return model, load_tokenizer(checkpoint.tokenizer_load_path())


def free_memory() -> None:
    """Give back accelerator memory of models just dropped, before the run loads the next."""
    import torch

    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


# --- the suites ----------------------------------------------------------------------------------


def _perplexity(run: EvalRun) -> Outcome:
    """lm-eval's rolling word/byte perplexity and bits per byte, and the Hugging Face sliding-
    window token perplexity with params.stride (default: half the model's length, the guide's
    example: each scored token sees at least half a window of context)."""
    from evals.ml import load_text_set
    from evals.ml.lm import resolve_max_length

    # From the submodule: once evals.ml.perplexity is imported, the package attribute of that
    # name is the module, so `from evals.ml import perplexity` would give the module.
    from evals.ml.perplexity import perplexity, strided_perplexity

    texts = _read(load_text_set, task_file(run, default=HELDOUT_PROSE))[: _limit(run)]
    if not texts:
        raise EvalInputError("The text set is empty.")
    model, tokenizer = load_policy(run.checkpoint)
    result = perplexity(model, tokenizer, texts, batch_size=_batch_size(run))
    max_length = resolve_max_length(model, tokenizer)
    stride = run.params.get("stride") or max(1, max_length // 2)
    if stride > max_length:
        raise EvalInputError(f"stride {stride} is longer than the model's {max_length} tokens.")
    try:
        strided = strided_perplexity(
            model, tokenizer, texts, stride=stride, batch_size=_batch_size(run)
        )
    except ValueError as exc:  # a text set of fewer than two tokens
        raise EvalInputError(str(exc)) from exc
    n = result["n"]
    metrics = [
        Metric(name, result[name], n=n)
        for name in ("word_perplexity", "byte_perplexity", "bits_per_byte")
    ]
    metrics.append(Metric("token_perplexity", strided["token_perplexity"], n=n))
    summary = {key: result[key] for key in ("loglikelihood", "words", "bytes", "tokens", "n")}
    summary.update(stride=stride, strided_tokens=strided["tokens"])
    return Outcome(metrics, summary=summary)


def _multiple_choice(run: EvalRun) -> Outcome:
    from evals.ml import evaluate_mc, load_mc_task

    task = _read(load_mc_task, task_file(run))
    model, tokenizer = load_policy(run.checkpoint)
    result = evaluate_mc(
        model, tokenizer, task, batch_size=_batch_size_or_automatic(run), limit=_limit(run)
    )
    n = result["n"]
    metrics = [
        mean_metric("acc", result["acc"], result["acc_stderr"], n),
        mean_metric("acc_norm", result["acc_norm"], result["acc_norm_stderr"], n),
    ]
    return Outcome(metrics, summary={"n": n})


def _generate(run: EvalRun, checkpoint: Checkpoint, task, limit: int | None) -> dict:
    """The task's answers from `checkpoint`, on vLLM where the worker has it and a GPU (else
    transformers), with the same sampling parameters; "engine" says which ran."""
    from evals.ml import evaluate_generative
    from modeling.ml import sampling_engine

    options = dict(
        max_new_tokens=int(run.params.get("max_new_tokens") or DEFAULT_MAX_NEW_TOKENS),
        limit=limit,
        # Greedy, as lm-eval's generate_until, unless the run asks for a temperature.
        do_sample="temperature" in run.params,
        temperature=run.params.get("temperature", 1.0),
        top_p=run.params.get("top_p", 1.0),
        seed=run.params.get("seed", 0),
    )
    if sampling_engine() == "vllm":
        return {**_generate_vllm(checkpoint, task, options), "engine": "vllm"}
    model, tokenizer = load_policy(checkpoint)
    try:
        result = evaluate_generative(
            model, tokenizer, task, batch_size=_batch_size_or_automatic(run), **options
        )
    finally:
        del model
        free_memory()
    return {**result, "engine": "hf"}


def _generate_vllm(checkpoint: Checkpoint, task, options: dict) -> dict:
    import tempfile

    from evals.ml import evaluate_generative_vllm
    from modeling.ml import load_causal_lm, load_tokenizer
    from modeling.ml.loading import is_lora_adapter

    _require_weights(checkpoint)
    tokenizer = load_tokenizer(checkpoint.tokenizer_load_path())
    with tempfile.TemporaryDirectory(prefix="vllm-merged-") as merged:
        path = str(checkpoint.load_path())
        if is_lora_adapter(path):  # vLLM gets the merged model, as transformers does
            load_causal_lm(path).save_pretrained(merged)
            tokenizer.save_pretrained(merged)
            path = merged
        return evaluate_generative_vllm(path, tokenizer, task, **options)


def _generative(run: EvalRun) -> Outcome:
    from evals.ml import load_gen_task

    task = _read(load_gen_task, task_file(run))
    result = _generate(run, run.checkpoint, task, _limit(run))
    n = result["n"]
    samples = [
        {
            "position": position,
            "prompt": item.prompt,  # the question as written, not the chat-templated input
            "output": sample["output"],
            "target": sample["target"],
            "correct": sample["correct"],
        }
        for position, (item, sample) in enumerate(zip(task.items, result["samples"], strict=False))
    ]
    metric = mean_metric(task.scorer, result[task.scorer], result[f"{task.scorer}_stderr"], n)
    summary = {"n": n, "scorer": task.scorer, "engine": result["engine"]}
    return Outcome([metric], samples=samples, summary=summary)


def _reward_accuracy(run: EvalRun) -> Outcome:
    """Accuracy, then the diagnostics of evals/ml/reward_diagnostics.py on the same scores:
    accuracy by agreement and strength (snapshot rows carry them), Brier score, ECE, the
    reward-length correlation and, on the shipped pairs (or with params.best_of_n_path),
    best-of-n selection on prompts with candidates and gold answers."""
    from evals.ml import (
        accuracy_of_scores,
        load_best_of_n,
        load_preference_pairs,
        pair_scores,
        reward_model_diagnostics,
    )

    if run.snapshot_id is not None:
        path = run.snapshot.path() / "test.jsonl"
        if not path.is_file():
            raise EvalInputError(f"Snapshot {run.snapshot.name!r} has no test.jsonl on this host.")
    else:
        path = task_file(run, default=HELDOUT_PREFERENCES)
    pairs = _read(load_preference_pairs, path)[: _limit(run)]
    if not pairs:
        raise EvalInputError(f"{path.name} holds no preference pairs to score.")
    best_of_n_path = run.params.get("best_of_n_path")
    if best_of_n_path is None and run.snapshot_id is None and not run.params.get("task_path"):
        best_of_n_path = BEST_OF_N_ARITHMETIC
    best_of_n_items = None
    if best_of_n_path is not None:
        if not Path(best_of_n_path).is_file():
            raise EvalInputError(f"Best-of-n file {best_of_n_path} does not exist.")
        best_of_n_items = _read(load_best_of_n, Path(best_of_n_path))[: _limit(run)]
    model, tokenizer = load_reward(run.checkpoint)
    batch_size = _batch_size(run)
    chosen, rejected = pair_scores(model, tokenizer, pairs, batch_size=batch_size)
    result = accuracy_of_scores(chosen, rejected)
    metrics = [mean_metric("accuracy", result["accuracy"], result["stderr"], result["n"])]
    diagnostics = reward_model_diagnostics(
        model,
        tokenizer,
        pairs,
        chosen,
        rejected,
        best_of_n_items=best_of_n_items,
        batch_size=batch_size,
    )
    metrics += [Metric(name, value, n=n) for name, (value, n) in diagnostics.items()]
    return Outcome(metrics, summary={"n": result["n"]})


def _win_rate(run: EvalRun) -> Outcome:
    from evals.ml import load_gen_task, reward_win_rate

    task = _read(load_gen_task, task_file(run))
    limit = _limit(run) or DEFAULT_WIN_RATE_PROMPTS
    items = task.items[:limit]
    _require_weights(run.reference)
    _require_weights(run.judge)
    policy_result = _generate(run, run.checkpoint, task, limit)
    policy = policy_result["samples"]
    reference = _generate(run, run.reference, task, limit)["samples"]
    judge, tokenizer = load_reward(run.judge)
    result = reward_win_rate(
        judge,
        tokenizer,
        [s["output"] for s in policy],
        [s["output"] for s in reference],
        [item.prompt for item in items],
        batch_size=_batch_size(run),
    )
    samples = [
        {
            "position": position,
            "prompt": item.prompt,
            "output": mine["output"],
            "reference_output": theirs["output"],
            "target": item.target,
        }
        for position, (item, mine, theirs) in enumerate(zip(items, policy, reference, strict=True))
    ]
    metric = Metric(
        "win_rate", result["win_rate"], low=result["low"], high=result["high"], n=result["n"]
    )
    summary = {key: result[key] for key in ("wins", "ties", "losses", "n")}
    summary["engine"] = policy_result["engine"]
    return Outcome([metric], samples=samples, summary=summary)


def _lm_eval(run: EvalRun) -> Outcome:
    from evals.ml import LmEvalNotInstalled, run_lm_eval

    _require_weights(run.checkpoint)
    try:
        results = run_lm_eval(
            run.checkpoint.load_path(),
            run.task,
            include_path=run.params.get("include_path") or None,
            batch_size=_batch_size(run),
            limit=_limit(run),
            num_fewshot=run.params.get("num_fewshot"),
        )
    except LmEvalNotInstalled as exc:
        raise EvalInputError(str(exc)) from exc
    if results is None:  # a rank other than 0 of a data-parallel run: rank 0 has the numbers
        return Outcome([])
    metrics = lm_eval_metrics(results, run.task)
    if not metrics:
        raise EvalInputError(f"lm-eval reported no numeric metric for {run.task!r}.")
    return Outcome(metrics, summary={"versions": results.get("versions", {})})


# Numbers lm-eval puts among a task's results that are counts, not scores.
LM_EVAL_NOT_METRICS = {"sample_len", "sample_count"}


def lm_eval_metrics(results: dict, task: str) -> list[Metric]:
    """lm-eval's results dict → metrics. Keys are "metric,filter" ("acc,none") with the standard
    error under "metric_stderr,filter"; subtasks of a group are prefixed with their name."""
    metrics = []
    counts = results.get("n-samples", {})
    for subtask, values in sorted(results.get("results", {}).items()):
        n = counts.get(subtask, {}).get("effective")
        for key, value in sorted(values.items()):
            name, _, filter_name = key.partition(",")
            if "_stderr" in name or name in LM_EVAL_NOT_METRICS or not _is_number(value):
                continue
            stderr = values.get(f"{name}_stderr,{filter_name}")
            stderr = float(stderr) if _is_number(stderr) else None
            label = name if filter_name in ("", "none") else f"{name},{filter_name}"
            if subtask != task:
                label = f"{subtask}/{label}"
            low = high = None
            if stderr is not None:
                low, high = value - Z_95 * stderr, value + Z_95 * stderr
            metrics.append(Metric(label[:100], float(value), stderr, low, high, n))
    return metrics


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool) and math.isfinite(value)


EVALUATORS: dict[str, Callable[[EvalRun], Outcome]] = {
    Suite.PERPLEXITY: _perplexity,
    Suite.MULTIPLE_CHOICE: _multiple_choice,
    Suite.GENERATIVE: _generative,
    Suite.REWARD_ACCURACY: _reward_accuracy,
    Suite.WIN_RATE: _win_rate,
    Suite.LM_EVAL: _lm_eval,
}


def evaluate(run: EvalRun) -> Outcome:
    return EVALUATORS[run.suite](run)
