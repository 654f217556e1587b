"""Loading checkpoints: full models and LoRA adapters, local directories and hub ids.

Offline use needs nothing special here: huggingface_hub reads HF_HUB_OFFLINE=1 at import and every
from_pretrained below then resolves hub ids from the local cache only (local_files_only).
LoRA adapters are merged on load so callers always get a plain transformers model.
"""

import json
from pathlib import Path

import torch
from transformers import (
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
    """The tokenizer saved with a checkpoint; for an adapter saved without one, its base's."""
    path = str(path)
    try:
        return AutoTokenizer.from_pretrained(path, **kwargs)
    except (OSError, ValueError):
        if not is_lora_adapter(path):
            raise
        return AutoTokenizer.from_pretrained(adapter_base(path), **kwargs)


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
        model.config.pad_token_id = tokenizer.pad_token_id or tokenizer.eos_token_id
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
