"""Sampling completions from a checkpoint: n per chat prompt, batched, stopping at EOS.

from modeling.ml import generate
generate("var/models/tiny", [[{"role": "user", "content": "What is 2 + 3?"}]], n=4)

Two engines, the same sampling parameters: vLLM where `import vllm` works and CUDA is available
(an extra for GPU hosts: `pip install vllm`), transformers' generate elsewhere
(sampling_engine() says which a process uses). Both read the prompt as the chat template's
token ids (BOS written once), stop at the same ids and clean the text the same way; vLLM's
random stream differs from torch's, so a seed repeats a run on the same engine only.
"""

import importlib.util
import tempfile
import time
import unicodedata
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import torch
from transformers import GenerationConfig, PreTrainedModel, PreTrainedTokenizerBase, set_seed
from transformers.generation.streamers import BaseStreamer

from modeling.ml.loading import load_causal_lm, load_tokenizer


def generate(
    model_path: str,
    prompts: list[list[dict]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
) -> list[list[str]]:
    """For each chat prompt, n completions (text of the assistant's reply, without EOS).

    temperature=0 is greedy decoding. Runs on the GPU in bf16 when there is one, else on CPU;
    with vLLM where sampling_engine() says so.
    """
    options = dict(n=n, temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    if sampling_engine() == "vllm":
        return vllm_generate(model_path, prompts, seed=seed, **options)
    model = _load_for_sampling(model_path)
    tokenizer = load_tokenizer(model_path)
    return sample(
        model,
        tokenizer,
        prompts,
        n=n,
        temperature=temperature,
        top_p=top_p,
        max_new_tokens=max_new_tokens,
        batch_size=batch_size,
        seed=seed,
    )


class ReplyRefused(ValueError):
    """chat_reply's refusal, worded for the person who asked."""


def chat_reply(
    model_path: str,
    conversation: list[dict],
    *,
    tokenizer_path: str | None = None,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    seed: int = 0,
    on_text: Callable[[str], None] | None = None,
) -> str:
    """The model's next assistant message in a chat (the checkpoint page's playground, live
    arena battles), read through the chat template of its tokenizer (`tokenizer_path`, else the
    model's own). `on_text` is handed the reply so far while it is written (a few times a
    second), so a page can show it growing.

    Always transformers' generate, never vLLM: one reply does not repay vLLM's start-up, and a
    seed then repeats the same reply on every host. Raises ReplyRefused, in words a user can
    act on, when the model cannot chat or the conversation and the reply would not fit its
    context.
    """
    model = _load_for_sampling(model_path)
    tokenizer = load_tokenizer(tokenizer_path or model_path)
    if not tokenizer.chat_template:
        raise ReplyRefused("This checkpoint's tokenizer has no chat template: it cannot chat.")
    context = getattr(model.config, "max_position_embeddings", None)
    length = len(chat_prompt_ids(tokenizer, conversation))
    if context and length + max_new_tokens > context:
        raise ReplyRefused(
            f"The conversation is {length} tokens long and {max_new_tokens} new tokens were "
            f"asked for, but this model reads at most {context} tokens in all: ask for fewer "
            "new tokens or start a new conversation."
        )
    options = dict(temperature=temperature, top_p=top_p, max_new_tokens=max_new_tokens)
    streamer = None
    if on_text is not None:
        streamer = ReplyStreamer(tokenizer, on_text, stops=stop_token_ids(model, tokenizer))
    return sample(model, tokenizer, [conversation], n=1, seed=seed, streamer=streamer, **options)[
        0
    ][0]


class ReplyStreamer(BaseStreamer):
    """generate()'s streamer for one reply: hands the text so far to `on_text`, at most once
    per `every` seconds (each call is a database write), cut at the stop ids and cleaned as the
    final text is, so what a page shows while it grows is a prefix of what it ends as."""

    def __init__(
        self,
        tokenizer: PreTrainedTokenizerBase,
        on_text: Callable[[str], None],
        *,
        stops: list[int],
        every: float = 0.25,
    ) -> None:
        self.tokenizer, self.on_text, self.stops, self.every = tokenizer, on_text, stops, every
        self.ids: list[int] = []
        self.prompt_seen = False
        self.last = 0.0

    def put(self, value: torch.Tensor) -> None:
        if not self.prompt_seen:  # generate() hands over the prompt's ids first
            self.prompt_seen = True
            return
        self.ids += value.flatten().tolist()
        if time.monotonic() - self.last >= self.every:
            self._send()

    def end(self) -> None:
        self._send()

    def _send(self) -> None:
        self.last = time.monotonic()
        ids = until_stop(self.ids, self.stops)
        self.on_text(clean_text(self.tokenizer.decode(ids, skip_special_tokens=True)))


def _load_for_sampling(model_path: str) -> PreTrainedModel:
    """On the GPU in bf16 when there is one, else on the CPU in fp32."""
    device = "cuda" if torch.cuda.is_available() else "cpu"
    dtype = torch.bfloat16 if device == "cuda" and torch.cuda.is_bf16_supported() else torch.float32
    return load_causal_lm(model_path, dtype=dtype, device=device)


@torch.no_grad()
def sample(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    prompts: list[list[dict]],
    *,
    n: int = 1,
    temperature: float = 1.0,
    top_p: float = 1.0,
    max_new_tokens: int = 64,
    batch_size: int = 8,
    seed: int = 0,
    streamer: BaseStreamer | None = None,
) -> list[list[str]]:
    """generate() for a model already loaded (evaluation loops keep one across calls).
    A `streamer` sees the tokens of a single completion as they come (one prompt, n=1)."""
    if n < 1 or batch_size < 1 or max_new_tokens < 1:
        raise ValueError("n, batch_size and max_new_tokens must be at least 1")
    if streamer is not None and len(prompts) * n != 1:
        raise ValueError("a streamer follows one completion: one prompt, n=1")
    set_seed(seed)  # same seed, prompts and batch_size -> same completions
    model.eval()
    pad_id = (
        tokenizer.pad_token_id if tokenizer.pad_token_id is not None else tokenizer.eos_token_id
    )
    stops = stop_token_ids(model, tokenizer)
    texts = [
        tokenizer.apply_chat_template(p, add_generation_prompt=True, tokenize=False)
        for p in prompts
    ]
    rows = [text for text in texts for _ in range(n)]  # each prompt n times, side by side
    sampling = temperature > 0
    completions = []
    for start in range(0, len(rows), batch_size):
        # Left padding: every prompt of the batch ends where its completion starts. The template
        # already wrote BOS; add_special_tokens=False keeps it from being doubled.
        batch = tokenizer(
            rows[start : start + batch_size],
            return_tensors="pt",
            padding=True,
            padding_side="left",
            add_special_tokens=False,
        ).to(model.device)
        output = model.generate(
            **batch,
            do_sample=sampling,
            temperature=temperature if sampling else None,
            top_p=top_p if sampling else None,
            top_k=0 if sampling else None,  # unset, transformers would apply top_k=50
            max_new_tokens=max_new_tokens,
            eos_token_id=stops or None,
            pad_token_id=pad_id,
            streamer=streamer,
        )
        new_tokens = output[:, batch["input_ids"].shape[1] :]
        completions += [until_stop(ids.tolist(), stops) for ids in new_tokens]
    decoded = [
        clean_text(text) for text in tokenizer.batch_decode(completions, skip_special_tokens=True)
    ]
    return [decoded[i * n : (i + 1) * n] for i in range(len(prompts))]


def sampling_engine() -> str:
    """ "vllm" where vLLM is installed and a CUDA GPU is there to run it, else "hf"."""
    if importlib.util.find_spec("vllm") is not None and torch.cuda.is_available():
        return "vllm"
    return "hf"


def vllm_sampling_params(
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
    stop_token_ids: list[int],
    stop: list[str] | None = None,
):
    """vllm.SamplingParams equal to what sample() asks transformers for: temperature 0 is greedy
    (vLLM's convention too), no top-k (vLLM's -1, transformers' top_k=0/None), the same stop
    ids, special tokens left out of the text."""
    from vllm import SamplingParams

    sampling = temperature > 0
    return SamplingParams(
        n=n,
        temperature=temperature if sampling else 0.0,
        top_p=top_p if sampling else 1.0,
        top_k=-1,
        max_tokens=max_new_tokens,
        seed=seed,
        stop_token_ids=stop_token_ids,
        stop=stop or None,
        skip_special_tokens=True,
    )


def vllm_generate(
    model_path: str,
    prompts: list[list[dict]],
    *,
    n: int,
    temperature: float,
    top_p: float,
    max_new_tokens: int,
    seed: int,
) -> list[list[str]]:
    """generate() on vLLM. A LoRA adapter is merged into its base in a temporary directory
    first (vLLM serves full models here; adapters stay a plain checkpoint for everyone else)."""
    from vllm import LLM

    from modeling.ml.loading import is_lora_adapter

    with tempfile.TemporaryDirectory(prefix="vllm-merged-") as merged:
        path = model_path
        if is_lora_adapter(model_path):
            load_causal_lm(model_path).save_pretrained(merged)
            load_tokenizer(model_path).save_pretrained(merged)
            path = merged
        tokenizer = load_tokenizer(path)
        llm = LLM(model=str(Path(path)), dtype="auto", seed=seed)
        params = vllm_sampling_params(
            n=n,
            temperature=temperature,
            top_p=top_p,
            max_new_tokens=max_new_tokens,
            seed=seed,
            stop_token_ids=stop_token_ids(_generation_config_holder(path), tokenizer),
        )
        encoded = [{"prompt_token_ids": chat_prompt_ids(tokenizer, prompt)} for prompt in prompts]
        outputs = llm.generate(encoded, params)
    return [[clean_text(choice.text) for choice in output.outputs] for output in outputs]


def _generation_config_holder(path: str) -> SimpleNamespace:
    """What stop_token_ids reads of a model, without loading its weights."""
    try:
        return SimpleNamespace(generation_config=GenerationConfig.from_pretrained(path))
    except OSError:  # a checkpoint saved without generation_config.json
        return SimpleNamespace(generation_config=None)


def chat_prompt_ids(tokenizer: PreTrainedTokenizerBase, prompt: list[dict]) -> list[int]:
    """The prompt as sample() feeds it: the template's text, its BOS not doubled."""
    text = tokenizer.apply_chat_template(prompt, add_generation_prompt=True, tokenize=False)
    return tokenizer(text, add_special_tokens=False)["input_ids"]


def stop_token_ids(model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase) -> list[int]:
    """EOS and every other id the model's generation_config stops at.

    Chat models end a reply with an end-of-turn token that is often not the tokenizer's EOS
    (Gemma's <end_of_turn>, Llama 3 base's <|eot_id|>); their generation_config lists it.
    """
    configured = getattr(model.generation_config, "eos_token_id", None)
    if configured is None:
        configured = []
    elif isinstance(configured, int):
        configured = [configured]
    ids = [tokenizer.eos_token_id, *configured]
    return list(dict.fromkeys(i for i in ids if i is not None))


def until_stop(ids: list[int], stops: list[int]) -> list[int]:
    """The tokens before the first stop token; finished rows of a batch are padded after it."""
    for i, token in enumerate(ids):
        if token in stops:
            return ids[:i]
    return ids


# Kept although they are control characters: they are how text is laid out.
_LAYOUT = {"\t", "\n"}


def clean_text(text: str) -> str:
    """Decoded model output made fit to show: no control characters but tabs and newlines, and
    no U+FFFD, which decoding writes where sampling stopped inside a multi-byte character (or
    the model emitted byte tokens that form no character). \r\n and \r become \n."""
    text = text.replace("\r\n", "\n").replace("\r", "\n")
    return "".join(
        ch for ch in text if ch != "\ufffd" and (ch in _LAYOUT or unicodedata.category(ch) != "Cc")
    )
