"""Review and adjudication: reviewers accept, edit or reject judgements of every kind, and settle
items whose judgements split. Admins mark gold items.

Rules: annotators cannot review; nobody reviews their own work; a judgement is reviewed once
(the decision is claimed with a conditional UPDATE, so two reviewers racing get one decision);
a rejection needs a comment, which the annotator sees in their history; only a demonstration's
text can be edited (a vote or a ranking is the annotator's to change, after a rejection).
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.forms.models import model_to_dict
from django.utils import timezone

from core.errors import TaskUnavailable
from core.roles import Role, has_role
from feedback.models import (
    JUDGEMENT_MODELS,
    Adjudication,
    Item,
    JudgementRevision,
    JudgementStatus,
    Origin,
    PairwiseChoice,
    Review,
    ReviewDecision,
    TaskKind,
)

from .validation import clean_text

# One bulk accept takes at most this many judgements: a few pages of the queue.
MAX_BULK_ACCEPT = 500


def _ensure_reviewer(user: AbstractBaseUser) -> None:
    if not has_role(user, Role.REVIEWER, Role.ADMIN):
        raise PermissionDenied("Only reviewers and admins can review.")


@transaction.atomic
def judgement_review(
    *,
    kind: str,
    judgement_id: int,
    reviewer: AbstractBaseUser,
    decision: str,
    comment: str = "",
    edited_text: str | None = None,
) -> Review:
    _ensure_reviewer(reviewer)
    model = JUDGEMENT_MODELS.get(kind)
    judgement = model.objects.select_for_update().filter(pk=judgement_id).first() if model else None
    if judgement is None:
        raise ValidationError("No such judgement.")
    if judgement.annotator_id == reviewer.pk:
        raise PermissionDenied("You cannot review your own work.")
    if decision not in ReviewDecision.values:
        raise ValidationError({"decision": "Accept, edit or reject."})
    if decision == ReviewDecision.EDIT and kind != TaskKind.DEMONSTRATION:
        raise ValidationError({"decision": "Only a demonstration's text can be edited."})
    comment = clean_text(comment, field="comment", allow_blank=True)
    if decision == ReviewDecision.REJECT and not comment.strip():
        raise ValidationError({"comment": "Say why, so the annotator can fix it."})
    before = getattr(judgement, "text", "")
    after = ""
    if decision == ReviewDecision.EDIT:
        after = clean_text(edited_text, field="text")
        if after == before:
            raise ValidationError({"text": "The text is unchanged: accept it instead."})
    status = (
        JudgementStatus.REJECTED if decision == ReviewDecision.REJECT else JudgementStatus.ACCEPTED
    )
    claimed = model.objects.filter(pk=judgement.pk, status=JudgementStatus.SUBMITTED).update(
        status=status, updated_at=timezone.now()
    )
    if not claimed:
        raise TaskUnavailable("This judgement was already reviewed.", code="reviewed")
    if decision == ReviewDecision.EDIT:
        JudgementRevision.objects.create(
            assignment_id=judgement.assignment_id,
            payload=model_to_dict(judgement, fields=["text", "labels", "status"]),
            edited_by=reviewer,
        )
        model.objects.filter(pk=judgement.pk).update(text=after)
    return Review.objects.create(
        assignment_id=judgement.assignment_id,
        reviewer=reviewer,
        decision=decision,
        comment=comment,
        text_before=before if decision == ReviewDecision.EDIT else "",
        text_after=after,
    )


def demonstration_review(*, demonstration_id: int, **decision: Any) -> Review:
    return judgement_review(kind=TaskKind.DEMONSTRATION, judgement_id=demonstration_id, **decision)


@transaction.atomic
def judgements_accept(*, reviewer: AbstractBaseUser, selected: Iterable[tuple[str, int]]) -> int:
    """Accept many (kind, id) judgements at once; returns how many were accepted. Those that are
    not waiting any more (another reviewer was quicker), one's own, and imported or simulated
    ones are passed over, as the single review refuses them."""
    _ensure_reviewer(reviewer)
    ids_by_kind: dict[str, set[int]] = defaultdict(set)
    for kind, judgement_id in selected:
        if kind in JUDGEMENT_MODELS:
            ids_by_kind[kind].add(judgement_id)
    if sum(map(len, ids_by_kind.values())) > MAX_BULK_ACCEPT:
        raise ValidationError(f"Accept at most {MAX_BULK_ACCEPT} judgements at once.")
    now = timezone.now()
    reviews = []
    for kind, ids in ids_by_kind.items():
        model = JUDGEMENT_MODELS[kind]
        # Locked, then claimed: a reviewer deciding one of them meanwhile gets it, not both of us.
        waiting = dict(
            model.objects.select_for_update()
            .filter(pk__in=ids, status=JudgementStatus.SUBMITTED, origin=Origin.HUMAN)
            .exclude(annotator=reviewer)
            .values_list("pk", "assignment_id")
        )
        model.objects.filter(pk__in=waiting).update(status=JudgementStatus.ACCEPTED, updated_at=now)
        reviews += [
            Review(assignment_id=assignment_id, reviewer=reviewer, decision=ReviewDecision.ACCEPT,
                   created_at=now)
            for assignment_id in waiting.values()
        ]  # fmt: skip
    Review.objects.bulk_create(reviews)
    return len(reviews)


def item_adjudicate(
    *,
    item_id: int,
    adjudicator: AbstractBaseUser,
    choice: str = "",
    ranking: list[list[int]] | None = None,
    note: str = "",
) -> Adjudication:
    """Record the answer for a split item. The adjudicator must not have judged it."""
    _ensure_reviewer(adjudicator)
    item = Item.objects.filter(pk=item_id).first()
    if item is None:
        raise ValidationError("No such item.")
    if item.assignments.filter(annotator=adjudicator, status="submitted").exists():
        raise PermissionDenied("You judged this item; someone else must adjudicate it.")
    note = clean_text(note, field="note", allow_blank=True)
    if item.kind == TaskKind.PAIRWISE:
        if choice not in PairwiseChoice.values:
            raise ValidationError({"choice": "Choose A, B, tie or both bad."})
        return Adjudication.objects.create(
            item=item, adjudicator=adjudicator, choice=choice, note=note
        )
    if item.kind == TaskKind.RANKING:
        expected = set(item.item_completions.values_list("completion_id", flat=True))
        flat = [cid for group in ranking or [] for cid in group]
        if sorted(flat) != sorted(expected):
            raise ValidationError({"ranking": "Rank every completion exactly once."})
        return Adjudication.objects.create(
            item=item, adjudicator=adjudicator, ranking=ranking, note=note
        )
    raise ValidationError("Demonstrations are reviewed, not adjudicated.")


def item_mark_gold(*, item_id: int, admin: AbstractBaseUser, answer: dict[str, Any]) -> Item:
    """Give an item a known answer: {"choice": "a"} for pairwise, {"ranking": [[…], …]}."""
    if not has_role(admin, Role.ADMIN):
        raise PermissionDenied("Only admins mark gold items.")
    item = Item.objects.get(pk=item_id)
    if item.kind == TaskKind.PAIRWISE:
        if set(answer) != {"choice"} or answer["choice"] not in PairwiseChoice.values:
            raise ValidationError(
                {"answer": 'Pairwise gold is {"choice": "a"|"b"|"tie"|"both_bad"}.'}
            )
    elif item.kind == TaskKind.RANKING:
        expected = sorted(item.item_completions.values_list("completion_id", flat=True))
        ranking = answer.get("ranking") if set(answer) == {"ranking"} else None
        if not ranking or sorted(c for group in ranking for c in group) != expected:
            raise ValidationError({"answer": "Ranking gold must rank every completion once."})
    else:
        raise ValidationError({"answer": "Demonstrations have no single right answer to grade."})
    Item.objects.filter(pk=item.pk).update(is_gold=True, gold_answer=answer)
    item.refresh_from_db()
    return item
