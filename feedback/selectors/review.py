"""The review queue: human judgements of every kind, never the reviewer's own, filtered by project,
annotator, kind and status (waiting by default), oldest first, a page at a time.

One UNION ALL over the three judgement tables orders and pages them by (updated_at, kind, id);
each table's (status, updated_at) index serves its part, and the count stops at a cap, so a
project with a million waiting votes costs what a small one does.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.db.models import CharField, Q, QuerySet, Value
from django.http import QueryDict

from feedback.models import JUDGEMENT_MODELS, JudgementStatus, Origin, Review, TaskKind

from .filters import query_choice, query_id, query_string
from .judgements import ReplyVerdict, judgement_markdown, judgement_replies, judgement_summary

REVIEW_PAGE_SIZE = 50
# "10000+ waiting": counting further would make every queue page cost more as work piles up.
QUEUE_COUNT_CAP = 10_000
ANY_STATUS = "any"
STATUS_CHOICES = [
    (JudgementStatus.SUBMITTED, "Waiting for review"),
    (JudgementStatus.ACCEPTED, "Accepted"),
    (JudgementStatus.REJECTED, "Rejected"),
    (ANY_STATUS, "Any status"),
]

Ref = tuple[str, int]  # (kind, judgement id): where a judgement lives, whatever its kind


@dataclass(frozen=True)
class ReviewFilters:
    """Every field is a GET parameter of the queue and of the review pages opened from it, so
    j/k and "next" stay within what the reviewer chose."""

    project: int | None = None
    annotator: str = ""  # a username
    kind: str = ""  # "" is every kind
    status: str = JudgementStatus.SUBMITTED

    @classmethod
    def from_query(cls, data: QueryDict) -> ReviewFilters:
        statuses = [value for value, _ in STATUS_CHOICES]
        return cls(
            project=query_id(data, "project"),
            annotator=data.get("annotator", "").strip()[:150],
            kind=query_choice(data, "kind", TaskKind.values),
            status=query_choice(data, "status", statuses) or JudgementStatus.SUBMITTED,
        )

    def query(self) -> str:
        status = "" if self.status == JudgementStatus.SUBMITTED else self.status
        return query_string(
            project=self.project, annotator=self.annotator, kind=self.kind, status=status
        )

    @property
    def active(self) -> bool:
        return self != ReviewFilters()


@dataclass(frozen=True)
class QueueRow:
    kind: str
    judgement: Any  # with item__project, item__prompt and annotator loaded
    summary: str


@dataclass(frozen=True)
class QueuePage:
    rows: list[QueueRow]
    number: int
    has_next: bool
    count: int  # matching judgements, up to `cap` + 1
    cap: int

    @property
    def has_previous(self) -> bool:
        return self.number > 1

    @property
    def capped(self) -> bool:
        return self.count > self.cap

    @property
    def shown_count(self) -> int:
        """What the page says: the count, or the cap followed by "+"."""
        return min(self.count, self.cap)

    @property
    def first_index(self) -> int:
        return (self.number - 1) * REVIEW_PAGE_SIZE + 1

    @property
    def last_index(self) -> int:
        return self.first_index + len(self.rows) - 1


def _matching(kind: str, reviewer: AbstractBaseUser, filters: ReviewFilters) -> QuerySet:
    judgements = (
        JUDGEMENT_MODELS[kind].objects.filter(origin=Origin.HUMAN).exclude(annotator=reviewer)
    )
    if filters.status != ANY_STATUS:
        judgements = judgements.filter(status=filters.status)
    if filters.project:
        judgements = judgements.filter(item__project_id=filters.project)
    if filters.annotator:
        judgements = judgements.filter(annotator__username=filters.annotator)
    return judgements


def _kinds(filters: ReviewFilters) -> list[str]:
    return [filters.kind] if filters.kind else list(JUDGEMENT_MODELS)


def _queue(
    reviewer: AbstractBaseUser,
    filters: ReviewFilters,
    where: dict[str, Q] | None = None,
    backwards: bool = False,
) -> QuerySet:
    """(updated_at, kind, id) of every matching judgement in queue order, as one query."""
    parts = [
        _matching(kind, reviewer, filters)
        .filter(where[kind] if where else Q())
        .annotate(kind=Value(kind, output_field=CharField()))
        .values_list("updated_at", "kind", "pk")
        for kind in _kinds(filters)
    ]
    queue = parts[0].union(*parts[1:], all=True) if len(parts) > 1 else parts[0]
    order = ("updated_at", "kind", "pk")
    return queue.order_by(*(f"-{name}" for name in order) if backwards else order)


def review_queue_page(
    *, reviewer: AbstractBaseUser, filters: ReviewFilters, number: int = 1
) -> QueuePage:
    number = max(1, number)
    start = (number - 1) * REVIEW_PAGE_SIZE
    keys = list(_queue(reviewer, filters)[start : start + REVIEW_PAGE_SIZE + 1])
    cap = QUEUE_COUNT_CAP
    count = sum(
        _matching(kind, reviewer, filters).values("pk")[: cap + 1].count()
        for kind in _kinds(filters)
    )
    rows = queue_rows([(kind, pk) for _, kind, pk in keys[:REVIEW_PAGE_SIZE]])
    return QueuePage(rows, number, len(keys) > REVIEW_PAGE_SIZE, min(count, cap + 1), cap)


def review_queue_next(
    *,
    reviewer: AbstractBaseUser,
    filters: ReviewFilters,
    after: Any = None,
    backwards: bool = False,
) -> Ref | None:
    """The judgement that follows `after` (a judgement, as it was when the page showed it) in
    queue order, or precedes it `backwards`; the queue's first when `after` is None."""
    where = None
    if after is not None:
        here = (after.updated_at, _kind_of(after), after.pk)
        where = {kind: _beyond(kind, here, backwards) for kind in _kinds(filters)}
    found = _queue(reviewer, filters, where, backwards).first()
    return (found[1], found[2]) if found else None


def _beyond(kind: str, here: tuple, backwards: bool) -> Q:
    """Rows of `kind` past `here` = (updated_at, kind, id) in (updated_at, kind, id) order."""
    updated_at, here_kind, pk = here
    past = "lt" if backwards else "gt"
    if kind == here_kind:
        return Q(**{f"updated_at__{past}": updated_at}) | Q(
            updated_at=updated_at, **{f"pk__{past}": pk}
        )
    later_kind = kind < here_kind if backwards else kind > here_kind
    return Q(**{f"updated_at__{past}{'e' if later_kind else ''}": updated_at})


def _kind_of(judgement: Any) -> str:
    return next(kind for kind, model in JUDGEMENT_MODELS.items() if isinstance(judgement, model))


def queue_rows(refs: list[Ref]) -> list[QueueRow]:
    """The judgements `refs` names, loaded for a list, in that order (missing ones left out)."""
    loaded: dict[Ref, Any] = {}
    for kind in {kind for kind, _ in refs}:
        ids = [pk for k, pk in refs if k == kind]
        judgements = JUDGEMENT_MODELS[kind].objects.filter(pk__in=ids)
        judgements = judgements.select_related("item__project", "item__prompt", "annotator")
        if kind != TaskKind.DEMONSTRATION:
            judgements = judgements.prefetch_related("item__item_completions__completion")
        loaded |= {(kind, judgement.pk): judgement for judgement in judgements}
    return [
        QueueRow(kind, loaded[kind, pk], judgement_summary(loaded[kind, pk].item, loaded[kind, pk]))
        for kind, pk in refs
        if (kind, pk) in loaded
    ]


@dataclass(frozen=True)
class ReviewDetail:
    kind: str
    judgement: Any
    replies: list[ReplyVerdict]  # [] for a demonstration
    earlier_reviews: list[Review]

    def markdown_texts(self) -> list[str]:
        return judgement_markdown(self.judgement.item.prompt, self.judgement, self.replies)


def review_detail(*, kind: str, judgement_id: int) -> ReviewDetail | None:
    """One judgement as the review page shows it, or None if there is no such judgement."""
    model = JUDGEMENT_MODELS.get(kind)
    if model is None or not 0 < judgement_id < 2**63:
        return None
    judgement = (
        model.objects.select_related("item__project", "item__prompt", "annotator", "assignment")
        .prefetch_related("item__item_completions__completion")
        .filter(pk=judgement_id)
        .first()
    )
    if judgement is None:
        return None
    earlier = Review.objects.filter(assignment_id=judgement.assignment_id).select_related(
        "reviewer"
    )
    return ReviewDetail(
        kind=kind,
        judgement=judgement,
        replies=judgement_replies(judgement.item, judgement, judgement.assignment.display_order),
        earlier_reviews=list(earlier),
    )
