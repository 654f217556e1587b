"""Scoring token sequences with a causal LM, the way lm-evaluation-harness's HF backend does.

One primitive serves perplexity and multiple choice: `loglikelihood_tokens(model, requests)`
takes (context tokens, continuation tokens) pairs and returns the summed log-probability of each
continuation, following lm_eval/models/huggingface.py (HFLM._loglikelihood_tokens):

- the model input is (context + continuation)[-(max_length + 1):][:-1], i.e. left-truncated to
  the model's length, and the last len(continuation) positions are scored;
- requests are sorted longest first and batched, padded on the right without an attention mask
  (a causal model never attends to the padding after a real token, so padding cannot change a
  result beyond floating-point noise); batches are cut where padding costs more than a forward
  pass of its own (length_batches), and on a CPU where a pass would exceed CPU_PASS_POSITIONS
  positions (a batch of full windows falls out of the caches);
- log-softmax in float32 at least (bf16 models on GPU are upcast), summed in float64;
- requests whose model input is the same token sequence are computed once (lm-eval's
  "one-token continuation" cache: a multiple-choice prompt's answers of one token).

Unlike HFLM, the sort is over *all* requests at once: HFLM.loglikelihood_rolling sorts only
within each batch of windows, so one long window pads a whole batch of short ones. On a CPU a
padded position costs as much as a real one. Less work per scored token besides: the output
head and the log-softmax run on scored positions only (scored_logprobs), and on CPU causal
attention runs in query blocks (evals.ml.causal_blocks). bench/eval_throughput.py measures it.
"""

from __future__ import annotations

import inspect
import math
import weakref
from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evals.ml.causal_blocks import blocked_causal_attention

# lm-eval's HFLM._DEFAULT_MAX_LENGTH, used when neither config nor tokenizer gives a length.
DEFAULT_MAX_LENGTH = 2048
# transformers' "no limit" model_max_length (int(1e30)), which lm-eval also treats as unset.
TOKENIZER_INFINITY = 1000000000000000019884624838656
# What one forward pass costs besides its positions, in positions: transformers' per-call work
# (the mask, the rotary table, Python through every layer) is ~1.6 ms with the tiny model on one
# CPU thread, where a position costs ~55 us. It sets how much padding a batch may carry before
# it is worth a pass of its own (length_batches).
FORWARD_COST = 32
# The same on a GPU, where a small batch is nearly free and a pass is kernel launches: not
# measured here (no GPU in the measuring session), set so that batches stay full unless
# padding would be more than two 1k-token windows' worth.
ACCELERATOR_FORWARD_COST = 2048
# Token positions (rows x width) in one forward pass on a CPU, unless a single row is wider:
# a pass's activations then stay in the caches. Measured with the tiny model on one thread
# (Python sources, 16 files, mostly full 512-token windows, batch_size 8): 8 x 512 positions
# a pass took 0.97x lm-eval's CPU time at its batch size 1, at most 512 positions 1.20x (1024:
# 1.17x, 2048: 0.97x); on documents of very uneven lengths 1.04x and 1.28x. Short windows
# still share a pass, which is where batching pays on a CPU (the per-pass cost above).
CPU_PASS_POSITIONS = 512
# Rows a pass may hold when the caller names no batch size. On a CPU, CPU_PASS_POSITIONS bounds
# a pass anyway, so short rows (multiple-choice answers) may share one up to lm-eval's own
# batch_size="auto" cap of 64: with the tiny model, a shipped multiple-choice task at 64 rows ran
# 1.2x lm-eval at auto, at 8 rows 0.96x (bench/eval_tasks_throughput.py). On an accelerator
# nothing bounds a pass's memory but the rows, so it stays at 8 there.
CPU_DEFAULT_ROWS = 64
ACCELERATOR_DEFAULT_ROWS = 8
# Logits computed at once by scored_logprobs: 2**24 float32 values are 64 MB, whatever the vocab.
HEAD_CHUNK_ELEMENTS = 2**24
# On a CPU, rows at once instead: the head's output and its log-softmax then stay in the caches.
# Measured with the tiny model (vocab 1771), one thread: head + log-softmax of 4096 positions
# took 96 ms in one chunk, 60 ms in chunks of 256 rows and 58 ms in chunks of 128; fewer rows
# than that would re-read a large vocabulary's head weight too often.
CPU_HEAD_CHUNK_ROWS = 256
# Tokens in the probe that checks a model's logits are head(body(input)) (_body_and_head).
PROBE_LENGTH = 8


def eval_device_dtype() -> tuple[str, torch.dtype]:
    """Where and in what precision evaluation runs: bf16 on a GPU that has it, else fp32 on CPU."""
    if torch.cuda.is_available():
        dtype = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
        return "cuda", dtype
    return "cpu", torch.float32


def resolve_max_length(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> int:
    """The context length lm-eval's HFLM.max_length resolves (lm_eval.models.utils).

    The config's n_positions, max_position_embeddings or n_ctx (text_config first for composite
    models), then the tokenizer's model_max_length, then 2048.
    """
    config = getattr(model.config, "text_config", None) or model.config
    for attr in ("n_positions", "max_position_embeddings", "n_ctx"):
        value = getattr(config, attr, None)
        if value is not None:
            return int(value)
    limit = getattr(tokenizer, "model_max_length", None)
    if limit is not None and limit != TOKENIZER_INFINITY:
        return int(limit)
    return DEFAULT_MAX_LENGTH


def prefix_token_id(tokenizer: PreTrainedTokenizerBase) -> int:
    """The token that conditions the first real token (HFLM.prefix_token_id): BOS, else EOS."""
    if tokenizer.bos_token_id is not None:
        return tokenizer.bos_token_id
    if tokenizer.eos_token_id is None:
        raise ValueError("The tokenizer has neither a BOS nor an EOS token to condition on")
    return tokenizer.eos_token_id


def tok_encode(tokenizer: PreTrainedTokenizerBase, text: str) -> list[int]:
    """lm-eval's HFLM.tok_encode with default arguments: the tokenizer's own special-token rule,
    except that a text already starting with the BOS string gets no second BOS."""
    bos = tokenizer.decode(prefix_token_id(tokenizer))
    if bos and text.startswith(bos):
        return tokenizer.encode(text, add_special_tokens=False)
    return tokenizer.encode(text)


def encode_pair(
    tokenizer: PreTrainedTokenizerBase, context: str, continuation: str
) -> tuple[list[int], list[int]]:
    """(context tokens, continuation tokens) as lm-eval's LM.loglikelihood builds them.

    Trailing whitespace of the context moves to the continuation; the continuation's tokens are
    those of tok_encode(context + continuation) after the context's, so a merge across the
    boundary is tokenized as in the full string. An empty context becomes the prefix token.
    """
    if context == "":
        continuation_enc = tokenizer.encode(continuation, add_special_tokens=False)
        prefix = prefix_token_id(tokenizer)
        if continuation_enc and continuation_enc[0] == prefix:
            return continuation_enc[:1], continuation_enc[1:]
        return [prefix], continuation_enc
    n_spaces = len(context) - len(context.rstrip())
    if n_spaces > 0:
        continuation = context[-n_spaces:] + continuation
        context = context[:-n_spaces]
    whole = tok_encode(tokenizer, context + continuation)
    context_enc = tok_encode(tokenizer, context)
    return context_enc, whole[len(context_enc) :]


@torch.inference_mode()
def loglikelihood_tokens(
    model: PreTrainedModel,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    max_length: int,
    batch_size: int | None = None,
) -> list[float]:
    """For each (context, continuation) token pair, sum of log p(continuation | context).
    batch_size: rows a forward pass may hold (None: CPU_DEFAULT_ROWS on a CPU, else
    ACCELERATOR_DEFAULT_ROWS).

    HFLM._loglikelihood_tokens's numbers without its is_greedy flag, which no metric here uses.
    log p(token) = log_softmax(logits)[token], at scored positions only (scored_logprobs).
    """
    if batch_size is None:
        batch_size = CPU_DEFAULT_ROWS if model.device.type == "cpu" else ACCELERATOR_DEFAULT_ROWS
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    inputs: list[list[int]] = []
    targets: list[list[int]] = []
    for context, continuation in requests:
        if not context or not continuation:
            raise ValueError("Every request needs at least one context and one continuation token")
        if len(continuation) > max_length:
            raise ValueError(f"A continuation of {len(continuation)} tokens exceeds max_length")
        inputs.append(list((*context, *continuation)[-(max_length + 1) :][:-1]))
        targets.append(list(continuation))

    # Requests whose model input is the same token sequence share one row: the answers of one
    # token to one multiple-choice prompt (lm-eval's "one-token continuation" cache, which
    # groups by context + continuation[:-1]), or longer answers that end where another's input
    # does. The row is computed once and each request's tokens are read from it.
    row_of: dict[tuple[int, ...], int] = {}
    rows: list[list[int]] = []
    members: list[list[int]] = []  # row -> the requests it scores
    for i, ids in enumerate(inputs):
        row = row_of.setdefault(tuple(ids), len(rows))
        if row == len(rows):
            rows.append(ids)
            members.append([])
        members[row].append(i)

    model.eval()
    results = [0.0] * len(inputs)
    cpu = model.device.type == "cpu"
    forward_cost = FORWARD_COST if cpu else ACCELERATOR_FORWARD_COST
    max_positions = CPU_PASS_POSITIONS if cpu else None
    lengths = [len(row) for row in rows]
    with blocked_causal_attention(model):
        for chunk in length_batches(lengths, batch_size, forward_cost, max_positions):
            scored = [i for row in chunk for i in members[row]]
            sums = _score_batch(
                model,
                [rows[row] for row in chunk],
                [[targets[i] for i in members[row]] for row in chunk],
            )
            for i, total in zip(scored, sums, strict=True):
                results[i] = total
    return results


def _score_batch(
    model: PreTrainedModel, inputs: list[list[int]], targets: list[list[list[int]]]
) -> list[float]:
    """Summed log-probabilities of one batch: rows right-padded to the longest, no attention
    mask; targets[r] holds the continuations row r scores, each at the row's last len(target)
    positions. The sums come in the order of the rows and, within a row, of its targets."""
    width = max(len(row) for row in inputs)
    input_ids = torch.zeros((len(inputs), width), dtype=torch.long)
    rows, positions, target_ids, owners = [], [], [], []
    request = 0
    for row, (ids, continuations) in enumerate(zip(inputs, targets, strict=True)):
        n_in = len(ids)
        input_ids[row, :n_in] = torch.tensor(ids)
        for target in continuations:
            n_cont = len(target)
            rows += [row] * n_cont
            positions += range(n_in - n_cont, n_in)
            target_ids += target
            owners += [request] * n_cont
            request += 1
    token_ll = logprobs_at(
        model,
        input_ids.to(model.device),
        torch.tensor(rows),
        torch.tensor(positions),
        torch.tensor(target_ids),
    )
    owners = torch.tensor(owners, device=token_ll.device)
    sums = torch.zeros(request, dtype=torch.float64, device=token_ll.device)
    return sums.index_add_(0, owners, token_ll.double()).tolist()


@torch.inference_mode()
def scored_logprobs(
    model: PreTrainedModel, input_ids: torch.Tensor, target_ids: torch.Tensor, mask: torch.Tensor
) -> torch.Tensor:
    """log p(target_ids[r, q] | input_ids[r, :q + 1]) at every position where mask is True, in
    row-major order, float32 at least.

    The output head runs only on scored positions: the decoder body gives hidden states, the
    scored rows are gathered and go through the head a few thousand at a time, each chunk's
    log-softmax in float32. So no [batch, width, vocab] tensor is ever made (with a
    150k vocabulary that is 600 MB per 1k positions in float32, the bound on batch size on a
    GPU), and contexts that are only read (multiple-choice prompts, the reach-back of a rolling
    last window) cost no head and no softmax. Models whose logits are not plain
    head(body(input)) (softcapping, logit scaling, no separable head) take the full-logits path,
    which keeps logits from the first scored column on.
    """
    rows, positions = mask.nonzero(as_tuple=True)  # row-major order
    return logprobs_at(model, input_ids, rows, positions, target_ids[rows, positions])


@torch.inference_mode()
def logprobs_at(
    model: PreTrainedModel,
    input_ids: torch.Tensor,
    rows: torch.Tensor,
    positions: torch.Tensor,
    targets: torch.Tensor,
) -> torch.Tensor:
    """log p(targets[k] | input_ids[rows[k], :positions[k] + 1]) for every k, float32 at least:
    scored_logprobs for a list of (row, position, target) triples, in which a position may
    come more than once (several continuations read from one row)."""
    kwargs = _forward_kwargs(model)
    split = _body_and_head(model)
    if split is None:
        first = int(positions.min())  # no logits needed before this position
        logits = _full_logits(model, input_ids, first, kwargs)
        # a model split over devices ends where its last layers are
        rows, positions = rows.to(logits.device), positions.to(logits.device)
        return _logprobs(logits[rows, positions - first], targets.to(logits.device))
    body, head = split
    hidden = body(input_ids=input_ids, **kwargs).last_hidden_state
    hidden = hidden[rows.to(hidden.device), positions.to(hidden.device)]
    targets = targets.to(hidden.device)
    if hidden.device.type == "cpu":
        chunk = CPU_HEAD_CHUNK_ROWS
    else:
        chunk = max(1, HEAD_CHUNK_ELEMENTS // model.config.get_text_config().vocab_size)
    return torch.cat(
        [
            _logprobs(head(hidden[start : start + chunk]), targets[start : start + chunk])
            for start in range(0, len(targets), chunk)
        ]
    )


def _logprobs(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """log_softmax(logits)[target] per row of [n, vocab] logits, in float32 at least.

    As lm-eval computes it; log_softmax is one fused kernel, twice as fast on CPU as
    torch.logsumexp (max, subtract, exp, sum, log: a pass each)."""
    if logits.dtype not in (torch.float32, torch.float64):
        logits = logits.float()  # bf16/fp16 logits lose digits in the softmax
    targets = targets.to(logits.device)
    return torch.log_softmax(logits, dim=-1).gather(-1, targets[:, None]).squeeze(-1)


def length_batches(
    lengths: Sequence[int],
    batch_size: int,
    forward_cost: int = FORWARD_COST,
    max_positions: int | None = None,
) -> list[list[int]]:
    """Indices into `lengths`, longest first, cut into batches of at most batch_size rows.

    Longest first (lm-eval's Collator order) over *all* rows: batches hold similar lengths, and
    a batch too large for memory fails at once. Where to cut is chosen to compute the fewest
    positions, counting each batch as wide as its longest row plus forward_cost positions for
    the pass itself: the exact minimum, by dynamic programming over the sorted lengths (a batch
    is a run of them; O(rows * batch_size)). So a few long windows never pad a batch of short
    ones, and short rows are not run one by one either. Ties go to fewer, fuller batches.
    With max_positions, a batch holds no more rows than fit in that many positions at its
    width (but always one): the least cost among such cuts.
    """
    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    n = len(order)
    # cost[k]: least cost of rows order[k:]; end[k]: where the first batch of those ends. Larger
    # first batches are tried first and kept on ties, so the widest batch is also the fullest.
    cost = [math.inf] * n + [0]
    end = [n] * (n + 1)
    for k in range(n - 1, -1, -1):
        rows = min(n - k, batch_size)
        if max_positions is not None:
            rows = max(1, min(rows, max_positions // max(1, lengths[order[k]])))
        for stop in range(k + rows, k, -1):
            total = forward_cost + (stop - k) * lengths[order[k]] + cost[stop]
            if total < cost[k]:
                cost[k], end[k] = total, stop
    batches: list[list[int]] = []
    k = 0
    while k < n:
        batches.append(order[k : end[k]])
        k = end[k]
    return batches


def _forward_kwargs(model: PreTrainedModel) -> dict:
    """No KV cache: nothing is generated."""
    return {"use_cache": False} if "use_cache" in _parameters(model.forward) else {}


def _full_logits(model: PreTrainedModel, input_ids: torch.Tensor, first: int, kwargs: dict):
    """The model's own logits from position `first` on."""
    if first > 0 and "logits_to_keep" in _parameters(model.forward):
        positions = torch.arange(first, input_ids.shape[1], device=input_ids.device)
        return model(input_ids=input_ids, logits_to_keep=positions, **kwargs).logits
    return model(input_ids=input_ids, **kwargs).logits[:, first:]


def _parameters(fn) -> Mapping:
    return inspect.signature(fn).parameters


# model -> (decoder body, output head), or None where logits are not head(body(input))
_SPLITS: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _body_and_head(model: PreTrainedModel):
    """The decoder body and output head of a causal LM, checked once per model on a short probe.

    get_decoder() / get_output_embeddings() are transformers' own accessors (Llama's model /
    lm_head, GPT-2's transformer / lm_head, ...). They say where the head is, not whether the
    model does something after it (Gemma 2's softcapping, Cohere's and Granite's logit scales),
    so the split is used only if it reproduces the model's logits exactly on a probe.
    """
    if model not in _SPLITS:
        _SPLITS[model] = _probe_split(model)
    return _SPLITS[model]


@torch.inference_mode()
def _probe_split(model: PreTrainedModel):
    get_decoder = getattr(model, "get_decoder", None)
    get_head = getattr(model, "get_output_embeddings", None)
    body = get_decoder() if callable(get_decoder) else None
    head = get_head() if callable(get_head) else None
    if body is None or body is model or not isinstance(head, torch.nn.Module):
        return None
    vocab = model.config.get_text_config().vocab_size
    probe = (torch.arange(PROBE_LENGTH, device=model.device) * 7 + 1)[None] % vocab
    kwargs = _forward_kwargs(model)
    try:
        split = head(body(input_ids=probe, **kwargs).last_hidden_state)
    except (AttributeError, TypeError, ValueError, RuntimeError):
        return None
    # The same operations on the same input give the same bits; a softcap or a scale does not.
    if not torch.equal(split, model(input_ids=probe, **kwargs).logits):
        return None
    return body, head
