"""The records browser: a project's items found by words and filters, and one item in full.

Search is PostgreSQL full-text search (English stemming, web-search syntax: `"exact phrase"`,
`-word`, `or`) over the prompts' message texts and the completions, each backed by a GIN index
on the same expression (migration 0012); SQLite, the laptop default, falls back to a plain
case-insensitive substring match.
"""

from __future__ import annotations

from dataclasses import dataclass, fields
from typing import Any

from django.contrib.postgres.search import SearchQuery, SearchVector
from django.db import connection
from django.db.models import Exists, F, Func, OuterRef, Q, QuerySet, TextField, Value
from django.db.models.functions import Cast
from django.http import QueryDict

from feedback.models import (
    Assignment,
    AssignmentStatus,
    Completion,
    Demonstration,
    Item,
    ItemCompletion,
    Origin,
    PairwiseJudgement,
    Project,
    Prompt,
    RankingJudgement,
    Split,
    TaskKind,
)

SEARCH_CONFIG = "english"
JUDGEMENT_MODELS = (Demonstration, PairwiseJudgement, RankingJudgement)
STATUSES = (("open", "Open"), ("complete", "Complete"))


@dataclass(frozen=True)
class RecordFilters:
    """What the filter form asks for; every field is a GET parameter, so a URL is a query."""

    q: str = ""
    split: str = ""
    kind: str = ""
    origin: str = ""
    status: str = ""
    annotator: str = ""
    gold: str = ""

    @classmethod
    def from_query(cls, data: QueryDict) -> RecordFilters:
        """Unknown values are dropped rather than refused: an old link still opens."""
        allowed = {
            "split": Split.values,
            "kind": TaskKind.values,
            "origin": Origin.values,
            "status": [value for value, _ in STATUSES],
            "gold": ["yes", "no"],
        }
        values = {}
        for field in fields(cls):
            value = data.get(field.name, "").strip()[:200]
            if field.name in allowed and value not in allowed[field.name]:
                value = ""
            values[field.name] = value
        return cls(**values)

    def active(self) -> bool:
        return any(getattr(self, field.name) for field in fields(self))


def prompt_search_vector() -> SearchVector:
    """The indexed expression over a prompt: its messages' contents, not the JSON keys."""
    contents = Func(F("messages"), Value("$[*].content"), function="jsonb_path_query_array")
    return SearchVector(Cast(contents, TextField()), config=SEARCH_CONFIG)


def completion_search_vector() -> SearchVector:
    return SearchVector("text", config=SEARCH_CONFIG)


def _matching(words: str) -> Q:
    if connection.vendor != "postgresql":
        return Q(prompt__messages__icontains=words) | Q(
            pk__in=ItemCompletion.objects.filter(completion__text__icontains=words).values(
                "item_id"
            )
        )
    query = SearchQuery(words, config=SEARCH_CONFIG, search_type="websearch")
    prompts = Prompt.objects.annotate(found=prompt_search_vector()).filter(found=query)
    completions = Completion.objects.annotate(found=completion_search_vector()).filter(found=query)
    return Q(prompt_id__in=prompts.values("id")) | Q(
        pk__in=ItemCompletion.objects.filter(completion_id__in=completions.values("id")).values(
            "item_id"
        )
    )


def _with_origin(origin: str) -> Q:
    return Q(
        *[
            Exists(model.objects.filter(item_id=OuterRef("pk"), origin=origin))
            for model in JUDGEMENT_MODELS
        ],
        _connector=Q.OR,
    )


def records_for_project(*, project: Project, filters: RecordFilters) -> QuerySet[Item]:
    """Newest first, ready for a page of rows (prompt and completions loaded)."""
    items = Item.objects.filter(project=project)
    if filters.q:
        items = items.filter(_matching(filters.q))
    if filters.split:
        items = items.filter(prompt__split=filters.split)
    if filters.kind:
        items = items.filter(kind=filters.kind)
    if filters.origin:
        items = items.filter(_with_origin(filters.origin))
    if filters.status == "complete":
        items = items.filter(submitted_count__gte=project.overlap)
    elif filters.status == "open":
        items = items.filter(submitted_count__lt=project.overlap)
    if filters.annotator:
        items = items.filter(
            Exists(
                Assignment.objects.filter(
                    item_id=OuterRef("pk"),
                    annotator__username=filters.annotator,
                    status=AssignmentStatus.SUBMITTED,
                )
            )
        )
    if filters.gold:
        items = items.filter(is_gold=filters.gold == "yes")
    return (
        items.select_related("prompt")
        .prefetch_related("item_completions__completion")
        .order_by("-id")
    )


def record_annotators(*, project: Project) -> list[str]:
    """Usernames with submitted work in the project, for the annotator filter."""
    return list(
        Assignment.objects.filter(item__project=project, status=AssignmentStatus.SUBMITTED)
        .values_list("annotator__username", flat=True)
        .distinct()
        .order_by("annotator__username")
    )


@dataclass(frozen=True)
class JudgementRow:
    judgement: Any  # Demonstration, PairwiseJudgement or RankingJudgement
    answer: str  # "A is better (clearly)", "reply 2 > reply 1 = reply 3"; a demonstration: ""


@dataclass(frozen=True)
class RecordDetail:
    item: Item
    completions: list[Completion]  # canonical order: reply 1 is position 0 (side A)
    judgements: list[JudgementRow]  # oldest first


def record_detail(*, item: Item) -> RecordDetail:
    completions = [ic.completion for ic in item.item_completions.select_related("completion")]
    names = {c.pk: f"reply {n}" for n, c in enumerate(completions, start=1)}
    found: list[Any] = []
    for model in JUDGEMENT_MODELS:
        found += model.objects.filter(item=item).select_related("annotator")
    found.sort(key=lambda judgement: judgement.created_at)
    rows = [JudgementRow(judgement, _answer(judgement, names)) for judgement in found]
    return RecordDetail(item=item, completions=completions, judgements=rows)


def _answer(judgement: Any, names: dict[int, str]) -> str:
    if isinstance(judgement, PairwiseJudgement):
        strength = f" ({judgement.get_strength_display().lower()})" if judgement.strength else ""
        return judgement.get_choice_display() + strength
    if isinstance(judgement, RankingJudgement):
        groups = [
            " = ".join(names.get(cid, f"#{cid}") for cid in group) for group in judgement.ranking
        ]
        return " > ".join(groups)
    return ""
