"""Reward-model diagnostics beyond accuracy: where it is right, how well calibrated, how much it
likes length, and whether it picks good answers out of several. Plain functions on scores (no
torch), each with its definition and direction in REWARD_DIAGNOSTICS_DEFINITIONS.

    deltas = [c - r for c, r in zip(chosen_scores, rejected_scores)]
    calibration(deltas)                            {"brier": ..., "ece": ...}
    bucketed_accuracy(deltas, [agreement_bucket(row) for row in pairs])
    length_correlation(scores, lengths)
    best_of_n(scores_per_prompt, correct_per_prompt)  {"reward": ..., "random": ..., "oracle": ...}
"""

from __future__ import annotations

import json
import math
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path

ECE_BINS = 10

# Shown on the dashboard next to each metric; metric names are those reward_diagnostics gives.
REWARD_DIAGNOSTICS_DEFINITIONS = {
    "accuracy/agreement": (
        "Accuracy (chosen scored strictly above rejected) on the pairs whose annotators agreed "
        "this much: the snapshot row's `agreement` (the winner's share of the votes) in buckets "
        "unanimous (1, at least two votes), 0.75-1, 0.5-0.75, and single (one vote). Higher is "
        "better; a good reward model is most accurate where annotators agree."
    ),
    "accuracy/strength": (
        "Accuracy on the pairs by how strongly the annotators preferred the chosen reply: the "
        "row's mean `strength` (slight 1, clear 2, strong 3) rounded to the nearest label. "
        "Higher is better."
    ),
    "brier": (
        "Brier score (Brier 1950) of p = sigmoid(r_chosen - r_rejected), the Bradley-Terry "
        "probability the reward model gives the human preference: mean of (1 - p)^2 over the "
        "pairs. 0 is perfect, 0.25 is a constant p = 0.5. Lower is better."
    ),
    "ece": (
        "Expected calibration error (Guo et al. 2017, top-label, 10 equal-width bins): each pair "
        "is a prediction with confidence max(p, 1 - p), correct when p > 0.5; ECE = sum over "
        "bins of (pairs in bin / n) * |accuracy in bin - mean confidence in bin|. Lower is "
        "better."
    ),
    "length_correlation": (
        "Spearman rank correlation between the reward of every scored reply (chosen and "
        "rejected) and its length in characters. Closer to 0 is better: far from 0, the model "
        "rewards (or punishes) length itself."
    ),
    "best_of_n": (
        "Best-of-n selection on prompts with n candidate replies and a gold answer "
        "(exact match after stripping): reward = share of prompts where the highest-scored "
        "candidate is correct (ties at the top share the credit), random = the expected share "
        "for a uniformly random pick, oracle = share of prompts with any correct candidate. "
        "Higher is better; reward should lie well above random and approach oracle."
    ),
}


def sigmoid(x: float) -> float:
    # The two branches avoid overflow of exp for large |x|.
    if x >= 0:
        return 1.0 / (1.0 + math.exp(-x))
    z = math.exp(x)
    return z / (1.0 + z)


def calibration(deltas: Sequence[float], *, bins: int = ECE_BINS) -> dict[str, float]:
    """Brier score and top-label ECE of p = sigmoid(delta), the outcome being "chosen wins"."""
    if not deltas:
        raise ValueError("calibration needs at least one pair")
    probabilities = [sigmoid(d) for d in deltas]
    brier = math.fsum((1.0 - p) ** 2 for p in probabilities) / len(probabilities)
    binned: dict[int, list[tuple[float, float]]] = defaultdict(list)
    for p in probabilities:
        confidence = max(p, 1.0 - p)
        correct = 1.0 if p > 0.5 else 0.0  # a tie (p = 0.5) is wrong, as in accuracy
        # Bins [0, 0.1), ..., [0.9, 1.0]: confidence 1.0 goes to the last one.
        binned[min(int(confidence * bins), bins - 1)].append((confidence, correct))
    n = len(probabilities)
    ece = math.fsum(
        len(members)
        / n
        * abs(
            math.fsum(c for _, c in members) / len(members)
            - math.fsum(conf for conf, _ in members) / len(members)
        )
        for members in binned.values()
    )
    return {"brier": brier, "ece": ece}


def agreement_bucket(row: dict) -> str | None:
    """The snapshot row's annotator agreement as a bucket; None when the row does not say."""
    agreement, count = row.get("agreement"), row.get("annotator_count")
    if not isinstance(agreement, int | float) or isinstance(agreement, bool):
        return None
    if count == 1:
        return "single"
    if agreement >= 1.0:
        return "unanimous"
    return "0.75-1" if agreement >= 0.75 else "0.5-0.75"


STRENGTH_LABELS = {1: "slight", 2: "clear", 3: "strong"}


def strength_bucket(row: dict) -> str | None:
    """The row's mean preference strength (1-3) rounded to its label; None when unknown (0)."""
    strength = row.get("strength")
    if not isinstance(strength, int | float) or isinstance(strength, bool) or strength < 0.5:
        return None
    return STRENGTH_LABELS[min(max(int(strength + 0.5), 1), 3)]  # half up: 1.5 is clear


def bucketed_accuracy(
    deltas: Sequence[float], buckets: Sequence[str | None]
) -> dict[str, tuple[float, int]]:
    """{bucket: (accuracy, pairs)} over the pairs with a bucket; a tie (delta 0) is wrong."""
    hits: dict[str, list[float]] = defaultdict(list)
    for delta, bucket in zip(deltas, buckets, strict=True):
        if bucket is not None:
            hits[bucket].append(1.0 if delta > 0 else 0.0)
    return {bucket: (sum(v) / len(v), len(v)) for bucket, v in sorted(hits.items())}


def length_correlation(scores: Sequence[float], lengths: Sequence[int]) -> float | None:
    """Spearman's rho (Pearson correlation of average ranks, ties sharing their mean rank, as
    scipy.stats.spearmanr); None when either side is constant or there are fewer than 3."""
    if len(scores) != len(lengths):
        raise ValueError("scores and lengths differ in length")
    if len(scores) < 3:
        return None
    x, y = _ranks(scores), _ranks(lengths)
    mx, my = math.fsum(x) / len(x), math.fsum(y) / len(y)
    sxy = math.fsum((a - mx) * (b - my) for a, b in zip(x, y, strict=True))
    sxx = math.fsum((a - mx) ** 2 for a in x)
    syy = math.fsum((b - my) ** 2 for b in y)
    if sxx == 0 or syy == 0:
        return None
    return sxy / math.sqrt(sxx * syy)


def _ranks(values: Sequence[float]) -> list[float]:
    order = sorted(range(len(values)), key=lambda i: values[i])
    ranks = [0.0] * len(values)
    start = 0
    while start < len(order):
        end = start
        while end + 1 < len(order) and values[order[end + 1]] == values[order[start]]:
            end += 1
        for position in range(start, end + 1):
            ranks[order[position]] = (start + end) / 2 + 1
        start = end + 1
    return ranks


def best_of_n(
    scores: Sequence[Sequence[float]], correct: Sequence[Sequence[bool]]
) -> dict[str, float]:
    """Reward-model, random and oracle selection over prompts with candidate replies."""
    if not scores:
        raise ValueError("best_of_n needs at least one prompt")
    reward = random = oracle = 0.0
    for prompt_scores, prompt_correct in zip(scores, correct, strict=True):
        if not prompt_scores or len(prompt_scores) != len(prompt_correct):
            raise ValueError("every prompt needs as many scores as candidates, at least one")
        top = max(prompt_scores)
        picked = [ok for s, ok in zip(prompt_scores, prompt_correct, strict=True) if s == top]
        reward += sum(picked) / len(picked)
        random += sum(prompt_correct) / len(prompt_correct)
        oracle += 1.0 if any(prompt_correct) else 0.0
    n = len(scores)
    return {"reward": reward / n, "random": random / n, "oracle": oracle / n}


def load_best_of_n(path: str | Path) -> list[dict]:
    """Rows {"prompt": [messages] | str, "candidates": [str, ...], "answer": str}."""
    items = []
    for line_no, line in enumerate(Path(path).read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{Path(path).name} line {line_no}: not JSON ({exc.msg})") from exc
        if not isinstance(row, dict):
            raise ValueError(f"{Path(path).name} line {line_no}: not a JSON object")
        candidates = row.get("candidates")
        if (
            not isinstance(row.get("prompt"), list | str)
            or not isinstance(candidates, list)
            or not candidates
            or not all(isinstance(c, str) for c in candidates)
            or not isinstance(row.get("answer"), str)
        ):
            raise ValueError(
                f"{Path(path).name} line {line_no}: needs prompt, candidates (strings), answer"
            )
        items.append(row)
    return items


def is_correct(candidate: str, answer: str) -> bool:
    return candidate.strip() == answer.strip()
