"""What a model's chat template allows in training: assistant-only loss, or its fallback.

SFT's assistant-only loss trains on the tokens the template wraps in {% generation %} markers.
Published templates have none; TRL swaps in a marked training template for the families it knows
(Llama 3, Qwen2.5, Gemma, ...: trl.chat_template_utils.get_training_chat_template) and fails on
the others (Mistral) with "no assistant tokens" once the job is already running. The launch check
asks the same question of one row beforehand, so such a job is queued with the fallback instead:
each conversation split into prompt (every turn but the last) and completion (the last assistant
reply), and the loss on the completion only.

    from modeling.ml.chat_templates import sft_loss_fallback
    note = sft_loss_fallback(tokenizer, row["messages"])  # None: assistant-only loss works
"""

from __future__ import annotations

from typing import Any

from transformers import PreTrainedTokenizerBase

FALLBACK_NOTE = (
    "The model's chat template marks no assistant tokens (no {% generation %} markers, and TRL "
    "has no training template for it): SFT trains on prompt-completion rows instead, the loss on "
    "each conversation's last assistant reply."
)


def training_template(tokenizer: PreTrainedTokenizerBase) -> str | None:
    """The template TRL's SFTTrainer renders with under assistant_only_loss; None if there is
    none with markers."""
    from trl.chat_template_utils import get_training_chat_template, has_generation_markers

    template = tokenizer.chat_template
    if not template:
        return None
    if has_generation_markers(template):
        return template
    try:
        return get_training_chat_template(tokenizer)
    except ValueError:  # "patching is not supported for this template"
        return None


def assistant_tokens_marked(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> bool:
    """Whether assistant-only loss would train on at least one token of this conversation."""
    template = training_template(tokenizer)
    if template is None:
        return False
    out = tokenizer.apply_chat_template(
        messages,
        chat_template=template,
        tokenize=True,
        return_dict=True,
        return_assistant_tokens_mask=True,
    )
    return 1 in out["assistant_masks"]


def sft_loss_fallback(tokenizer: PreTrainedTokenizerBase, messages: list[dict]) -> str | None:
    """The note to show on a job that must fall back to prompt-completion loss, or None."""
    return None if assistant_tokens_marked(tokenizer, messages) else FALLBACK_NOTE


def as_prompt_completion(row: dict[str, Any]) -> dict[str, list[dict]]:
    """{"messages": [...]} as {"prompt": all turns but the last, "completion": [the last]}."""
    messages = row["messages"]
    if not messages or messages[-1]["role"] != "assistant":
        raise ValueError("SFT rows must end with the assistant's reply")
    return {"prompt": messages[:-1], "completion": messages[-1:]}
