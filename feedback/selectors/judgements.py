"""How one judgement reads on the screens that list or open it (history, review queue, review
page): a one-line summary in the annotator's terms, and each reply with what the judgement said
of it, in the order the annotator saw them."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from feedback.models import Completion, Item, PairwiseChoice, Prompt, TaskKind


@dataclass(frozen=True)
class ReplyVerdict:
    completion: Completion
    title: str  # what the annotator's screen called it: "Left", "Right", "Reply 2"
    verdict: str  # "Preferred, clearly better", "Rank 1 (tied)", "Tie", ""
    picked: bool  # the preferred reply, or one ranked best


def _snippet(text: str, length: int = 60) -> str:
    text = " ".join(text.split())
    return f"“{text[:length]}…”" if len(text) > length else f"“{text}”"


def judgement_summary(item: Item, judgement: Any) -> str:
    """In the annotator's terms: what they preferred, not canonical A/B or completion ids. Needs
    the item's completions loaded (prefetched with their completion)."""
    if item.kind == TaskKind.DEMONSTRATION:
        return judgement.text[:120]
    texts = {ic.completion_id: ic.completion.text for ic in item.item_completions.all()}
    if item.kind == TaskKind.PAIRWISE:
        if judgement.choice not in (PairwiseChoice.A, PairwiseChoice.B):
            return judgement.get_choice_display()
        position = 0 if judgement.choice == PairwiseChoice.A else 1
        chosen = item.item_completions.all()[position].completion.text
        # A project may let a vote leave the strength out: then there is none to show.
        strength = f" ({judgement.get_strength_display().lower()})" if judgement.strength else ""
        return f"Preferred {_snippet(chosen)}{strength}"
    best = judgement.ranking[0]
    tied = f" tied with {len(best) - 1} more" if len(best) > 1 else ""
    return f"Best of {len(texts)}: {_snippet(texts.get(best[0], ''))}{tied}"


def judgement_replies(item: Item, judgement: Any, display_order: list[int]) -> list[ReplyVerdict]:
    """The replies of a pairwise or ranking judgement as its annotator saw them (sides and order
    are shuffled per annotator), a ranking's best first; [] for a demonstration."""
    by_id = {ic.completion_id: ic.completion for ic in item.item_completions.all()}
    if item.kind == TaskKind.DEMONSTRATION or not by_id:
        return []
    seen = [cid for cid in display_order if cid in by_id] or list(by_id)
    if item.kind == TaskKind.PAIRWISE:
        canonical = list(by_id)  # position order: A, B
        winner = {PairwiseChoice.A: canonical[0], PairwiseChoice.B: canonical[1]}.get(
            judgement.choice
        )
        undecided = "" if winner else judgement.get_choice_display()
        strength = (
            f", {judgement.get_strength_display().lower()} better" if judgement.strength else ""
        )
        return [
            ReplyVerdict(
                by_id[cid],
                side,
                ("Preferred" + strength) if cid == winner else undecided,
                cid == winner,
            )
            for cid, side in zip(seen, ("Left", "Right"), strict=False)
        ]
    rank_of: dict[int, tuple[int, bool]] = {}
    rank = 1
    for group in judgement.ranking:
        for cid in group:
            rank_of[cid] = (rank, len(group) > 1)
        rank += len(group)  # competition ranking: 1, 1, 3
    numbered = {cid: n for n, cid in enumerate(seen, start=1)}
    ordered = sorted(seen, key=lambda cid: (rank_of.get(cid, (rank, False))[0], numbered[cid]))
    replies = []
    for cid in ordered:
        place, tied = rank_of.get(cid, (0, False))
        verdict = f"Rank {place}" + (" (tied)" if tied else "") if place else "Not ranked"
        replies.append(ReplyVerdict(by_id[cid], f"Reply {numbered[cid]}", verdict, place == 1))
    return replies


def judgement_markdown(prompt: Prompt, judgement: Any, replies: list[ReplyVerdict]) -> list[str]:
    """Every text a judgement's full view renders as Markdown, to fetch in one round trip."""
    return [
        prompt.system,
        *(message["content"] for message in prompt.messages),
        getattr(judgement, "text", ""),
        *(reply.completion.text for reply in replies),
    ]
