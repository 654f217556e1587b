"""Loading checkpoints: full models and LoRA adapters, local directories and hub ids.

Offline use needs nothing special here: huggingface_hub reads HF_HUB_OFFLINE=1 at import and every
from_pretrained below then resolves hub ids from the local cache only (local_files_only).
LoRA adapters are merged on load so callers always get a plain transformers model, and
tokenizers always have a pad token distinct from EOS (choose_pad_token).
"""

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import (
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.utils.peft_utils import find_adapter_config_file

MODEL_CARD = "veredicto.json"


def is_lora_adapter(path: str | Path) -> bool:
    """True for a PEFT adapter (a directory or hub repo with adapter_config.json)."""
    return find_adapter_config_file(str(path)) is not None


def adapter_base(path: str | Path) -> str:
    """The base model an adapter was trained on, as recorded in its adapter_config.json."""
    with open(find_adapter_config_file(str(path))) as f:
        return json.load(f)["base_model_name_or_path"]


def load_tokenizer(path: str | Path, **kwargs) -> PreTrainedTokenizerBase:
    """The tokenizer saved with a checkpoint (for an adapter saved without one, its base's), with
    a pad token distinct from EOS (see choose_pad_token)."""
    path = str(path)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError):
        if not is_lora_adapter(path):
            raise
        tokenizer = AutoTokenizer.from_pretrained(adapter_base(path), **kwargs)
    if needs_pad_token(tokenizer):  # the config is read only then
        choice = choose_pad_token(tokenizer, embedding_rows=embedding_rows(path))
        tokenizer.add_special_tokens({"pad_token": choice.token})
    return tokenizer


def needs_pad_token(tokenizer: PreTrainedTokenizerBase) -> bool:
    return tokenizer.pad_token_id is None or tokenizer.pad_token_id == tokenizer.eos_token_id


# Tokens real tokenizers ship and never emit, in the order we would pad with them: Llama 3.1's
# dedicated pad, the usual pad spellings, Llama 3's first reserved token, then <unk> (Mistral,
# Llama 2), which byte-fallback vocabularies never produce from text.
PAD_CANDIDATES = (
    "<|finetune_right_pad_id|>",
    "<pad>",
    "<|pad|>",
    "[PAD]",
    "<|reserved_special_token_0|>",
    "<unk>",
)
NEW_PAD_TOKEN = "<|pad|>"


@dataclass(frozen=True)
class PadChoice:
    token: str
    added: bool  # a new token, in one of the embedding's spare rows
    reason: str  # for the checkpoint's notes


def choose_pad_token(
    tokenizer: PreTrainedTokenizerBase, *, embedding_rows: int | None
) -> PadChoice | None:
    """The pad token a tokenizer without a usable one gets; None if its own is fine.

    A pad equal to EOS is not usable: TRL's PPO marks everything after the first pad as padding
    and DataCollatorForLanguageModeling masks pads out of the labels, so the model would never
    learn to stop. An unused special token already in the vocabulary is preferred; a new token is
    added only where the embedding has a spare row for it (Qwen-style padded embeddings), because
    resizing the embedding would change the model. ValueError when neither is possible.
    """
    if not needs_pad_token(tokenizer):
        return None
    eos = tokenizer.eos_token_id
    vocab = tokenizer.get_vocab()
    taken = {eos, tokenizer.bos_token_id}
    for token in PAD_CANDIDATES:
        if token in vocab and vocab[token] not in taken:
            return PadChoice(token, False, f"pad token {token!r} (the tokenizer had none usable)")
    if embedding_rows is not None and embedding_rows > len(tokenizer):
        return PadChoice(
            NEW_PAD_TOKEN, True, f"pad token {NEW_PAD_TOKEN!r} added in a spare embedding row"
        )
    raise ValueError(
        "The tokenizer has no pad token distinct from EOS, no unused special token to pad with "
        "and no spare embedding row for a new one: add a pad token (and resize the embedding) "
        "before registering the model."
    )


def embedding_rows(path: str | Path) -> int | None:
    """The model's vocab_size (rows of its input embedding), or None when there is no config."""
    try:
        config = AutoConfig.from_pretrained(str(path))
    except (OSError, ValueError):
        if not is_lora_adapter(path):
            return None
        return embedding_rows(adapter_base(path))
    config = getattr(config, "text_config", None) or config
    return getattr(config, "vocab_size", None)


def load_causal_lm(
    path: str | Path, *, dtype: torch.dtype | str = torch.float32, device: str | None = None
) -> PreTrainedModel:
    """A causal LM from a full checkpoint or a LoRA adapter (merged into its base)."""
    path = str(path)
    if is_lora_adapter(path):
        from peft import AutoPeftModelForCausalLM

        model = AutoPeftModelForCausalLM.from_pretrained(path, dtype=dtype).merge_and_unload()
    else:
        model = AutoModelForCausalLM.from_pretrained(path, dtype=dtype)
    return model.to(device) if device else model


def load_reward_model(
    path: str | Path, *, dtype: torch.dtype | str = torch.float32, device: str | None = None
) -> PreTrainedModel:
    """A scalar reward model (sequence classification, num_labels=1), adapters merged.

    config.pad_token_id is set from the tokenizer: sequence-classification heads read the score at
    the last non-pad token and fail on batches without it.
    """
    path = str(path)
    if is_lora_adapter(path):
        from peft import AutoPeftModelForSequenceClassification

        model = AutoPeftModelForSequenceClassification.from_pretrained(
            path, num_labels=1, dtype=dtype
        ).merge_and_unload()
    else:
        model = AutoModelForSequenceClassification.from_pretrained(path, num_labels=1, dtype=dtype)
    if model.config.pad_token_id is None:
        tokenizer = load_tokenizer(path)
        # `pad_token_id or eos_token_id` would drop a pad id of 0 (Gemma's <pad>).
        model.config.pad_token_id = tokenizer.pad_token_id
    return model.to(device) if device else model


def write_model_card(
    output_dir: str | Path,
    *,
    kind: str,
    base_model: str | None,
    lora: bool,
    parameter_count: int,
    train_tokens: int,
) -> dict:
    """veredicto.json: what the app needs to know about a checkpoint without loading it."""
    card = {
        "kind": kind,  # "policy" (causal LM) or "reward" (sequence classification, 1 label)
        "base_model": base_model,
        "lora": lora,
        "parameter_count": parameter_count,
        "train_tokens": train_tokens,
    }
    Path(output_dir, MODEL_CARD).write_text(json.dumps(card, indent=2) + "\n")
    return card


def read_model_card(path: str | Path) -> dict | None:
    card = Path(path, MODEL_CARD)
    return json.loads(card.read_text()) if card.is_file() else None


def tokenizer_mismatch(
    policy: PreTrainedTokenizerBase, reward: PreTrainedTokenizerBase
) -> str | None:
    """Why a reward model cannot read the policy's token ids, or None if it can.

    PPO hands the reward model the policy's token ids as they are: with another vocabulary (or
    other ids for BOS, EOS, pad) they spell other text, and the scores are silently meaningless.
    """
    if policy.get_vocab() != reward.get_vocab():
        return (
            f"their vocabularies differ ({len(policy)} and {len(reward)} tokens, "
            f"{len(policy.get_vocab().items() ^ reward.get_vocab().items())} entries not shared)"
        )
    for name in ("bos_token_id", "eos_token_id", "pad_token_id"):
        if getattr(policy, name) != getattr(reward, name):
            label = name.removesuffix("_token_id").upper()
            return f"their {label} ids differ ({getattr(policy, name)} and {getattr(reward, name)})"
    return None
