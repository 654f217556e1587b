"""The records browser: a project's items found by words and filters, a page at a time, and one
item in full.

Search is PostgreSQL full-text search (English stemming, web-search syntax: `"exact phrase"`,
`-word`, `or`) over the prompts' message texts and the completions, through the `search` columns
migration 0019 adds (the text's tsvector, stored with the row and GIN-indexed; an import's rows
get theirs just after it commits, and are matched meanwhile by computing them, see `matching`);
SQLite, the laptop default, falls back to a plain case-insensitive substring match.

A page of a million records stays fast (bench/records_browser.py) because nothing scans what the
page does not show:

- Every OR of the filters (the words in the prompt *or* in a reply; a judgement of that origin
  in any of the three judgement tables) is split into branches, and a page is the union of one
  query per combination of branches. PostgreSQL plans an OR of subqueries by computing each
  subquery in full (hashed), which for a common word is most of the project; each branch on its
  own is a plain semi-join, which it weighs against the LIMIT: walk the newest records and test
  each (a common word), or collect the few matches from an index (a rare one).
- Records are counted up to COUNT_CAP, within COUNT_BUDGET_MS; beyond either the page says "more
  than N" and pages by the ids at its edges (`?before=` / `?after=`) instead of by number, so a
  deep page costs what the first one does.
"""

from __future__ import annotations

import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, fields
from typing import Any

from django.contrib.auth import get_user_model
from django.contrib.postgres.search import SearchQuery, SearchVector, SearchVectorField
from django.core.cache import cache
from django.db import OperationalError, connection, transaction
from django.db.models import (
    BooleanField,
    Exists,
    Expression,
    F,
    Func,
    OuterRef,
    Q,
    QuerySet,
    TextField,
    Value,
)
from django.db.models.expressions import Col
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
PAGE_SIZE = 25
COUNT_CAP = 1000  # records counted exactly; more and the page says "more than 1,000"
COUNT_BUDGET_MS = 60  # the count gives up after this long: "more than" what it found by then
COUNT_CHUNK = 100
PAGE_BUDGET_MS = 3000  # a page's queries are stopped after this long (each)
NUMBERED_PAGES = COUNT_CAP // PAGE_SIZE  # pages with a number when there are too many to count
MATCHES_LISTED = 10_000  # prompts (or replies) a search names one by one; more are "common"
TEXT_BUDGET_MS = 60  # to find them; slower, and they are treated as common
ANNOTATORS_CACHED_S = 60


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


def _search_field() -> SearchVectorField:
    field = SearchVectorField()
    field.set_attributes_from_name("search")
    return field


class SearchDocument(Expression):
    """The `search` column of the query's own table (prompts and completions, PostgreSQL only):
    the text's tsvector, which PostgreSQL computes and stores with each row (migrations 0019,
    0023), or NULL for an import's rows not indexed yet (feedback.services.search).

    The models do not declare it: SQLite has no tsvector, and the import's COPY lists the
    model's columns, leaving it NULL. So this names the column on the
    table the query starts from, under whatever alias the query gives that table."""

    output_field = SearchVectorField()
    column = _search_field()

    def resolve_expression(self, query=None, *args: Any, **kwargs: Any) -> Col:
        return Col(query.get_initial_alias(), self.column, output_field=SearchVectorField())


# The texts the vectors are of, as the migrations compute them (0019, 0023).
SEARCHED_TEXT = {
    Prompt: lambda: Cast(
        Func(F("messages"), Value("$[*].content"), function="jsonb_path_query_array"),
        TextField(),
    ),
    Completion: lambda: F("text"),
}


def matching(model: type[Prompt] | type[Completion], query: SearchQuery) -> QuerySet:
    """The prompts (or completions) whose text matches: by their stored vectors, through the
    GIN index, and those an import left unindexed for now (feedback.services.search) by
    computing theirs, found through the partial index of the rows with none."""
    # SearchVector writes to_tsvector(config, COALESCE(text::text, '')): the trigger's vector.
    live = SearchVector(SEARCHED_TEXT[model](), config=SEARCH_CONFIG)
    return model.objects.alias(found=SearchDocument(), live=live).filter(
        Q(found=query) | Q(found__isnull=True, live=query)
    )


def search_catching_up() -> bool:
    """Whether some texts still wait for their search vectors (an import's, for a minute or
    two after it commits: feedback.services.search)."""
    if connection.vendor != "postgresql":
        return False
    pending = [
        f"EXISTS (SELECT FROM {connection.ops.quote_name(model._meta.db_table)} "
        "WHERE search IS NULL)"
        for model in SEARCHED_TEXT
    ]
    with connection.cursor() as cursor:
        cursor.execute(f"SELECT {' OR '.join(pending)}")
        return cursor.fetchone()[0]


def _text_branches(project: Project, words: str) -> list[Q]:
    """Where the words may be: in the prompt, or in one of the item's replies.

    PostgreSQL estimates how many texts match from statistics that know the common words
    only: a rare word or a phrase can be guessed a hundred times too common, and it then walks
    the newest records testing each for a match that hardly ever comes. So the matching
    prompts and replies are looked up first, through the GIN index, when there are at most
    MATCHES_LISTED of them (found within TEXT_BUDGET_MS); the branches then name them, and the
    planner knows their number. More than that, and they are common enough for the walk."""
    if connection.vendor != "postgresql":
        replies = ItemCompletion.objects.filter(completion__text__icontains=words)
        return [Q(prompt__messages__icontains=words), Q(pk__in=replies.values("item_id"))]
    query = SearchQuery(words, config=SEARCH_CONFIG, search_type="websearch")
    prompts, completions = matching(Prompt, query), matching(Completion, query)
    deadline = time.perf_counter() + TEXT_BUDGET_MS / 1000
    listed = _ids_if_few(prompts.filter(project=project), deadline)
    in_prompt = Q(prompt__in=prompts) if listed is None else Q(AnyOf("prompt_id", listed))
    # Replies of every project: asking for this one's would join each to its prompt.
    listed = _ids_if_few(completions, deadline)
    replies = ItemCompletion.objects.filter(
        Q(completion__in=completions) if listed is None else Q(AnyOf("completion_id", listed))
    )
    return [in_prompt, Q(pk__in=replies.values("item_id"))]


class AnyOf(Expression):
    """`column = ANY(ids)`, the ids sent as one array (PostgreSQL): two thousand ids are one
    parameter rather than two thousand placeholders for Django to write and the server to
    parse."""

    output_field = BooleanField()

    def __init__(self, column: str, ids: list[int]) -> None:
        super().__init__()
        self.column, self.ids = F(column), ids

    def get_source_expressions(self) -> list:
        return [self.column]

    def set_source_expressions(self, expressions: list) -> None:
        (self.column,) = expressions

    def as_sql(self, compiler, connection) -> tuple[str, tuple]:
        sql, params = compiler.compile(self.column)
        return f"{sql} = ANY(%s::bigint[])", (*params, self.ids)


def _ids_if_few(matching: QuerySet, deadline: float) -> list[int] | None:
    """The ids of the rows found, when at most MATCHES_LISTED by the deadline."""
    try:
        with _time_limit() as limit:
            limit(deadline)
            ids = list(matching.values_list("pk", flat=True)[: MATCHES_LISTED + 1])
    except _Cancelled:
        return None
    return ids if len(ids) <= MATCHES_LISTED else None


def _origin_branches(origin: str) -> list[Q]:
    """A judgement of this origin in each judgement table."""
    return [
        Q(Exists(model.objects.filter(item_id=OuterRef("pk"), origin=origin)))
        for model in JUDGEMENT_MODELS
    ]


def _filtered(project: Project, filters: RecordFilters) -> tuple[QuerySet[Item], list[list[Q]]]:
    """The project's items with the plain filters applied, and the filters that are an OR of
    branches (a record passes one of them when it passes any of its branches)."""
    items = Item.objects.filter(project=project)
    if filters.split:
        items = items.filter(prompt__split=filters.split)
    if filters.kind:
        items = items.filter(kind=filters.kind)
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
    alternatives = []
    if filters.q:
        alternatives.append(_text_branches(project, filters.q))
    if filters.origin:
        alternatives.append(_origin_branches(filters.origin))
    return items, alternatives


def records_for_project(*, project: Project, filters: RecordFilters) -> QuerySet[Item]:
    """Every record found, newest first, with prompt and completions loaded: for a few thousand
    records at most (records_page is what the browser pages through)."""
    items, alternatives = _filtered(project, filters)
    for branches in alternatives:
        items = items.filter(Q(*branches, _connector=Q.OR))
    return (
        items.select_related("prompt")
        .prefetch_related("item_completions__completion")
        .order_by("-id")
    )


@dataclass(frozen=True)
class RecordsPage:
    records: list[Item]  # newest first, prompt and completions loaded
    count: int | None  # how many records were found; None when more than `more_than`
    more_than: int  # with count None: COUNT_CAP, or what the count found before giving up
    number: int | None  # paging by number: this page's number (None: paging by ids)
    num_pages: int | None  # known with the count
    newer: dict[str, int] | None  # the parameters of the page before this one ({"page": 2})
    older: dict[str, int] | None  # and after it ({"page": 4} or {"before": id})
    too_slow: bool = False  # the search ran past PAGE_BUDGET_MS and was stopped


def _positive(value: str | None) -> int | None:
    value = (value or "").strip()
    return int(value) if value.isdigit() and 0 < int(value) < 2**63 else None


def records_page(
    *,
    project: Project,
    filters: RecordFilters,
    page: str | None = None,
    before: str | None = None,
    after: str | None = None,
) -> RecordsPage:
    """One page of the records found, newest first: page `page` (1 when missing or invalid, the
    last one when past it), or the PAGE_SIZE records just older than id `before` or just newer
    than id `after` (what the links of a page say when there are too many to count)."""
    items, alternatives = _filtered(project, filters)
    branches = [items]  # one query for every combination of branches: the union is the result
    for alternative in alternatives:
        branches = [found.filter(branch) for found in branches for branch in alternative]
    try:
        with _time_limit() as limit:
            # A safety net, not a budget: a phrase of two common words that hardly ever meet
            # has PostgreSQL test record after record; a sync web worker must not hang on it.
            limit(time.perf_counter() + PAGE_BUDGET_MS / 1000)
            return _page(branches, page, before, after)
    except _Cancelled:
        return RecordsPage([], None, 0, None, None, None, None, too_slow=True)


def _page(
    branches: list[QuerySet[Item]], page: str | None, before: str | None, after: str | None
) -> RecordsPage:
    number = _positive(page) or 1
    older_than, newer_than = _positive(before), _positive(after)
    first: list[int] | None = None
    if number == 1 and not (older_than or newer_than):
        first = _newest(branches, PAGE_SIZE + 1)
        if len(first) <= PAGE_SIZE:  # everything fits the first page: that was the count too
            return RecordsPage(_load(first), len(first), len(first), 1, 1, None, None)
    count, more_than = _count(branches)
    if count is not None:
        num_pages = max(1, -(-count // PAGE_SIZE))
        number = min(number, num_pages) if not (older_than or newer_than) else 1
        offset = (number - 1) * PAGE_SIZE
        ids = (first or _newest(branches, offset + PAGE_SIZE))[offset : offset + PAGE_SIZE]
        newer = {"page": number - 1} if number > 1 else None
        older = {"page": number + 1} if number < num_pages else None
        return RecordsPage(_load(ids), count, count, number, num_pages, newer, older)
    if newer_than:
        ids = _oldest(branches, PAGE_SIZE + 1, above=newer_than)
        if len(ids) > PAGE_SIZE:  # a whole page newer than `after`, and more besides
            ids = ids[:PAGE_SIZE][::-1]
            newer, older = {"after": ids[0]}, {"before": ids[-1]}
            return RecordsPage(_load(ids), None, more_than, None, None, newer, older)
        older_than, number = None, 1  # less than a page newer: that is the first page
    if older_than:
        ids = _newest(branches, PAGE_SIZE + 1, below=older_than)
        older = {"before": ids[PAGE_SIZE - 1]} if len(ids) > PAGE_SIZE else None
        ids = ids[:PAGE_SIZE]
        newer = {"after": ids[0]} if ids else {"page": 1}
        more_than = max(more_than, len(ids))
        return RecordsPage(_load(ids), None, more_than, None, None, newer, older)
    number = min(number, NUMBERED_PAGES)
    offset = (number - 1) * PAGE_SIZE
    ids = (first or _newest(branches, offset + PAGE_SIZE + 1))[offset:]
    older = {"before": ids[PAGE_SIZE - 1]} if len(ids) > PAGE_SIZE else None
    newer = {"page": number - 1} if number > 1 else None
    more_than = max(more_than, offset + min(len(ids), PAGE_SIZE))  # the count may have given up
    return RecordsPage(_load(ids[:PAGE_SIZE]), None, more_than, number, None, newer, older)


def _newest(branches: list[QuerySet[Item]], n: int, *, below: int | None = None) -> list[int]:
    """The ids of the n newest records found (older than `below`)."""
    found: set[int] = set()
    for items in branches:
        if below is not None:
            items = items.filter(pk__lt=below)
        found.update(items.order_by("-pk").values_list("pk", flat=True)[:n])
    return sorted(found, reverse=True)[:n]


def _oldest(branches: list[QuerySet[Item]], n: int, *, above: int) -> list[int]:
    """The ids of the n records found just newer than `above`, oldest first."""
    found: set[int] = set()
    for items in branches:
        found.update(items.filter(pk__gt=above).order_by("pk").values_list("pk", flat=True)[:n])
    return sorted(found)[:n]


def _count(branches: list[QuerySet[Item]]) -> tuple[int | None, int]:
    """(how many records the branches find together, or None when more than COUNT_CAP or not
    known within COUNT_BUDGET_MS; the number known to match).

    The ids come through a cursor, COUNT_CHUNK at a time, so that a count that runs out of time
    still knows how many it had found ("more than 340", not "more than 25")."""
    found: set[int] = set()
    deadline = time.perf_counter() + COUNT_BUDGET_MS / 1000
    try:
        with _time_limit() as limit:
            for items in branches:
                limit(deadline)
                # Newest first, like a page: unordered, PostgreSQL may merge-join in some
                # other order and wade through other projects' rows before this one's.
                ids = items.order_by("-pk").values_list("pk", flat=True)[: COUNT_CAP + 1]
                for pk in ids.iterator(chunk_size=COUNT_CHUNK):
                    found.add(pk)
                    if len(found) > COUNT_CAP:
                        return None, COUNT_CAP
                    if time.perf_counter() > deadline:
                        raise _Cancelled
    except _Cancelled:
        return None, len(found)
    return len(found), len(found)


class _Cancelled(Exception):
    """A statement ran past its time limit."""


@contextlib.contextmanager
def _time_limit() -> Iterator:
    """A function `limit(deadline)` that cancels the next statements at that time.perf_counter()
    (PostgreSQL's statement_timeout; elsewhere only the check that it is not past already). A
    statement cancelled, or the deadline past, raises _Cancelled; a savepoint keeps the
    connection usable either way.

    Cursors in the block are planned for all their rows (cursor_tuple_fraction 1): the counts
    read theirs a chunk at a time, and planned for a fast first tenth, a count of a rare
    word's records walked the newest records one by one instead of looking its few up."""

    def limit(deadline: float) -> None:
        left = int(1000 * (deadline - time.perf_counter()))
        if left <= 0:
            raise _Cancelled
        if connection.vendor == "postgresql":
            with connection.cursor() as cursor:
                cursor.execute("SELECT set_config('statement_timeout', %s, true)", [str(left)])

    if connection.vendor != "postgresql":
        yield limit
        return
    from psycopg.errors import QueryCanceled

    try:
        with transaction.atomic(), connection.cursor() as cursor:
            # set_config(..., true) lasts until the transaction ends, which may be an outer one:
            # put the old value back when done (a rollback to the savepoint does that itself).
            cursor.execute(
                "SELECT current_setting('statement_timeout'), "
                "current_setting('cursor_tuple_fraction'), "
                "set_config('cursor_tuple_fraction', '1', true)"
            )
            timeout, fraction, _ = cursor.fetchone()
            yield limit
            cursor.execute(
                "SELECT set_config('statement_timeout', %s, true), "
                "set_config('cursor_tuple_fraction', %s, true)",
                [timeout, fraction],
            )
    except OperationalError as exc:
        if isinstance(exc.__cause__, QueryCanceled):
            raise _Cancelled from exc
        raise


def _load(ids: list[int]) -> list[Item]:
    return list(
        Item.objects.filter(pk__in=ids)
        .select_related("prompt")
        .prefetch_related("item_completions__completion")
        .order_by("-id")
    )


def record_annotators(*, project: Project) -> list[str]:
    """Usernames with submitted work in the project, for the annotator filter (kept a minute in
    the cache: a newcomer's name shows up within a minute of their first submission).

    One probe per user down the assignments' (annotator, status) index until one on an item of
    this project turns up, rather than a DISTINCT over every assignment of the project (a
    million rows for a big one). A user whose submitted work is all elsewhere costs a walk
    through that work: a second on a site whose other projects hold a few hundred thousand
    judgements, hence the cache."""
    key = f"records:annotators:{project.pk}:{project.created_at.timestamp()}"
    return cache.get_or_set(key, lambda: _annotators(project), ANNOTATORS_CACHED_S)


def _annotators(project: Project) -> list[str]:
    worked = Assignment.objects.filter(
        annotator=OuterRef("pk"), status=AssignmentStatus.SUBMITTED, item__project=project
    )
    users = get_user_model().objects.filter(Exists(worked))
    return list(users.order_by("username").values_list("username", flat=True))


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
