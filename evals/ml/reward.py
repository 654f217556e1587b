"""Reward-model evaluation: accuracy on preference pairs, and RM-judged win rates.

    from evals.ml import reward_accuracy, reward_win_rate
    reward_accuracy(rm, tokenizer, pairs)   # pairs: {"prompt": [...], "chosen": [...], ...}
    reward_win_rate(rm, tokenizer, policy_outputs, reference_outputs, prompts)

Texts are built as TRL's RewardTrainer builds its training rows, so a reward model is scored on
what it was trained on: conversational rows are prompt + reply messages rendered by the chat
template (no generation prompt); plain-text rows are prompt + reply with EOS appended. The score
is the model's single logit at the last token. Each distinct text is scored once, so identical
replies get identical scores (an exact tie) whatever the batching.
"""

from __future__ import annotations

from collections.abc import Sequence

from transformers import PreTrainedModel, PreTrainedTokenizerBase

from evals.ml.definitions import REWARD_ACCURACY_DEFINITION, WIN_RATE_DEFINITION
from evals.ml.reward_diagnostics import (
    agreement_bucket,
    best_of_n,
    bucketed_accuracy,
    calibration,
    is_correct,
    length_correlation,
    strength_bucket,
)
from evals.ml.stats import mean_stderr, wilson_interval
from modeling.ml.scoring import reward_scores

__all__ = [
    "REWARD_ACCURACY_DEFINITION",
    "WIN_RATE_DEFINITION",
    "accuracy_of_scores",
    "pair_scores",
    "reward_accuracy",
    "reward_model_diagnostics",
    "reward_scores",
    "reward_win_rate",
]

Messages = list[dict]


def reward_accuracy(
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[dict],
    *,
    batch_size: int = 8,
) -> dict:
    """Fraction of pairs with score(prompt + chosen) > score(prompt + rejected), RewardBench's
    convention: a tie counts as wrong. Returns {"accuracy", "n", "stderr"} (stderr: lm-eval's
    mean_stderr of the per-pair 0/1 outcomes)."""
    chosen_scores, rejected_scores = pair_scores(
        reward_model, tokenizer, pairs, batch_size=batch_size
    )
    return accuracy_of_scores(chosen_scores, rejected_scores)


def accuracy_of_scores(chosen_scores: Sequence[float], rejected_scores: Sequence[float]) -> dict:
    """reward_accuracy's result from the scores of each pair's two replies."""
    correct = [1.0 if c > r else 0.0 for c, r in zip(chosen_scores, rejected_scores, strict=True)]
    return {
        "accuracy": sum(correct) / len(correct),
        "n": len(correct),
        "stderr": mean_stderr(correct),
    }


def pair_scores(
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[dict],
    *,
    batch_size: int = 8,
) -> tuple[list[float], list[float]]:
    """The reward of each pair's chosen and of its rejected reply."""
    if not pairs:
        raise ValueError("reward_accuracy needs at least one pair")
    chosen, rejected = [], []
    for index, pair in enumerate(pairs):
        missing = [k for k in ("prompt", "chosen", "rejected") if k not in pair]
        if missing:
            raise ValueError(f"pair {index}: missing {missing}")
        chosen.append(_row(pair["prompt"], pair["chosen"]))
        rejected.append(_row(pair["prompt"], pair["rejected"]))
    scores = reward_scores(reward_model, tokenizer, chosen + rejected, batch_size=batch_size)
    return scores[: len(pairs)], scores[len(pairs) :]


def reward_model_diagnostics(
    reward_model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    pairs: list[dict],
    chosen_scores: Sequence[float],
    rejected_scores: Sequence[float],
    *,
    best_of_n_items: list[dict] | None = None,
    batch_size: int = 8,
) -> dict[str, tuple[float, int]]:
    """{metric: (value, n)}: accuracy by annotator agreement and by preference strength (rows
    that carry them), Brier score and ECE, reward-length correlation and, given prompts with
    candidates and gold answers, best-of-n selection (reward_diagnostics.py defines each).

    Rows whose `outcome` is not "chosen" (a snapshot's kept ties) have no preferred side and
    are left out of every diagnostic."""
    keep = [i for i, pair in enumerate(pairs) if pair.get("outcome", "chosen") == "chosen"]
    kept = [pairs[i] for i in keep]
    deltas = [chosen_scores[i] - rejected_scores[i] for i in keep]
    results: dict[str, tuple[float, int]] = {}
    for name, bucket in (("agreement", agreement_bucket), ("strength", strength_bucket)):
        by_bucket = bucketed_accuracy(deltas, [bucket(pair) for pair in kept])
        for label, (accuracy, n) in by_bucket.items():
            results[f"accuracy/{name}={label}"] = (accuracy, n)
    if deltas:
        for name, value in calibration(deltas).items():
            results[name] = (value, len(deltas))
    scores = [*(chosen_scores[i] for i in keep), *(rejected_scores[i] for i in keep)]
    lengths = [len(_reply_text(pair[side])) for side in ("chosen", "rejected") for pair in kept]
    rho = length_correlation(scores, lengths)
    if rho is not None:
        results["length_correlation"] = (rho, len(scores))
    if best_of_n_items:
        rows, owner = [], []
        for index, item in enumerate(best_of_n_items):
            for candidate in item["candidates"]:
                rows.append(_row(_as_messages(item["prompt"]), [_assistant(candidate)]))
                owner.append(index)
        flat = reward_scores(reward_model, tokenizer, rows, batch_size=batch_size)
        per_prompt: list[list[float]] = [[] for _ in best_of_n_items]
        for index, score in zip(owner, flat, strict=True):
            per_prompt[index].append(score)
        correct = [
            [is_correct(c, item["answer"]) for c in item["candidates"]] for item in best_of_n_items
        ]
        for name, value in best_of_n(per_prompt, correct).items():
            results[f"best_of_n/{name}"] = (value, len(best_of_n_items))
    return results


def _reply_text(reply: Messages | str) -> str:
    if isinstance(reply, str):
        return reply
    return "".join(str(message.get("content", "")) for message in reply)


def reward_win_rate(
    reward_model: PreTrainedModel,
    rm_tokenizer: PreTrainedTokenizerBase,
    policy_outputs: Sequence[str],
    reference_outputs: Sequence[str],
    prompts: Sequence[str | Messages],
    *,
    batch_size: int = 8,
) -> dict:
    """Win rate of the policy's replies over the reference's, judged by a reward model.

    prompts are chat prompts (message lists) or plain user texts; outputs are the assistant
    replies. A win is a strictly higher score, a tie (equal scores) counts half:
    win_rate = (wins + ties / 2) / n. low/high: the 95% Wilson score interval on that
    proportion (ties as half a success). Returns {"win_rate", "low", "high", "n", "wins",
    "ties", "losses"}.
    """
    if not len(policy_outputs) == len(reference_outputs) == len(prompts):
        raise ValueError("policy_outputs, reference_outputs and prompts differ in length")
    if not prompts:
        raise ValueError("reward_win_rate needs at least one prompt")
    chats = [_as_messages(p) for p in prompts]
    policy = [_row(c, [_assistant(o)]) for c, o in zip(chats, policy_outputs, strict=True)]
    reference = [_row(c, [_assistant(o)]) for c, o in zip(chats, reference_outputs, strict=True)]
    scores = reward_scores(reward_model, rm_tokenizer, policy + reference, batch_size=batch_size)
    n = len(prompts)
    wins = sum(p > r for p, r in zip(scores[:n], scores[n:], strict=True))
    ties = sum(p == r for p, r in zip(scores[:n], scores[n:], strict=True))
    win_rate = (wins + ties / 2) / n
    low, high = wilson_interval(wins + ties / 2, n)
    return {
        "win_rate": win_rate,
        "low": low,
        "high": high,
        "n": n,
        "wins": wins,
        "ties": ties,
        "losses": n - wins - ties,
    }


def _row(prompt: Messages | str, reply: Messages | str) -> Messages | str:
    """TRL's explicit-prompt rows: prompt + reply, as messages or as text."""
    if isinstance(prompt, list) and isinstance(reply, list):
        return [*prompt, *reply]
    if isinstance(prompt, str) and isinstance(reply, str):
        return prompt + reply
    raise ValueError("prompt and reply must both be message lists or both be strings")


def _as_messages(prompt: str | Messages) -> Messages:
    return [{"role": "user", "content": prompt}] if isinstance(prompt, str) else list(prompt)


def _assistant(text: str) -> dict:
    return {"role": "assistant", "content": text}
