"""Perplexity of a causal LM on held-out texts: lm-eval's rolling windows and HF's sliding window.

    from evals.ml.perplexity import perplexity, strided_perplexity
    perplexity(model, tokenizer, texts)          # word/byte perplexity, bits per byte
    strided_perplexity(model, tokenizer, texts, stride=256)   # token perplexity

The definitions are spelled out in PERPLEXITY_DEFINITION and STRIDED_PERPLEXITY_DEFINITION
(evals/ml/definitions.py), which the dashboard shows as tooltips.
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterator, Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evals.ml.definitions import PERPLEXITY_DEFINITION, STRIDED_PERPLEXITY_DEFINITION
from evals.ml.lm import loglikelihood_tokens, prefix_token_id, resolve_max_length

__all__ = [
    "PERPLEXITY_DEFINITION",
    "STRIDED_PERPLEXITY_DEFINITION",
    "get_rolling_token_windows",
    "make_disjoint_window",
    "perplexity",
    "rolling_loglikelihood",
    "strided_perplexity",
]


def get_rolling_token_windows(
    token_list: Sequence[int], prefix_token: int, max_seq_len: int, context_len: int
) -> Iterator[tuple[list[int], list[int]]]:
    """lm_eval.utils.get_rolling_token_windows, same arguments and output.

    Yields (input tokens, predicted tokens); score the last len(predicted) positions of the
    input's logits. The first window is [prefix_token] + tokens and predicts every token of it;
    later windows predict up to max_seq_len - context_len + 1 new tokens each, and the last one
    reaches back to keep max_seq_len tokens of input.
    """
    if not 1 <= context_len <= max_seq_len:
        raise ValueError("context_len must be between 1 and max_seq_len")
    if not token_list:
        return
    pred_len = max_seq_len - context_len + 1
    first_seq_len = min(max_seq_len, len(token_list))
    yield [prefix_token, *token_list[: first_seq_len - 1]], list(token_list[:first_seq_len])
    predicted = first_seq_len
    while predicted < len(token_list):
        window_pred_len = min(len(token_list) - predicted, pred_len)
        window_end = predicted + window_pred_len
        yield (
            list(token_list[window_end - max_seq_len - 1 : window_end - 1]),
            list(token_list[window_end - window_pred_len : window_end]),
        )
        predicted += window_pred_len


def make_disjoint_window(pair: tuple[list[int], list[int]]) -> tuple[list[int], list[int]]:
    """lm_eval.utils.make_disjoint_window: drop from the context what the continuation repeats."""
    a, b = pair
    return a[: len(a) - (len(b) - 1)], b


def rolling_loglikelihood(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> list[float]:
    """Total log-likelihood (natural log) of each text, lm-eval's loglikelihood_rolling.

    Windows as in HFLM.loglikelihood_rolling: get_rolling_token_windows(tokens, prefix_token_id,
    max_length, context_len=1) made disjoint, every token of the text scored once. Texts are
    tokenized without special tokens (the prefix token stands in for BOS). max_length defaults
    to lm-eval's resolution (config n_positions / max_position_embeddings / n_ctx, then the
    tokenizer). All windows of all texts are sorted by length and batched together. An empty
    text has log-likelihood 0.

    Identical to lm-eval 0.4.13 for tokenizers that add no special tokens by themselves (ours;
    GPT-2, Pythia). For those that prepend BOS (Llama 2/3, Mistral), HFLM.tok_encode keeps that
    BOS in the text's tokens, so lm-eval also scores a BOS after the prefix BOS; this does not.
    """
    return [ll for ll, _ in _rolling(model, tokenizer, texts, batch_size, max_length)]


def perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    batch_size: int = 8,
    max_length: int | None = None,
) -> dict:
    """Word perplexity, byte perplexity and bits per byte of a text set, as lm-eval reports them.

    Aggregation follows lm_eval/api/metrics.py over per-text (loglikelihood, count) pairs:
    weighted_perplexity = exp(-sum(ll) / sum(words)), byte_perplexity = exp(-sum(ll) /
    sum(bytes)), bits_per_byte = -sum(ll) / sum(bytes) / ln 2, where words =
    len(re.split(r"\\s+", text)) (lm-eval's wikitext task) and bytes = len(text.encode()).
    See PERPLEXITY_DEFINITION. "tokens" is the number of scored tokens.
    """
    if not texts:
        raise ValueError("perplexity needs at least one text")
    scored = _rolling(model, tokenizer, texts, batch_size, max_length)
    loglikelihood = math.fsum(ll for ll, _ in scored)
    words = sum(len(re.split(r"\s+", text)) for text in texts)
    n_bytes = sum(len(text.encode("utf-8")) for text in texts)
    if n_bytes == 0:
        raise ValueError("perplexity needs some text: every text is empty")
    return {
        "word_perplexity": math.exp(-loglikelihood / words),
        "byte_perplexity": math.exp(-loglikelihood / n_bytes),
        "bits_per_byte": -loglikelihood / n_bytes / math.log(2),
        "loglikelihood": loglikelihood,
        "words": words,
        "bytes": n_bytes,
        "tokens": sum(n for _, n in scored),
        "n": len(texts),
    }


def _rolling(model, tokenizer, texts, batch_size, max_length) -> list[tuple[float, int]]:
    """(log-likelihood, scored tokens) per text."""
    max_length = max_length or resolve_max_length(model, tokenizer)
    prefix = prefix_token_id(tokenizer)
    encoded = (
        tokenizer(list(texts), add_special_tokens=False, verbose=False)["input_ids"]
        if texts
        else []
    )
    requests, owner = [], []
    for index, tokens in enumerate(encoded):
        for window in get_rolling_token_windows(tokens, prefix, max_length, context_len=1):
            requests.append(make_disjoint_window(window))
            owner.append(index)
    totals = [0.0] * len(encoded)
    for index, ll in zip(
        owner,
        loglikelihood_tokens(model, requests, max_length=max_length, batch_size=batch_size),
        strict=True,
    ):
        totals[index] += ll
    return [(total, len(tokens)) for total, tokens in zip(totals, encoded, strict=True)]


def strided_perplexity(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    *,
    stride: int = 512,
    max_length: int | None = None,
    batch_size: int = 8,
) -> dict:
    """Token perplexity by the Hugging Face sliding-window method ("Perplexity of fixed-length
    models", transformers docs): see STRIDED_PERPLEXITY_DEFINITION.

    As in the guide, the texts are joined with "\\n\\n" into one stream (tokenized without
    special tokens) and windows start at 0, stride, 2 * stride, ... each ending max_length
    tokens later (or at the end of the stream); a window scores only the tokens after the
    previous window's end; a window's first token has no context in that window and is never
    scored there (the guide's label shift), so the stream's first token, and with
    stride == max_length every window's first token, go unscored. Each scored token's
    log-likelihood is summed once, and "tokens" counts exactly those: the guide's
    `num_valid_tokens - batch_size` weighting is exact only when stride == max_length and
    undercounts each later window by one token otherwise.
    Returns {"token_perplexity", "tokens", "loglikelihood"}.
    """
    max_length = max_length or resolve_max_length(model, tokenizer)
    if not 1 <= stride <= max_length:
        raise ValueError(f"stride must be between 1 and max_length ({max_length})")
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False, verbose=False)["input_ids"]
    if len(ids) < 2:
        raise ValueError("strided_perplexity needs a text of at least two tokens")

    # (begin, end, first scored position); position p is predicted from ids[begin:p].
    windows = []
    prev_end = 0
    for begin in range(0, len(ids), stride):
        end = min(begin + max_length, len(ids))
        windows.append((begin, end, max(prev_end, begin + 1)))
        prev_end = end
        if end == len(ids):
            break

    # A window's scored tokens are a continuation of the window's tokens before them.
    requests = [(ids[begin:first], ids[first:end]) for begin, end, first in windows if first < end]
    total = math.fsum(
        loglikelihood_tokens(model, requests, max_length=max_length, batch_size=batch_size)
    )
    scored_tokens = sum(len(continuation) for _, continuation in requests)
    return {
        "token_perplexity": math.exp(-total / scored_tokens),
        "tokens": scored_tokens,
        "loglikelihood": total,
    }
