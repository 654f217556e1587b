"""Perplexity against independent, token-by-token computations of the same definitions.

The references below score each token with its own forward pass over exactly the context the
definition gives it (lm-eval's rolling windows; Hugging Face's sliding window), in float64, so
they share nothing with the batched implementation but the model. A window wrong by one token
changes a text's log-likelihood by ~1e-4 relative even for this random-weight model (checked
below), far above the 1e-7 the tests allow.
"""

import importlib
import itertools
import math
import random
import re

import pytest
import torch

from evals.ml import PERPLEXITY_DEFINITION
from evals.ml.causal_blocks import NAME as CAUSAL_BLOCKS
from evals.ml.causal_blocks import QUERY_BLOCK, blocked_causal_attention, causal_blocks_attention
from evals.ml.lm import _body_and_head, length_batches, loglikelihood_tokens
from evals.ml.perplexity import (
    get_rolling_token_windows,
    make_disjoint_window,
    perplexity,
    rolling_loglikelihood,
    strided_perplexity,
)
from loop.testing import tiny_lm, torch_threads

MAX_LENGTH = 8
TEXTS = [
    # 37 tokens: 4 windows of 8 and a partial 5th, shifted back to see 8 tokens
    "The quiet farmer paints the teacher at home. The capital of Peru is Lima. A bird has 2 legs."
    " In the morning, the green train watched the boy. Grass is green.",
    "A dog has 4 legs.",  # 6 tokens: a single short window
    "",  # nothing to score
    "  Snow is white.\n\nThe sky is blue on a clear day.  ",  # whitespace at both ends
    "Every day, the bright boy liked the boat. There are 12 months in a year. Ünïcödé: 7 × 8",
]


@pytest.fixture(autouse=True, scope="module")
def one_torch_thread():
    with torch_threads(1):
        yield


@pytest.fixture(scope="module")
def lm64():
    model, tokenizer = tiny_lm()
    return model.double(), tokenizer


@pytest.fixture(scope="module")
def lm32():
    return tiny_lm()


def token_logprobs(model, ids: list[int], contexts: list[tuple[int, int]]) -> list[float]:
    """log p(ids[p] | ids[begin:p]) for each (begin, p), each context on its own: a causal
    model's logits at the last position of ids[begin:p] are those at position p - 1 of any
    longer slice from begin, so one forward pass per distinct begin serves all its tokens."""
    by_begin: dict[int, list[int]] = {}
    for begin, p in contexts:
        by_begin.setdefault(begin, []).append(p)
    logprob = {}
    with torch.no_grad():
        for begin, positions in by_begin.items():
            logits = model(input_ids=torch.tensor([ids[begin : max(positions)]])).logits[0]
            logp = torch.log_softmax(logits, dim=-1)
            for p in positions:
                logprob[begin, p] = logp[p - 1 - begin, ids[p]].item()
    return [logprob[c] for c in contexts]


def rolling_reference(model, tokenizer, text: str, max_length: int, *, shift_last=True):
    """lm-eval's rolling definition token by token: token j of the text is conditioned on
    [BOS] + tokens[:j] in the first window (j < L); later windows k = 0, 1, ... predict tokens
    L + kL .. L + kL + L - 1 given the token before the window; the last window starts
    max_length + 1 tokens before its end instead (shift_last=False: the unshifted variant)."""
    tokens = tokenizer(text, add_special_tokens=False)["input_ids"]
    ids = [tokenizer.bos_token_id, *tokens]  # ids[q + 1] is tokens[q]
    contexts = []
    for j in range(len(tokens)):
        if j < max_length:
            begin = 0  # the BOS prefix and everything before j
        else:
            window_start = max_length + (j - max_length) // max_length * max_length
            window_end = min(window_start + max_length, len(tokens))
            begin = 1 + (window_end - max_length - 1 if shift_last else window_start - 1)
        contexts.append((begin, j + 1))
    return math.fsum(token_logprobs(model, ids, contexts))


def test_rolling_loglikelihood_equals_token_by_token_reference(lm64):
    model, tokenizer = lm64
    ours = rolling_loglikelihood(model, tokenizer, TEXTS, max_length=MAX_LENGTH, batch_size=3)
    for text, value in zip(TEXTS, ours, strict=True):
        expected = rolling_reference(model, tokenizer, text, MAX_LENGTH)
        assert value == pytest.approx(expected, rel=1e-7, abs=1e-9), text


def test_the_last_window_shift_is_visible_at_this_tolerance(lm64):
    model, tokenizer = lm64
    text = TEXTS[0]
    n_tokens = len(tokenizer(text, add_special_tokens=False)["input_ids"])
    assert n_tokens > 3 * MAX_LENGTH and n_tokens % MAX_LENGTH != 0
    shifted = rolling_reference(model, tokenizer, text, MAX_LENGTH)
    unshifted = rolling_reference(model, tokenizer, text, MAX_LENGTH, shift_last=False)
    assert abs(shifted - unshifted) / abs(shifted) > 1e-5


def test_windows_predict_every_token_once_like_lm_eval():
    tokens = list(range(100, 137))  # 37 tokens, windows of 10
    windows = [make_disjoint_window(w) for w in get_rolling_token_windows(tokens, 1, 10, 1)]
    assert [pred for _, pred in windows] == [
        tokens[0:10], tokens[10:20], tokens[20:30], tokens[30:37]
    ]  # fmt: skip
    assert windows[0][0] == [1]  # the prefix token conditions the first token
    assert windows[1][0] == [tokens[9]]
    # last window: 7 predicted tokens after 3 of context, so the model sees 10 tokens
    assert windows[3][0] == tokens[26:30]
    assert list(get_rolling_token_windows([], 1, 10, 1)) == []


def test_windows_match_lm_eval_utils_when_installed():
    lm_eval_utils = importlib.import_module("lm_eval.utils")
    for n, max_len, context_len in [(1, 4, 1), (37, 10, 1), (40, 10, 1), (33, 8, 3), (5, 16, 1)]:
        tokens = list(range(n))
        ours = [
            make_disjoint_window(w)
            for w in get_rolling_token_windows(tokens, -1, max_len, context_len)
        ]
        theirs = [
            lm_eval_utils.make_disjoint_window(w)
            for w in lm_eval_utils.get_rolling_token_windows(tokens, -1, max_len, context_len)
        ]
        assert ours == theirs


def test_perplexity_aggregates_like_lm_eval(lm64):
    model, tokenizer = lm64
    texts = [t for t in TEXTS if t]
    result = perplexity(model, tokenizer, texts, max_length=MAX_LENGTH)
    lls = [rolling_reference(model, tokenizer, t, MAX_LENGTH) for t in texts]
    words = sum(len(re.split(r"\s+", t)) for t in texts)  # wikitext's count, empty ends included
    n_bytes = sum(len(t.encode("utf-8")) for t in texts)
    assert result["loglikelihood"] == pytest.approx(sum(lls), rel=1e-7)
    assert result["words"] == words
    assert result["bytes"] == n_bytes
    assert result["word_perplexity"] == pytest.approx(math.exp(-sum(lls) / words), rel=1e-7)
    assert result["byte_perplexity"] == pytest.approx(math.exp(-sum(lls) / n_bytes), rel=1e-7)
    assert result["bits_per_byte"] == pytest.approx(-sum(lls) / n_bytes / math.log(2), rel=1e-7)
    assert result["n"] == len(texts)
    assert result["tokens"] == sum(
        len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]
    )
    assert "exp(-LL / words)" in PERPLEXITY_DEFINITION


def test_perplexity_equals_lm_eval_metric_functions_when_installed(lm64):
    metrics = importlib.import_module("lm_eval.api.metrics")
    model, tokenizer = lm64
    texts = [t for t in TEXTS if t]
    result = perplexity(model, tokenizer, texts, max_length=MAX_LENGTH)
    lls = rolling_loglikelihood(model, tokenizer, texts, max_length=MAX_LENGTH)
    words = [(ll, len(re.split(r"\s+", t))) for ll, t in zip(lls, texts, strict=True)]
    n_bytes = [(ll, len(t.encode("utf-8"))) for ll, t in zip(lls, texts, strict=True)]
    assert result["word_perplexity"] == pytest.approx(metrics.weighted_perplexity(words))
    assert result["byte_perplexity"] == pytest.approx(metrics.weighted_perplexity(n_bytes))
    assert result["bits_per_byte"] == pytest.approx(metrics.bits_per_byte(n_bytes))


def test_rolling_loglikelihood_matches_lm_eval_hf_backend_when_installed(lm64):
    importlib.import_module("lm_eval")
    from lm_eval.api.instance import Instance
    from lm_eval.models.huggingface import HFLM

    model, tokenizer = lm64
    hflm = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=2, max_length=MAX_LENGTH)
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
        for i, t in enumerate(TEXTS)
    ]
    theirs = hflm.loglikelihood_rolling(requests, disable_tqdm=True)
    ours = rolling_loglikelihood(model, tokenizer, TEXTS, max_length=MAX_LENGTH)
    assert ours == pytest.approx(theirs, rel=1e-7, abs=1e-9)


def uneven_texts(n: int, seed: int) -> list[str]:
    """Documents of very uneven lengths: word counts log-uniform from 1 to ~150, so from one
    token to about twenty windows of MAX_LENGTH. Words drawn at random, not slices of one
    text: with documents that repeat each other's text, lm-eval 0.4.13 at batch size 8 gave
    totals off the token-by-token reference by 1e-4 relative, and agreed with it with its
    logits cache (logits_cache, on by default) turned off."""
    words = " ".join(TEXTS).split()
    rng = random.Random(seed)
    lengths = [round(math.exp(rng.uniform(0, math.log(150)))) for _ in range(n)]
    return [" ".join(rng.choices(words, k=length)) for length in lengths]


@pytest.mark.parametrize("pass_positions", [512, 20])
def test_uneven_lengths_match_lm_eval_and_the_reference(lm64, monkeypatch, pass_positions):
    """One-token documents beside many-window ones, scored together: every document equals the
    token-by-token reference, and the total equals lm-eval's HF backend at batch sizes 1 and 8,
    whether a CPU pass may hold all of a batch or only two full windows (20 positions)."""
    monkeypatch.setattr("evals.ml.lm.CPU_PASS_POSITIONS", pass_positions)
    model, tokenizer = lm64
    texts = uneven_texts(24, seed=3)
    lengths = [len(tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts]
    assert min(lengths) <= 2 and max(lengths) > 10 * MAX_LENGTH
    ours = rolling_loglikelihood(model, tokenizer, texts, max_length=MAX_LENGTH, batch_size=8)
    for text, value in zip(texts, ours, strict=True):
        expected = rolling_reference(model, tokenizer, text, MAX_LENGTH)
        assert value == pytest.approx(expected, rel=1e-7, abs=1e-9), text
    try:
        from lm_eval.api.instance import Instance
        from lm_eval.models.huggingface import HFLM
    except ImportError:
        return
    requests = [
        Instance(request_type="loglikelihood_rolling", doc={}, arguments=(t,), idx=i)
        for i, t in enumerate(texts)
    ]
    for batch_size in (1, 8):
        hflm = HFLM(
            pretrained=model, tokenizer=tokenizer, batch_size=batch_size, max_length=MAX_LENGTH
        )
        theirs = hflm.loglikelihood_rolling(requests, disable_tqdm=True)
        assert math.fsum(ours) == pytest.approx(math.fsum(theirs), rel=1e-6)
        assert ours == pytest.approx(theirs, rel=1e-7, abs=1e-9)


def test_batch_size_does_not_change_results(lm32):
    model, tokenizer = lm32
    by_batch = {
        size: rolling_loglikelihood(model, tokenizer, TEXTS, max_length=16, batch_size=size)
        for size in (1, 3, 8)
    }
    assert by_batch[3] == pytest.approx(by_batch[1], rel=1e-6, abs=1e-5)
    assert by_batch[8] == pytest.approx(by_batch[1], rel=1e-6, abs=1e-5)
    strided = [
        strided_perplexity(model, tokenizer, TEXTS, stride=12, max_length=16, batch_size=size)
        for size in (1, 3, 8)
    ]
    for result in strided[1:]:
        assert result["loglikelihood"] == pytest.approx(strided[0]["loglikelihood"], rel=1e-6)
        assert result["tokens"] == strided[0]["tokens"]


@pytest.mark.parametrize("stride", [3, 8])
def test_strided_perplexity_equals_token_by_token_reference(lm64, stride):
    """HF's sliding window: windows [b, min(b + L, n)) for b = 0, stride, ...; a window scores
    the tokens after the previous window's end, each conditioned on ids[b:p]."""
    model, tokenizer = lm64
    texts = TEXTS[:2]
    ids = tokenizer("\n\n".join(texts), add_special_tokens=False)["input_ids"]
    contexts, prev_end = [], 0
    for begin in range(0, len(ids), stride):
        end = min(begin + MAX_LENGTH, len(ids))
        # a window's first token has no context in it: scored only by an earlier window
        contexts += [(begin, p) for p in range(max(prev_end, begin + 1), end)]
        prev_end = end
        if end == len(ids):
            break
    total, scored = math.fsum(token_logprobs(model, ids, contexts)), len(contexts)
    result = strided_perplexity(model, tokenizer, texts, stride=stride, max_length=MAX_LENGTH)
    if stride < MAX_LENGTH:
        assert scored == len(ids) - 1  # every token but the first
    assert result["tokens"] == scored
    assert result["loglikelihood"] == pytest.approx(total, rel=1e-7)
    assert result["token_perplexity"] == pytest.approx(math.exp(-total / scored), rel=1e-7)


def test_strided_perplexity_rejects_a_stride_longer_than_the_window(lm32):
    model, tokenizer = lm32
    with pytest.raises(ValueError, match="stride"):
        strided_perplexity(model, tokenizer, TEXTS, stride=MAX_LENGTH + 1, max_length=MAX_LENGTH)
    with pytest.raises(ValueError, match="stride"):
        strided_perplexity(model, tokenizer, TEXTS, stride=0, max_length=MAX_LENGTH)


def test_bf16_model_is_scored_in_float32(lm32):
    """What runs on a GPU: bf16 weights, log-probabilities upcast before the logsumexp."""
    model, tokenizer = lm32
    half, _ = tiny_lm(dtype=torch.bfloat16)
    texts = TEXTS[:2]
    full_result = perplexity(model, tokenizer, texts, max_length=MAX_LENGTH)
    half_result = perplexity(half, tokenizer, texts, max_length=MAX_LENGTH)
    assert math.isfinite(half_result["loglikelihood"])
    assert half_result["loglikelihood"] == pytest.approx(full_result["loglikelihood"], rel=0.02)


def test_perplexity_of_nothing_is_an_error(lm32):
    model, tokenizer = lm32
    with pytest.raises(ValueError):
        perplexity(model, tokenizer, [])
    with pytest.raises(ValueError):
        perplexity(model, tokenizer, ["", ""])


BENCH_LENGTHS = [512] * 5 + [465, 458, 427, 278, 276, 247, 244, 133, 124, 91, 81, 59, 44, 28, 28]


def batches_cost(lengths, batches, forward_cost: int) -> int:
    return sum(forward_cost + len(batch) * max(lengths[i] for i in batch) for batch in batches)


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_batches_hold_every_request_once_longest_first(batch_size):
    batches = length_batches(BENCH_LENGTHS, batch_size)
    assert sorted(i for batch in batches for i in batch) == list(range(len(BENCH_LENGTHS)))
    flat = [BENCH_LENGTHS[i] for batch in batches for i in batch]
    assert flat == sorted(BENCH_LENGTHS, reverse=True)
    assert all(1 <= len(batch) <= batch_size for batch in batches)
    assert len(batches[0]) == min(batch_size, 5)  # the widest batch is also the fullest


@pytest.mark.parametrize("capped", [False, True])
@pytest.mark.parametrize("seed", range(20))
def test_batches_cost_the_least_of_every_way_to_cut_the_sorted_rows(seed, capped):
    """Against all 2**(n-1) ways to cut n sorted rows into runs of at most batch_size, and with
    max_positions (capped) of at most that many positions unless a run is one row."""
    rng = random.Random(seed)
    lengths = [rng.choice([rng.randint(1, 40), rng.randint(1, 512)]) for _ in range(9)]
    batch_size, forward_cost = rng.choice([2, 3, 8]), rng.choice([0, 32, 200])
    cap = rng.choice([100, 512, 1024]) if capped else None

    def allowed(run):
        small = cap is None or len(run) == 1 or len(run) * lengths[run[0]] <= cap
        return len(run) <= batch_size and small

    order = sorted(range(len(lengths)), key=lambda i: -lengths[i])
    least = math.inf
    for cuts in itertools.product([False, True], repeat=len(order) - 1):
        runs, run = [], [order[0]]
        for i, cut in zip(order[1:], cuts, strict=True):
            if cut:
                runs.append(run)
                run = []
            run.append(i)
        runs.append(run)
        if all(allowed(r) for r in runs):
            least = min(least, batches_cost(lengths, runs, forward_cost))
    batches = length_batches(lengths, batch_size, forward_cost, max_positions=cap)
    assert all(allowed(batch) for batch in batches)
    assert sorted(i for batch in batches for i in batch) == list(range(len(lengths)))
    assert batches_cost(lengths, batches, forward_cost) == least


def test_a_cpu_pass_holds_one_full_window_and_many_short_ones():
    lengths = [512] * 8 + [64] * 16
    batches = length_batches(lengths, 8, max_positions=512)
    assert [len(batch) for batch in batches] == [1] * 8 + [8, 8]


def test_free_passes_mean_no_padding_and_dear_ones_full_batches():
    no_padding = length_batches(BENCH_LENGTHS, 8, forward_cost=0)
    assert all(len({BENCH_LENGTHS[i] for i in batch}) == 1 for batch in no_padding)
    fewest = length_batches(BENCH_LENGTHS, 8, forward_cost=10**6)
    # 3 passes, the middle one short: 278 * 4 + 133 * 8 positions beat 278 * 8 + 44 * 4
    assert [len(batch) for batch in fewest] == [8, 4, 8]


def test_one_long_window_does_not_pad_a_batch_of_short_ones():
    assert length_batches([512, 30, 29, 28], 8) == [[0], [1, 2, 3]]


def scoring_requests(tokenizer, max_length: int) -> list[tuple[list[int], list[int]]]:
    """Rolling windows of a long text (full windows and a last one whose reach-back is not
    scored) and multiple-choice shaped requests (a long context, a few scored tokens)."""
    tokens = tokenizer(" ".join(TEXTS * 4), add_special_tokens=False)["input_ids"]
    requests = [
        make_disjoint_window(window)
        for window in get_rolling_token_windows(tokens, tokenizer.bos_token_id, max_length, 1)
    ]
    requests += [(tokens[:n], tokens[n : n + 3]) for n in (5, 70, 100, 150)]
    return requests


def full_logits_reference(model, requests, max_length: int) -> list[float]:
    """Each request on its own through the model's own forward: full logits, log-softmax."""
    totals = []
    with torch.no_grad():
        for context, continuation in requests:
            ids = [*context, *continuation][-(max_length + 1) :]
            logits = model(input_ids=torch.tensor([ids[:-1]])).logits[0, -len(continuation) :]
            logp = torch.log_softmax(logits.double(), dim=-1)
            totals.append(math.fsum(logp[k, t].item() for k, t in enumerate(continuation)))
    return totals


@pytest.mark.parametrize("batch_size", [1, 3, 8])
def test_scoring_equals_the_full_logits_path_at_every_batch_size(lm64, batch_size):
    """Windows longer than the attention's query blocks and contexts that are not scored: the
    head on scored rows only and the block-causal attention give the model's own numbers."""
    model, tokenizer = lm64
    requests = scoring_requests(tokenizer, max_length=160)
    assert max(len(c) + len(t) for c, t in requests) > 2 * QUERY_BLOCK
    assert _body_and_head(model) is not None  # the split path is the one under test
    expected = full_logits_reference(model, requests, max_length=160)
    ours = loglikelihood_tokens(model, requests, max_length=160, batch_size=batch_size)
    assert ours == pytest.approx(expected, rel=1e-7)
    assert model.config._attn_implementation == "sdpa"  # restored after scoring


def test_a_model_whose_logits_are_not_head_of_body_takes_the_full_logits_path(lm32):
    """A logit scale applied after the head (as Cohere and Granite do) is seen by the probe."""
    model, tokenizer = tiny_lm()

    def scale_logits(module, args, output):
        output.logits = output.logits * 2.0
        return output

    model.register_forward_hook(scale_logits)
    assert _body_and_head(model) is None
    requests = scoring_requests(tokenizer, max_length=100)
    expected = full_logits_reference(model, requests, max_length=100)
    for batch_size in (1, 8):
        ours = loglikelihood_tokens(model, requests, max_length=100, batch_size=batch_size)
        assert ours == pytest.approx(expected, rel=1e-6)
    plain = loglikelihood_tokens(lm32[0], requests, max_length=100)
    assert abs(math.fsum(ours) - math.fsum(plain)) > 1.0  # the scale does change the numbers


def test_block_causal_attention_equals_sdpa_and_is_switched_back(lm32):
    model, _ = lm32
    ids = torch.arange(3 * QUERY_BLOCK + 5)[None] % 50 + 3
    with torch.no_grad():
        expected = model(input_ids=ids, use_cache=False).logits
        with blocked_causal_attention(model):
            assert model.config._attn_implementation == CAUSAL_BLOCKS
            blocked = model(input_ids=ids, use_cache=False).logits
            # a KV cache, i.e. queries that do not see exactly the keys, go to SDPA unchanged
            cached = model(input_ids=ids).logits
        assert model.config._attn_implementation == "sdpa"
        with pytest.raises(RuntimeError), blocked_causal_attention(model):
            raise RuntimeError("a failing batch")
        assert model.config._attn_implementation == "sdpa"
    torch.testing.assert_close(blocked, expected, rtol=1e-5, atol=1e-5)
    torch.testing.assert_close(cached, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("length", [QUERY_BLOCK + 1, 3 * QUERY_BLOCK + 5])
def test_block_causal_attention_is_causal_attention(length):
    """The kernel on its own, with grouped key/value heads (each serves 2 query heads)."""
    generator = torch.Generator().manual_seed(0)
    query = torch.randn(2, 4, length, 16, generator=generator)
    key, value = (torch.randn(2, 2, length, 16, generator=generator) for _ in range(2))
    module = torch.nn.Module()
    module.num_key_value_groups = 2
    out, _ = causal_blocks_attention(module, query, key, value, None, scaling=0.25)
    expected = torch.nn.functional.scaled_dot_product_attention(
        query,
        key.repeat_interleave(2, dim=1),
        value.repeat_interleave(2, dim=1),
        is_causal=True,
        scale=0.25,
    )
    torch.testing.assert_close(out, expected.transpose(1, 2), rtol=1e-5, atol=1e-6)


def test_strided_perplexity_with_a_last_window_of_one_token(lm64):
    """stride == max_length and a stream of k * max_length + 1 tokens: the last window holds
    only its own first token, which has no context in it, so it scores nothing."""
    model, tokenizer = lm64
    words = " ".join(TEXTS).split()
    for n in range(len(words), 0, -1):
        text = " ".join(words[:n])
        ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        if len(ids) % MAX_LENGTH == 1 and len(ids) > 2 * MAX_LENGTH:
            break
    assert len(ids) % MAX_LENGTH == 1
    result = strided_perplexity(model, tokenizer, [text], stride=MAX_LENGTH, max_length=MAX_LENGTH)
    contexts = [(p - p % MAX_LENGTH, p) for p in range(len(ids)) if p % MAX_LENGTH]
    assert result["tokens"] == len(contexts) == len(ids) - len(ids) // MAX_LENGTH - 1
    assert result["loglikelihood"] == pytest.approx(
        math.fsum(token_logprobs(model, ids, contexts)), rel=1e-7
    )


def other_architecture(name: str):
    """Tiny random models of other families, built from configs (nothing is downloaded)."""
    import transformers as tf

    torch.manual_seed(0)
    small = {"vocab_size": 100, "max_position_embeddings": 256, "hidden_size": 32}
    small |= {"intermediate_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4}
    if name == "gpt2":  # absolute positions, LayerNorm, Conv1D layers
        config = tf.GPT2Config(vocab_size=100, n_positions=256, n_embd=32, n_layer=2, n_head=2)
        return tf.GPT2LMHeadModel(config)
    if name == "qwen2":  # grouped key/value heads: 2 query heads each
        return tf.Qwen2ForCausalLM(tf.Qwen2Config(num_key_value_heads=2, **small))
    if name == "mistral":  # a sliding window shorter than the requests: SDPA with a mask
        config = tf.MistralConfig(num_key_value_heads=2, sliding_window=40, **small)
        return tf.MistralForCausalLM(config)
    # logits softcapped after the head: the probe must send it down the full-logits path
    config = tf.Gemma2Config(
        num_key_value_heads=1, head_dim=16, final_logit_softcapping=2.0, **small
    )
    return tf.Gemma2ForCausalLM(config)


@pytest.mark.parametrize("name", ["gpt2", "qwen2", "mistral", "gemma2"])
def test_other_architectures_score_as_their_own_forward(name):
    model = other_architecture(name).double().eval()
    assert (_body_and_head(model) is None) == (name == "gemma2")
    tokens = torch.randint(0, 100, (400,), generator=torch.Generator().manual_seed(1)).tolist()
    requests = [(tokens[:n], tokens[n : n + 5]) for n in (3, 50, 120, 200)]
    requests += [(tokens[:1], tokens[1:150]), (tokens[100:101], tokens[101:300])]
    expected = full_logits_reference(model, requests, max_length=256)
    for batch_size in (1, 3, 8):
        ours = loglikelihood_tokens(model, requests, max_length=256, batch_size=batch_size)
        assert ours == pytest.approx(expected, rel=1e-10)
