"""What models contribute to labelling, written through feedback's own rules.

    draft_store(item=..., text=..., model_name=..., model_ref=...)   # a draft to edit
    ai_vote_submit(item=..., voter=..., choice=..., strength=..., model_ref=...)

Feedback sits below the model registry: the registry's drafting and voting runs (modeling)
call these with the model's name and a label for it, never the other way round.

An AI vote is a pairwise judgement with `origin=ai`, on an assignment of its own status (`ai`).
That slot is not one of the item's `overlap` slots and the vote is not added to the item's
`submitted_count`: the queue hands every item to as many people as before, so a model's vote
never takes work from a person, and every human count (progress, agreement, snapshots) reads
as if the model had not voted. Snapshots and exports leave AI votes out unless asked
(`include_ai`), as they do simulated ones.
"""

from __future__ import annotations

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import IntegrityError, transaction
from django.utils import timezone

from core.text import storable_text
from feedback.models import (
    Assignment,
    AssignmentStatus,
    DemonstrationDraft,
    Item,
    Origin,
    PairwiseJudgement,
    TaskKind,
)

from .judgements import _clean_pairwise
from .queue import _display_order
from .validation import clean_text


def draft_store(*, item: Item, text: str, model_name: str, model_ref: str) -> DemonstrationDraft:
    """Keep a model's draft for a demonstration item; drafting again with the same model keeps
    the first draft (annotators may already have started from it)."""
    if item.kind != TaskKind.DEMONSTRATION:
        raise ValidationError({"item": f"Item {item.pk} is a {item.kind} task: nothing to draft."})
    if not model_name or not model_ref:
        raise ValidationError({"model_name": "A draft names the model that wrote it."})
    draft, _ = DemonstrationDraft.objects.get_or_create(
        item=item,
        model_ref=model_ref[:100],
        defaults={
            "text": clean_text(storable_text(text), field="text"),
            "model_name": model_name[:200],
        },
    )
    return draft


def ai_vote_submit(
    *,
    item: Item,
    voter: AbstractBaseUser,
    choice: str,
    strength: str = "",
    rationale: str = "",
    model_ref: str,
) -> PairwiseJudgement:
    """An AI annotator's vote on a pairwise item, checked as a person's is (`choice` canonical:
    "a" is the item's first reply). Once per item and voter: a second call returns the first
    vote, so a voting run delivered twice votes once."""
    if item.kind != TaskKind.PAIRWISE:
        raise ValidationError({"item": f"Item {item.pk} is a {item.kind} task, not pairwise."})
    earlier = PairwiseJudgement.objects.filter(item=item, annotator=voter).first()
    if earlier is not None:
        return earlier
    now = timezone.now()
    assignment = Assignment(
        item=item,
        annotator=voter,
        status=AssignmentStatus.AI,
        leased_at=now,
        expires_at=now,
        finished_at=now,
        # The stable per-annotator shuffle people get, so its left share reads as theirs does.
        display_order=_display_order(item, voter),
    )
    # Labels are people's: a model casts none, even where the project requires some.
    fields = _clean_pairwise(assignment, choice, strength, rationale)
    try:
        with transaction.atomic():
            assignment.save()
            return PairwiseJudgement.objects.create(
                assignment=assignment,
                item=item,
                annotator=voter,
                origin=Origin.AI,
                source=model_ref[:200],
                created_at=now,
                updated_at=now,
                **fields,
            )
    except IntegrityError:  # a concurrent run voted first (assignment_once_per_item)
        return PairwiseJudgement.objects.get(item=item, annotator=voter)
