"""Submitting, skipping and editing judgements.

Every submit claims its assignment with a conditional UPDATE (leased -> submitted): a double click
or a retried request finds nothing to claim and gets the judgement that the first one wrote.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from datetime import timedelta
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.exceptions import ValidationError
from django.db import connection, transaction
from django.db.models import Model
from django.forms.models import model_to_dict
from django.utils import timezone
from rapidfuzz.distance import Levenshtein

from core.errors import NotYourTask, TaskUnavailable
from feedback.models import (
    JUDGEMENT_MODELS,
    Assignment,
    AssignmentStatus,
    Demonstration,
    DemonstrationDraft,
    Item,
    JudgementRevision,
    JudgementStatus,
    Origin,
    PairwiseChoice,
    PairwiseJudgement,
    RankingJudgement,
    Strength,
    TaskKind,
)
from feedback.selectors import canonical_a_id, current_draft

from .queue import slots_taken
from .validation import clean_labels, clean_text


def _clean_seconds(seconds_spent: float | None) -> float | None:
    if seconds_spent is None:
        return None
    # Clamp rather than reject: a tab left open overnight is not the annotator's error.
    return max(0.0, min(float(seconds_spent), 24 * 3600.0))


def draft_edit_distance(draft: str, text: str) -> float:
    """How much of a model's draft an annotator changed: the character-level Levenshtein
    distance over the longer text's length (rapidfuzz's `normalized_distance`), to 4 places.
    0: submitted as drafted; 1: nothing of it kept."""
    return round(Levenshtein.normalized_distance(draft, text), 4)


def _clean_demonstration(assignment: Assignment, text: str, draft_id: int | None) -> dict:
    """The text, and the draft it started from with how much was changed: the one the caller
    names (the draft its screen showed), else the item's current draft, if it has one."""
    text = clean_text(text, field="text")
    if draft_id is None:
        draft = current_draft(item_id=assignment.item_id)
    else:
        draft = DemonstrationDraft.objects.filter(pk=draft_id, item_id=assignment.item_id).first()
        if draft is None:
            raise ValidationError({"draft_id": "No such draft for this task."})
    if draft is None:
        return {"text": text}
    return {
        "text": text,
        "draft": draft,
        "draft_edit_distance": draft_edit_distance(draft.text, text),
    }


def _clean_pairwise(assignment: Assignment, choice: str, strength: str, rationale: str) -> dict:
    if choice not in PairwiseChoice.values:
        raise ValidationError({"choice": "Choose A, B, tie or both bad."})
    decisive = choice in (PairwiseChoice.A, PairwiseChoice.B)
    # A project may let an A/B vote leave the strength out (arena battles: one key per vote).
    optional = strength == "" and assignment.item.project.strength_optional
    if decisive and strength not in Strength.values and not optional:
        raise ValidationError({"strength": "Say how much better: slightly, clearly or much."})
    order = assignment.display_order
    a_id = canonical_a_id(assignment)
    return {
        "choice": choice,
        "strength": strength if decisive else "",
        # No recorded shuffle means canonical order, A on the left (as the task screen shows it).
        "shown_left": "a" if not order or order[0] == a_id else "b",
        "rationale": clean_text(rationale, field="rationale", allow_blank=True),
    }


def _clean_ranking(assignment: Assignment, ranking: Sequence[Sequence[int]], rationale: str):
    expected = set(assignment.item.item_completions.values_list("completion_id", flat=True))
    if not isinstance(ranking, list | tuple) or not all(
        isinstance(group, list | tuple) and group for group in ranking
    ):
        raise ValidationError({"ranking": "Give the ranking as best-first groups of completions."})
    flat = [cid for group in ranking for cid in group]
    if len(flat) != len(set(flat)) or set(flat) != expected:
        raise ValidationError({"ranking": "Rank every completion exactly once."})
    if len(ranking) == 1:
        raise ValidationError({"ranking": "All completions tied: use skip, or rank them."})
    return {
        "ranking": [sorted(int(cid) for cid in group) for group in ranking],
        "rationale": clean_text(rationale, field="rationale", allow_blank=True),
    }


def _owned_assignment(
    assignment_id: int, annotator: AbstractBaseUser, loaded: Assignment | None = None
) -> Assignment:
    """`loaded`: the row as the caller already read it, with item__project (the task views do),
    so a submit reads it once. The claim below is conditional, so a stale copy is harmless."""
    if loaded is not None and loaded.pk == assignment_id:
        assignment = loaded
    else:
        assignment = (
            Assignment.objects.select_related("item__project").filter(pk=assignment_id).first()
        )
    if assignment is None or assignment.annotator_id != annotator.pk:
        # Same answer for "missing" and "someone else's": ids reveal nothing.
        raise NotYourTask("This task is not assigned to you.")
    return assignment


def _ensure_slot(assignment: Assignment) -> None:
    """A lease that expired is still honoured while the item has a free slot."""
    if assignment.status == AssignmentStatus.SKIPPED:
        raise TaskUnavailable("You skipped this task.", code="skipped")
    project = assignment.item.project
    if not project.is_active:
        raise TaskUnavailable("This project is closed; your answer was not saved.", code="closed")
    if assignment.expires_at > timezone.now():
        return
    # Lock the item so nobody leases its last slot while we count.
    Item.objects.select_for_update().filter(pk=assignment.item_id).first()
    if slots_taken(assignment.item, excluding=assignment.annotator) >= project.overlap:
        raise TaskUnavailable(
            "Your time on this task ran out and other annotators have filled it. "
            "Your answer was not saved; it is shown below so you can copy it.",
            code="lease_lost",
        )


def _claim(assignment: Assignment, now) -> bool:
    """leased -> submitted, if still leased: the idempotent claim every submit starts with.
    Written out, as the queue's statements are (feedback/services/queue.py), since every
    judgement runs it."""
    sql = f"""
        UPDATE {Assignment._meta.db_table} SET status = %s, finished_at = %s
        WHERE id = %s AND status = %s
    """
    params = [AssignmentStatus.SUBMITTED, connection.ops.adapt_datetimefield_value(now)]
    with connection.cursor() as cursor:
        cursor.execute(sql, [*params, assignment.pk, AssignmentStatus.LEASED])
        return cursor.rowcount == 1


def _count_submitted(item_id: int) -> None:
    sql = f"UPDATE {Item._meta.db_table} SET submitted_count = submitted_count + 1 WHERE id = %s"
    with connection.cursor() as cursor:
        cursor.execute(sql, [item_id])


def _submit(
    *,
    assignment_id: int,
    annotator: AbstractBaseUser,
    kind: str,
    clean: Callable[[Assignment], dict[str, Any]],
    labels: Any,
    seconds_spent: float | None,
    origin: str = Origin.HUMAN,
    loaded: Assignment | None = None,
) -> Model:
    model = JUDGEMENT_MODELS[kind]
    if origin not in Origin.values:
        raise ValidationError({"origin": f"Origin is one of {', '.join(Origin.values)}."})
    if origin == Origin.AI:
        # An AI vote must not take a person's slot: feedback.services.assist.ai_vote_submit.
        raise ValidationError({"origin": "AI votes go through ai_vote_submit, not the queue."})
    with transaction.atomic():
        assignment = _owned_assignment(assignment_id, annotator, loaded)
        if assignment.item.kind != kind:
            raise ValidationError(f"This is a {assignment.item.kind} task, not {kind}.")
        if assignment.status == AssignmentStatus.SUBMITTED:
            return model.objects.get(assignment=assignment)
        fields = clean(assignment)
        cleaned_labels = _clean_labels(assignment, labels)
        _ensure_slot(assignment)
        now = timezone.now()
        if not _claim(assignment, now):  # a concurrent duplicate won the claim, or a skip did
            earlier = model.objects.filter(assignment=assignment).first()
            if earlier is None:
                raise TaskUnavailable("You skipped this task.", code="skipped")
            return earlier
        _count_submitted(assignment.item_id)
        return model.objects.create(
            assignment=assignment,
            item_id=assignment.item_id,
            annotator=annotator,
            labels=cleaned_labels,
            seconds_spent=_clean_seconds(seconds_spent),
            origin=origin,
            created_at=now,
            updated_at=now,
            **fields,
        )


def demonstration_submit(
    *,
    assignment_id: int,
    annotator: AbstractBaseUser,
    text: str,
    labels: Any = None,
    seconds_spent: float | None = None,
    origin: str = Origin.HUMAN,
    loaded: Assignment | None = None,
    draft_id: int | None = None,
) -> Demonstration:
    """`draft_id`: the model's draft the annotator's screen showed (default: the item's
    current draft); the judgement records it and how much of it was changed."""
    return _submit(
        assignment_id=assignment_id,
        annotator=annotator,
        kind=TaskKind.DEMONSTRATION,
        clean=lambda a: _clean_demonstration(a, text, draft_id),
        labels=labels,
        seconds_spent=seconds_spent,
        origin=origin,
        loaded=loaded,
    )


def pairwise_submit(
    *,
    assignment_id: int,
    annotator: AbstractBaseUser,
    choice: str,
    strength: str = "",
    rationale: str = "",
    labels: Any = None,
    seconds_spent: float | None = None,
    origin: str = Origin.HUMAN,
    loaded: Assignment | None = None,
) -> PairwiseJudgement:
    """`choice` is canonical: "a" means the item's first completion, whichever side it showed."""
    return _submit(
        assignment_id=assignment_id,
        annotator=annotator,
        kind=TaskKind.PAIRWISE,
        clean=lambda a: _clean_pairwise(a, choice, strength, rationale),
        labels=labels,
        seconds_spent=seconds_spent,
        origin=origin,
        loaded=loaded,
    )


@transaction.atomic
def pairwise_vote_record(
    *,
    item: Item,
    annotator: AbstractBaseUser,
    choice: str,
    strength: str = "",
    seconds_spent: float | None = None,
) -> PairwiseJudgement:
    """The vote of the person an item was made for (a live arena battle, evals.services): a
    slot of their own, with the sides in the item's order as they saw them, then the ordinary
    submit, so the vote is checked, counted and stored as any other is."""
    now = timezone.now()
    assignment = Assignment.objects.create(
        item=item,
        annotator=annotator,
        status=AssignmentStatus.LEASED,
        leased_at=now,
        expires_at=now + timedelta(seconds=item.project.lease_seconds),
        display_order=list(
            item.item_completions.order_by("position").values_list("completion_id", flat=True)
        ),
    )
    return pairwise_submit(
        assignment_id=assignment.pk,
        annotator=annotator,
        choice=choice,
        strength=strength,
        seconds_spent=seconds_spent,
        loaded=assignment,
    )


def ranking_submit(
    *,
    assignment_id: int,
    annotator: AbstractBaseUser,
    ranking: Sequence[Sequence[int]],
    rationale: str = "",
    labels: Any = None,
    seconds_spent: float | None = None,
    origin: str = Origin.HUMAN,
    loaded: Assignment | None = None,
) -> RankingJudgement:
    return _submit(
        assignment_id=assignment_id,
        annotator=annotator,
        kind=TaskKind.RANKING,
        clean=lambda a: _clean_ranking(a, ranking, rationale),
        labels=labels,
        seconds_spent=seconds_spent,
        origin=origin,
        loaded=loaded,
    )


def assignment_skip(*, assignment_id: int, annotator: AbstractBaseUser, reason: str = "") -> None:
    reason = clean_text(reason, field="reason", allow_blank=True)[:500]
    with transaction.atomic():
        assignment = _owned_assignment(assignment_id, annotator)
        skipped = Assignment.objects.filter(
            pk=assignment.pk, status=AssignmentStatus.LEASED
        ).update(status=AssignmentStatus.SKIPPED, skip_reason=reason, finished_at=timezone.now())
        if not skipped and assignment.status == AssignmentStatus.SUBMITTED:
            raise TaskUnavailable("This task is already submitted.", code="submitted")


_EDITABLE = {
    TaskKind.DEMONSTRATION: ("text", "labels"),
    TaskKind.PAIRWISE: ("choice", "strength", "rationale", "labels"),
    TaskKind.RANKING: ("ranking", "rationale", "labels"),
}


def judgement_edit(
    *, assignment_id: int, annotator: AbstractBaseUser, changes: dict[str, Any]
) -> Model:
    """Change one's own past judgement; the previous version is kept as a revision."""
    with transaction.atomic():
        assignment = _owned_assignment(assignment_id, annotator)
        if assignment.status != AssignmentStatus.SUBMITTED:
            raise TaskUnavailable("Only submitted judgements can be edited.", code="not_submitted")
        if not assignment.item.project.is_active:
            raise TaskUnavailable("This project is closed.", code="closed")
        kind = assignment.item.kind
        judgement = JUDGEMENT_MODELS[kind].objects.select_for_update().get(assignment=assignment)
        if judgement.status == JudgementStatus.ACCEPTED:
            raise TaskUnavailable("A reviewer accepted this judgement: it can no longer be edited.")
        unknown = set(changes) - set(_EDITABLE[kind])
        if unknown:
            raise ValidationError(f"Cannot edit {', '.join(sorted(unknown))}.")
        merged = {field: changes.get(field, getattr(judgement, field)) for field in _EDITABLE[kind]}
        if kind == TaskKind.DEMONSTRATION:
            fields = {"text": clean_text(merged["text"], field="text")}
        elif kind == TaskKind.PAIRWISE:
            fields = _clean_pairwise(
                assignment, merged["choice"], merged["strength"], merged["rationale"]
            )
            fields.pop("shown_left")
        else:
            fields = _clean_ranking(assignment, merged["ranking"], merged["rationale"])
        fields["labels"] = _clean_labels(assignment, merged["labels"])
        before = model_to_dict(judgement, fields=[*_EDITABLE[kind], "status"])
        if all(before[name] == value for name, value in fields.items()):
            return judgement
        JudgementRevision.objects.create(assignment=assignment, payload=before, edited_by=annotator)
        for name, value in fields.items():
            setattr(judgement, name, value)
        if kind == TaskKind.DEMONSTRATION and judgement.draft_id is not None:
            # The figure follows the text it describes.
            draft = DemonstrationDraft.objects.get(pk=judgement.draft_id).text
            judgement.draft_edit_distance = draft_edit_distance(draft, judgement.text)
        judgement.updated_at = timezone.now()
        if judgement.status == JudgementStatus.REJECTED:
            judgement.status = JudgementStatus.SUBMITTED  # fixed: back in the review queue
        judgement.save()
        return judgement


def _clean_labels(assignment: Assignment, labels: Any) -> dict[str, Any]:
    schema = assignment.item.project.label_schema
    reply_ids: list[int] = []
    # Only a per-reply scale needs the item's replies: the common schema costs no query.
    if any(spec.get("scope") == "reply" for spec in schema):
        reply_ids = list(assignment.item.item_completions.values_list("completion_id", flat=True))
    return clean_labels(schema, labels, reply_ids=reply_ids)
