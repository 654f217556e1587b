"""Review and adjudication: reviewers accept, edit or reject demonstrations, and settle items
whose judgements split. Admins mark gold items.

Rules: annotators cannot review; nobody reviews their own work; a demonstration is reviewed once
(the decision is claimed with a conditional UPDATE, so two reviewers racing get one decision);
a rejection needs a comment, which the annotator sees in their history.
"""

from __future__ import annotations

from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import PermissionDenied, ValidationError
from django.db import transaction
from django.db.models import QuerySet
from django.forms.models import model_to_dict
from django.utils import timezone

from core.errors import TaskUnavailable
from core.roles import Role, has_role
from feedback.models import (
    Adjudication,
    Demonstration,
    DemonstrationStatus,
    Item,
    JudgementRevision,
    Origin,
    PairwiseChoice,
    Review,
    ReviewDecision,
    TaskKind,
)

from .validation import clean_text


def _ensure_reviewer(user: AbstractBaseUser) -> None:
    if not has_role(user, Role.REVIEWER, Role.ADMIN):
        raise PermissionDenied("Only reviewers and admins can review.")


def review_queue(*, reviewer: AbstractBaseUser, project=None) -> QuerySet[Demonstration]:
    """Submitted human demonstrations waiting for review, oldest first, never one's own."""
    _ensure_reviewer(reviewer)
    pending = Demonstration.objects.filter(
        status=DemonstrationStatus.SUBMITTED, origin=Origin.HUMAN
    ).exclude(annotator=reviewer)
    if project is not None:
        pending = pending.filter(item__project=project)
    return pending.select_related("item__prompt", "item__project", "annotator").order_by(
        "updated_at", "id"
    )


@transaction.atomic
def demonstration_review(
    *,
    demonstration_id: int,
    reviewer: AbstractBaseUser,
    decision: str,
    comment: str = "",
    edited_text: str | None = None,
) -> Review:
    _ensure_reviewer(reviewer)
    demonstration = Demonstration.objects.select_for_update().filter(pk=demonstration_id).first()
    if demonstration is None:
        raise ValidationError("No such demonstration.")
    if demonstration.annotator_id == reviewer.pk:
        raise PermissionDenied("You cannot review your own work.")
    if decision not in ReviewDecision.values:
        raise ValidationError({"decision": "Accept, edit or reject."})
    comment = clean_text(comment, field="comment", allow_blank=True)
    if decision == ReviewDecision.REJECT and not comment.strip():
        raise ValidationError({"comment": "Say why, so the annotator can fix it."})
    before = demonstration.text
    after = ""
    if decision == ReviewDecision.EDIT:
        after = clean_text(edited_text, field="text")
        if after == before:
            raise ValidationError({"text": "The text is unchanged: accept it instead."})
    status = (
        DemonstrationStatus.REJECTED
        if decision == ReviewDecision.REJECT
        else DemonstrationStatus.ACCEPTED
    )
    claimed = Demonstration.objects.filter(
        pk=demonstration.pk, status=DemonstrationStatus.SUBMITTED
    ).update(status=status, updated_at=timezone.now())
    if not claimed:
        raise TaskUnavailable("This demonstration was already reviewed.", code="reviewed")
    if decision == ReviewDecision.EDIT:
        JudgementRevision.objects.create(
            assignment_id=demonstration.assignment_id,
            payload=model_to_dict(demonstration, fields=["text", "labels", "status"]),
            edited_by=reviewer,
        )
        Demonstration.objects.filter(pk=demonstration.pk).update(text=after)
    return Review.objects.create(
        demonstration=demonstration,
        reviewer=reviewer,
        decision=decision,
        comment=comment,
        text_before=before if decision == ReviewDecision.EDIT else "",
        text_after=after,
    )


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
