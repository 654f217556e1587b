"""An annotator's own judgements, newest first, a page at a time: filtered by project, kind and
review status, each with its whole conversation and what a reviewer said of it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from django.contrib.auth.models import AbstractBaseUser
from django.core.paginator import Page, Paginator
from django.db.models import Q, QuerySet
from django.http import QueryDict

from feedback.models import (
    JUDGEMENT_MODELS,
    Assignment,
    AssignmentStatus,
    JudgementStatus,
    Project,
    Review,
    TaskKind,
)

from .filters import query_choice, query_id, query_string
from .judgements import ReplyVerdict, judgement_markdown, judgement_replies, judgement_summary

HISTORY_PAGE_SIZE = 25


@dataclass(frozen=True)
class HistoryFilters:
    project: int | None = None
    kind: str = ""
    status: str = ""

    @classmethod
    def from_query(cls, data: QueryDict) -> HistoryFilters:
        return cls(
            project=query_id(data, "project"),
            kind=query_choice(data, "kind", TaskKind.values),
            status=query_choice(data, "status", JudgementStatus.values),
        )

    def query(self) -> str:
        return query_string(project=self.project, kind=self.kind, status=self.status)


@dataclass(frozen=True)
class HistoryRow:
    assignment: Assignment
    judgement: Any
    summary: str
    replies: list[ReplyVerdict]  # [] for a demonstration
    review: Review | None  # the latest decision on it, if a reviewer made one

    def markdown_texts(self) -> list[str]:
        """What its expanded row renders: the whole conversation and every reply."""
        return judgement_markdown(self.assignment.item.prompt, self.judgement, self.replies)


def history_projects(*, user: AbstractBaseUser) -> QuerySet[Project]:
    """The projects the user has submitted work in, for the project filter."""
    submitted = Assignment.objects.filter(annotator=user, status=AssignmentStatus.SUBMITTED)
    return Project.objects.filter(pk__in=submitted.values("item__project_id")).order_by("name")


def history_page(*, user: AbstractBaseUser, filters: HistoryFilters, number: Any) -> Page:
    """One page of the user's submitted judgements; its `object_list` holds HistoryRows."""
    assignments = Assignment.objects.filter(annotator=user, status=AssignmentStatus.SUBMITTED)
    if filters.project:
        assignments = assignments.filter(item__project_id=filters.project)
    if filters.kind:
        assignments = assignments.filter(item__kind=filters.kind)
    if filters.status:
        # Each kind's judgement hangs off its assignment (one-to-one, named after its model).
        assignments = assignments.filter(
            Q(
                *[Q(**{f"{model._meta.model_name}__status": filters.status})
                  for model in JUDGEMENT_MODELS.values()],
                _connector=Q.OR,
            )
        )  # fmt: skip
    assignments = (
        assignments.select_related("item__project", "item__prompt")
        .prefetch_related("item__item_completions__completion")
        .order_by("-finished_at", "-pk")
    )
    page = Paginator(assignments, HISTORY_PAGE_SIZE).get_page(number)
    page.object_list = _rows(list(page.object_list))
    return page


def _rows(assignments: list[Assignment]) -> list[HistoryRow]:
    ids_by_kind: dict[str, list[int]] = {}
    for assignment in assignments:
        ids_by_kind.setdefault(assignment.item.kind, []).append(assignment.pk)
    judgements: dict[int, Any] = {}
    for kind, ids in ids_by_kind.items():
        for judgement in JUDGEMENT_MODELS[kind].objects.filter(assignment_id__in=ids):
            judgements[judgement.assignment_id] = judgement
    latest: dict[int, Review] = {}
    reviews = Review.objects.filter(assignment_id__in=[a.pk for a in assignments])
    for review in reviews.select_related("reviewer").order_by("created_at", "pk"):
        latest[review.assignment_id] = review
    rows = []
    for assignment in assignments:
        judgement = judgements.get(assignment.pk)
        if judgement is None:  # a submit still in flight: its row follows on the next load
            continue
        item = assignment.item
        rows.append(
            HistoryRow(
                assignment=assignment,
                judgement=judgement,
                summary=judgement_summary(item, judgement),
                replies=judgement_replies(item, judgement, assignment.display_order),
                review=latest.get(assignment.pk),
            )
        )
    return rows
