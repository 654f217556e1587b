"""Launch checks that read the models' tokenizers: what a config alone cannot tell.

Both run before a job is queued (jobs._validate), so that no job fails on its worker for a reason
known at launch. They load tokenizers only (no weights); a tokenizer this host cannot load (a hub
id not in the local cache) is not checked here, and the worker's own checks apply.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

from feedback.models import DatasetSnapshot
from modeling.models import Checkpoint

logger = logging.getLogger(__name__)


def _tokenizer(checkpoint: Checkpoint):
    from modeling.ml import load_tokenizer

    try:
        return load_tokenizer(checkpoint.tokenizer_load_path())
    except (OSError, ValueError) as exc:
        logger.info("Tokenizer of %s not checked at launch: %s", checkpoint, exc)
        return None


def _first_row(snapshot: DatasetSnapshot) -> dict[str, Any] | None:
    with Path(snapshot.path(), "train.jsonl").open() as rows:
        for line in rows:
            if line.strip():
                return json.loads(line)
    return None


def sft_loss_fallback_note(
    *, parent: Checkpoint, snapshot: DatasetSnapshot, config: dict[str, Any]
) -> str | None:
    """The note for an SFT job whose assistant-only loss would mask nothing; None if it works
    (or the job does not ask for it). The caller switches the config to the fallback."""
    if not config.get("assistant_only_loss"):
        return None
    tokenizer = _tokenizer(parent)
    row = _first_row(snapshot)
    if tokenizer is None or not row or "messages" not in row:
        return None
    from jinja2 import TemplateError

    from modeling.ml.chat_templates import sft_loss_fallback

    try:
        return sft_loss_fallback(tokenizer, row["messages"])
    except (TemplateError, ValueError, KeyError, TypeError) as exc:
        # A row the template cannot render (an unknown role, say) is a data error the worker
        # reports in the template's own words; it says nothing about the loss mask.
        logger.info("SFT loss mask not checked at launch: %s", exc)
        return None


def reward_tokenizer_error(*, parent: Checkpoint, reward_model: Checkpoint) -> str | None:
    """Why a PPO job's reward model cannot score the policy's rollouts, or None.

    Only PPO needs this: RLOO and GRPO decode each rollout to text and render it again with the
    reward model's own tokenizer and chat template, so any reward model reads them correctly.
    """
    policy, reward = _tokenizer(parent), _tokenizer(reward_model)
    if policy is None or reward is None:
        return None
    from modeling.ml.loading import tokenizer_mismatch

    reason = tokenizer_mismatch(policy, reward)
    if reason is None:
        return None
    return (
        f"PPO scores the policy's token ids with the reward model, but {reward_model.name!r} and "
        f"{parent.name!r} tokenize differently: {reason}. Use a reward model trained from the "
        f"same base, or GRPO/RLOO, which re-tokenize for the reward model."
    )


def pad_token_note(*, storage_path: str, tokenizer_path: str = "") -> str:
    """How a model being registered will pad, when its tokenizer has no pad distinct from EOS
    ("" when it has one, or when the directory holds no tokenizer to check).

    Every load applies the same rule (modeling.ml.loading.choose_pad_token), so training,
    sampling and evaluation all pad with the token named here. ValueError when the rule finds
    none: the model is refused rather than fail in its first PPO job.
    """
    directory = Path(tokenizer_path or storage_path)
    if not any(
        (directory / name).is_file() for name in ("tokenizer.json", "tokenizer_config.json")
    ):
        return ""
    from transformers import AutoTokenizer

    from modeling.ml.loading import choose_pad_token, embedding_rows

    tokenizer = AutoTokenizer.from_pretrained(str(directory))
    choice = choose_pad_token(tokenizer, embedding_rows=embedding_rows(storage_path))
    return f"Padding with {choice.reason}." if choice else ""
