"""Generative benchmarks: generate an answer per prompt, cut it at a stop sequence, score it.

    from evals.ml import evaluate_generative, load_gen_task
    evaluate_generative(model, tokenizer, load_gen_task(path), max_new_tokens=16)

Prompts are sorted by length (longest first, as lm-eval's generate_until does) and generated
in left-padded batches; generation ends at EOS, at a stop sequence or after max_new_tokens. The
output is the new text up to (not including) the first stop sequence. Scorers:

    exact_match  output.strip() == target.strip()
    contains     target.strip() occurs in the output
    regex        the whole stripped output matches the target as a regular expression
"""

from __future__ import annotations

import re
import weakref
from types import SimpleNamespace

import torch
from transformers import (
    PreTrainedModel,
    PreTrainedTokenizerBase,
    StoppingCriteriaList,
    StopStringCriteria,
    set_seed,
)

from evals.ml.lm import resolve_max_length, tok_encode
from evals.ml.stats import mean_stderr
from evals.ml.tasks import GenTask
from modeling.ml.generation import stop_token_ids, until_stop

__all__ = [
    "cut_at_stop",
    "evaluate_generative",
    "evaluate_generative_vllm",
    "generation_batch_size",
    "score_output",
]

# Prompts generated at once when the caller names no batch size. A decode step of a small model
# costs nearly the same for 8 rows as for 64 (the tiny model: 2.4 ms against 10 ms), so wide
# batches pay; lm-eval's batch_size="auto" stops at 64 too (HFLM's max_batch_size). For a large
# model the KV cache bounds it: GENERATION_CACHE_BYTES at most, at the longest prompt.
MAX_GENERATION_ROWS = 64
GENERATION_CACHE_BYTES = 2 * 2**30


def score_output(scorer: str, output: str, target: str) -> bool:
    if scorer == "exact_match":
        return output.strip() == target.strip()
    if scorer == "contains":
        return target.strip() in output
    if scorer == "regex":
        return re.fullmatch(target, output.strip()) is not None
    raise ValueError(f"Unknown scorer {scorer!r}")


def cut_at_stop(text: str, stop: list[str]) -> str:
    """The text before the earliest stop sequence (lm-eval's generate_until `until`)."""
    cut = len(text)
    for sequence in stop:
        index = text.find(sequence)
        if index != -1:
            cut = min(cut, index)
    return text[:cut]


@torch.inference_mode()
def evaluate_generative(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    task: GenTask,
    *,
    batch_size: int | None = None,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
) -> dict:
    """Greedy (default) or sampled answers to the task's prompts, scored by task.scorer.
    batch_size None: generation_batch_size's.

    Returns {task.scorer: mean, f"{task.scorer}_stderr": lm-eval mean_stderr, "n",
    "samples": [{"prompt", "output", "target", "correct"}]} in the task's item order. Sampling
    is seeded (transformers.set_seed) so a run can be repeated with the same batch_size.
    """
    if (batch_size is not None and batch_size < 1) or max_new_tokens < 1:
        raise ValueError("batch_size and max_new_tokens must be at least 1")
    items, prompts, encoded = _prompts(model, tokenizer, task, limit, max_new_tokens)
    if batch_size is None:
        longest = max(len(ids) for ids in encoded) + max_new_tokens
        batch_size = generation_batch_size(model, len(items), longest)
    pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    # EOS and the end-of-turn ids the model's generation_config adds (Gemma's <end_of_turn>):
    # without them a chat model's answer runs on past its end.
    stops = stop_token_ids(model, tokenizer)
    stopping = StoppingCriteriaList([_stop_strings(tokenizer, task.stop)]) if task.stop else None

    model.eval()
    set_seed(seed)
    outputs = [""] * len(items)
    order = sorted(range(len(items)), key=lambda i: -len(encoded[i]))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        width = max(len(encoded[i]) for i in chunk)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, i in enumerate(chunk):  # left padding: every prompt ends where output starts
            input_ids[row, width - len(encoded[i]) :] = torch.tensor(encoded[i])
            attention_mask[row, width - len(encoded[i]) :] = 1
        generated = model.generate(
            input_ids=input_ids.to(model.device),
            attention_mask=attention_mask.to(model.device),
            max_new_tokens=max_new_tokens,
            do_sample=do_sample,
            temperature=temperature if do_sample else None,
            top_p=top_p if do_sample else None,
            top_k=None,  # transformers' default top_k=50 would silently narrow sampling
            stopping_criteria=stopping,
            tokenizer=tokenizer if task.stop else None,  # for stop_strings a config may set
            eos_token_id=stops or None,
            pad_token_id=pad_id,
        )
        for row, i in enumerate(chunk):
            new = until_stop(generated[row, width:].tolist(), stops)
            text = tokenizer.decode(new, skip_special_tokens=True)
            outputs[i] = cut_at_stop(text, task.stop)
    return _scored(task, items, prompts, outputs)


# The stop strings' criterion per tokenizer and stop list. generate(stop_strings=...) builds it
# in every call, and transformers' cache of its vocabulary tables is keyed on the order of
# tokenizer.get_vocab(), which a fast tokenizer returns differently each time, so it never
# hits: a Python loop over the vocabulary, 4 ms a call with the tiny model's 1,771 tokens. The
# criterion keeps no state between calls (it reads the ids it is given), so one serves all.
_STOP_CRITERIA: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _stop_strings(tokenizer: PreTrainedTokenizerBase, stop: list[str]) -> StopStringCriteria:
    built = _STOP_CRITERIA.setdefault(tokenizer, {})
    key = tuple(stop)
    if key not in built:
        built[key] = StopStringCriteria(tokenizer, stop)
    return built[key]


def generation_batch_size(model: PreTrainedModel, prompts: int, positions: int) -> int:
    """How many prompts to generate at once: all of them up to MAX_GENERATION_ROWS, fewer where
    their KV cache (keys and values of every layer, `positions` long, in the model's dtype)
    would pass GENERATION_CACHE_BYTES; at least 1."""
    config = model.config.get_text_config()
    try:
        heads = config.num_attention_heads
        kv_heads = getattr(config, "num_key_value_heads", None) or heads
        head_dim = getattr(config, "head_dim", None) or config.hidden_size // heads
        layers = config.num_hidden_layers
    except AttributeError:  # a config without the usual names: as many as the cap allows
        per_row = 0
    else:
        itemsize = next(model.parameters()).element_size()
        per_row = 2 * layers * kv_heads * head_dim * positions * itemsize
    fits = GENERATION_CACHE_BYTES // per_row if per_row else MAX_GENERATION_ROWS
    return max(1, min(MAX_GENERATION_ROWS, prompts, fits))


def evaluate_generative_vllm(
    model_path: str,
    tokenizer: PreTrainedTokenizerBase,
    task: GenTask,
    *,
    max_new_tokens: int = 32,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
    seed: int = 0,
    limit: int | None = None,
) -> dict:
    """evaluate_generative on vLLM (GPU hosts with vLLM installed): the same prompts, token ids,
    truncation, stops, sampling parameters (modeling.ml.generation.vllm_sampling_params) and
    scoring. model_path is a full model (merge an adapter first)."""
    from transformers import AutoConfig, GenerationConfig
    from vllm import LLM

    from modeling.ml.generation import vllm_sampling_params

    if max_new_tokens < 1:
        raise ValueError("max_new_tokens must be at least 1")
    shape = SimpleNamespace(config=AutoConfig.from_pretrained(model_path))
    items, prompts, encoded = _prompts(shape, tokenizer, task, limit, max_new_tokens)
    try:
        shape.generation_config = GenerationConfig.from_pretrained(model_path)
    except OSError:
        shape.generation_config = None
    params = vllm_sampling_params(
        n=1,
        temperature=temperature if do_sample else 0.0,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        seed=seed,
        stop_token_ids=stop_token_ids(shape, tokenizer),
        stop=task.stop,
    )
    llm = LLM(model=model_path, dtype="auto", seed=seed)
    generated = llm.generate([{"prompt_token_ids": ids} for ids in encoded], params)
    # vLLM already cut at the stop strings; cut_at_stop keeps the rule in one place.
    outputs = [cut_at_stop(output.outputs[0].text, task.stop) for output in generated]
    return _scored(task, items, prompts, outputs)


def _prompts(model, tokenizer, task: GenTask, limit: int | None, max_new_tokens: int):
    """The items, their prompt texts and token ids, over-long prompts cut from the start."""
    items = task.items[:limit] if limit is not None else task.items
    if not items:
        raise ValueError("No items to evaluate")
    if task.chat:
        prompts = [
            tokenizer.apply_chat_template(
                [{"role": "user", "content": item.prompt}],
                add_generation_prompt=True,
                tokenize=False,
            )
            for item in items
        ]
    else:
        prompts = [item.prompt for item in items]
    # Over-long prompts keep their end, leaving room for the answer (lm-eval's generate_until
    # left-truncates to max_length - max_gen_toks the same way).
    room = max(1, resolve_max_length(model, tokenizer) - max_new_tokens)
    encoded = [tok_encode(tokenizer, prompt)[-room:] for prompt in prompts]
    return items, prompts, encoded


def _scored(task: GenTask, items, prompts: list[str], outputs: list[str]) -> dict:
    samples, correct = [], []
    for item, prompt, output in zip(items, prompts, outputs, strict=True):
        ok = score_output(task.scorer, output, item.target)
        correct.append(1.0 if ok else 0.0)
        samples.append({"prompt": prompt, "output": output, "target": item.target, "correct": ok})
    return {
        task.scorer: sum(correct) / len(correct),
        f"{task.scorer}_stderr": mean_stderr(correct),
        "n": len(items),
        "samples": samples,
    }
