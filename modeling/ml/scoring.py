"""Scoring texts with a reward model: the model's single logit at the last token.

    from modeling.ml.scoring import reward_scores
    reward_scores(rm, tokenizer, [[{"role": "user", ...}, {"role": "assistant", ...}], "text"])

Texts are built as TRL's RewardTrainer builds its training rows, so a reward model is scored on
what it was trained on: conversational rows are prompt + reply messages rendered by the chat
template (no generation prompt); plain-text rows are prompt + reply with EOS appended. Each
distinct text is scored once, so identical replies get identical scores (an exact tie) whatever
the batching. Reward evaluation (evals.ml.reward) and AI annotators (modeling.services.assist)
both score through it.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from transformers import PreTrainedModel, PreTrainedTokenizerBase

Messages = list[dict]


@torch.inference_mode()
def reward_scores(
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    rows: Sequence[Messages | str],
    *,
    batch_size: int = 8,
) -> list[float]:
    """The reward of each row: a message list (chat template) or a finished text string."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    score_of: dict[tuple[int, ...], float] = {}
    keys = [tuple(_encode(tokenizer, row)) for row in rows]
    unique = sorted(set(keys), key=lambda k: -len(k))  # longest first, little padding
    pad_id = reward_model.config.pad_token_id
    if pad_id is None:
        pad_id = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    limit = getattr(reward_model.config, "max_position_embeddings", None)
    reward_model.eval()
    for start in range(0, len(unique), batch_size):
        chunk = unique[start : start + batch_size]
        # Keep the end of an over-long text: the score is read at its last token.
        chunk_ids = [list(k[-limit:]) if limit else list(k) for k in chunk]
        width = max(len(ids) for ids in chunk_ids)
        input_ids = torch.full((len(chunk), width), pad_id, dtype=torch.long)
        attention_mask = torch.zeros((len(chunk), width), dtype=torch.long)
        for row, ids in enumerate(chunk_ids):
            input_ids[row, : len(ids)] = torch.tensor(ids)
            attention_mask[row, : len(ids)] = 1
        logits = reward_model(
            input_ids=input_ids.to(reward_model.device),
            attention_mask=attention_mask.to(reward_model.device),
        ).logits
        for key, score in zip(chunk, logits[:, 0].float().tolist(), strict=True):
            score_of[key] = score
    return [score_of[k] for k in keys]


def _encode(tokenizer: PreTrainedTokenizerBase, row: Messages | str) -> list[int]:
    if isinstance(row, list):
        return list(
            tokenizer.apply_chat_template(row, tokenize=True, return_dict=True)["input_ids"]
        )
    eos = tokenizer.eos_token or ""
    return tokenizer(row if row.endswith(eos) else row + eos)["input_ids"]
