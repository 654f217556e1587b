"""The embedded default model: a few-million-parameter Llama with its own byte-level BPE tokenizer.

It is the model of the demo, the tests and CI, so it must build offline, on CPU, in seconds:

    python manage.py build_tiny_model --output var/models/tiny [--steps 2000] [--force]

Setup (corpus, tokenizer, chat template, model) -> pretrain (a plain causal-LM loop over random
windows of the token stream, nanoGPT style) -> save (transformers layout, loadable by
AutoModelForCausalLM / AutoTokenizer and by every trainer in modeling.ml.training).
"""

import json
import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast, set_seed

from loop.corpus import CORPUS_PATH, read_corpus
from modeling.ml.loading import write_model_card

PAD, BOS, EOS = "<|pad|>", "<|bos|>", "<|eos|>"
ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Every turn is `<|role|>content<|eos|>`, so the model learns to stop by emitting EOS. The
# {% generation %} markers wrap the assistant's content *and* its EOS: TRL's assistant-only loss
# (return_assistant_tokens_mask) then trains the stop token too. Unknown roles are an error
# rather than silently rendered, since training data with a typo'd role is a data bug.
CHAT_TEMPLATE = """\
{{- bos_token }}
{%- for message in messages %}
    {%- if message['role'] == 'assistant' %}
        {{- '<|assistant|>' }}
        {%- generation %}{{- message['content'] + eos_token }}{%- endgeneration %}
    {%- elif message['role'] in ['system', 'user'] %}
        {{- '<|' + message['role'] + '|>' + message['content'] + eos_token }}
    {%- else %}
        {{- raise_exception('Unsupported chat role: ' + message['role']) }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|assistant|>' }}
{%- endif %}"""


@dataclass
class TinyModelConfig:
    vocab_size: int = 2048  # upper bound; the small corpus runs out of merges earlier (~1k)
    hidden_size: int = 192
    intermediate_size: int = 512
    num_hidden_layers: int = 4
    num_attention_heads: int = 4  # head_dim 48; RoPE with Llama's default base (10000)
    max_position_embeddings: int = 512
    tie_word_embeddings: bool = True  # the embedding is a large share of a model this small
    block_size: int = 128  # pretraining window; chats and paragraphs are shorter than this
    batch_size: int = 8
    learning_rate: float = 3e-3  # high, as small models tolerate, so a short run learns something
    warmup_steps: int = 10
    val_fraction: float = 0.05  # tail of the token stream held out for loss before/after


# ~0.2 CPU-seconds per step on one core: 150 steps (about 3 passes over the corpus) build in
# well under a minute on 2 cores. --steps builds a better demo model.
DEFAULT_PRETRAIN_STEPS = 150
PROGRESS_EVERY = 100  # pretraining steps between progress calls


def build_tiny_model(
    output_dir: str,
    *,
    vocab_size: int = 2048,
    pretrain_steps: int = DEFAULT_PRETRAIN_STEPS,
    seed: int = 0,
    corpus_path: str | None = None,
    progress: Callable[[int, int, float], object] | None = None,
) -> dict:
    """Train the tokenizer, create the model, pretrain it briefly and save both to output_dir.

    Deterministic for a given seed and corpus. Returns a summary: parameter count, corpus tokens,
    seconds, validation loss before and after pretraining. `progress(step, steps, loss)` is
    called every PROGRESS_EVERY steps and at the end, so a build of minutes is not silent.
    """
    started = time.monotonic()
    cfg = TinyModelConfig(vocab_size=vocab_size)
    set_seed(seed)

    # -- setup: corpus -> tokenizer -> token stream -> model
    docs = read_corpus(corpus_path or CORPUS_PATH)
    tokenizer = train_tokenizer(docs, cfg.vocab_size)
    stream = []
    for doc in docs:
        if "messages" in doc:
            chat = tokenizer.apply_chat_template(doc["messages"], tokenize=True, return_dict=True)
            stream += chat["input_ids"]
        else:
            stream += [
                tokenizer.bos_token_id,
                *tokenizer.encode(doc["text"]),
                tokenizer.eos_token_id,
            ]
    data = torch.tensor(stream, dtype=torch.long)
    n_val = int(len(data) * cfg.val_fraction)
    train_data, val_data = data[:-n_val], data[-n_val:]

    model = LlamaForCausalLM(
        LlamaConfig(
            vocab_size=len(tokenizer),
            hidden_size=cfg.hidden_size,
            intermediate_size=cfg.intermediate_size,
            num_hidden_layers=cfg.num_hidden_layers,
            num_attention_heads=cfg.num_attention_heads,
            num_key_value_heads=cfg.num_attention_heads,
            max_position_embeddings=cfg.max_position_embeddings,
            tie_word_embeddings=cfg.tie_word_embeddings,
            pad_token_id=tokenizer.pad_token_id,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
        )
    )
    n_params = sum(p.numel() for p in model.parameters())

    # -- pretrain: random windows of the stream, AdamW, linear warmup then cosine decay to 10%
    gen = torch.Generator().manual_seed(seed)

    def batch(split: torch.Tensor, n: int) -> torch.Tensor:
        starts = torch.randint(len(split) - cfg.block_size, (n,), generator=gen)
        return torch.stack([split[s : s + cfg.block_size] for s in starts])

    val_batch = batch(val_data, 8)  # fixed, so "before" and "after" measure the same tokens

    @torch.no_grad()
    def val_loss() -> float:
        model.eval()
        loss = model(input_ids=val_batch, labels=val_batch).loss.item()
        model.train()
        return loss

    def lr_at(step: int) -> float:
        if step < cfg.warmup_steps:
            return cfg.learning_rate * (step + 1) / cfg.warmup_steps
        progress = (step - cfg.warmup_steps) / max(1, pretrain_steps - cfg.warmup_steps)
        return cfg.learning_rate * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))

    loss_before = val_loss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.learning_rate, weight_decay=0.1)
    model.train()
    for step in range(pretrain_steps):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step)
        x = batch(train_data, cfg.batch_size)
        loss = model(input_ids=x, labels=x).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if progress is not None and (
            (step + 1) % PROGRESS_EVERY == 0 or step + 1 == pretrain_steps
        ):
            progress(step + 1, pretrain_steps, loss.item())
    loss_after = val_loss()

    # -- save
    out = Path(output_dir)
    out.mkdir(parents=True, exist_ok=True)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    train_tokens = pretrain_steps * cfg.batch_size * cfg.block_size
    write_model_card(
        out,
        kind="policy",
        base_model=None,
        lora=False,
        parameter_count=n_params,
        train_tokens=train_tokens,
    )
    summary = {
        "parameters": n_params,
        "vocab_size": len(tokenizer),
        "corpus_tokens": len(data),
        "pretrain_steps": pretrain_steps,
        "train_tokens": train_tokens,
        "loss_before": round(loss_before, 4),
        "loss_after": round(loss_after, 4),
        "seconds": round(time.monotonic() - started, 1),
        "seed": seed,
        "config": asdict(cfg),
    }
    (out / "build_summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def train_tokenizer(docs: list[dict], vocab_size: int) -> PreTrainedTokenizerFast:
    """Byte-level BPE (encodes any UTF-8) with pad/bos/eos, role markers and the chat template."""
    bpe = Tokenizer(models.BPE())
    # No prefix space: "<|user|>What" must tokenize the same alone and after a role marker, which
    # keeps chat prompts a token-exact prefix of prompt+completion (DPO and GRPO check that).
    bpe.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    bpe.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=[PAD, BOS, EOS, *ROLE_TOKENS],  # ids 0..5, pad first
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        min_frequency=2,
        show_progress=False,
    )

    def texts():
        for doc in docs:
            if "messages" in doc:
                yield from (message["content"] for message in doc["messages"])
            else:
                yield doc["text"]

    bpe.train_from_iterator(texts(), trainer)
    tokenizer = PreTrainedTokenizerFast(
        tokenizer_object=bpe,
        bos_token=BOS,
        eos_token=EOS,
        pad_token=PAD,
        extra_special_tokens=ROLE_TOKENS,
        model_max_length=TinyModelConfig.max_position_embeddings,
    )
    tokenizer.chat_template = CHAT_TEMPLATE
    return tokenizer
