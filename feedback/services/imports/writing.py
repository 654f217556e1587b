"""Writing validated rows into a project, one batch at a time with a fixed number of queries.

For each batch: find which prompts and import keys the project already has, then insert the new
prompts, completions, items and item positions, and for judged shapes (preference, sft) an
assignment of the imported-labels owner (see `owner`) with its imported judgement. A row whose
items all exist already counts as a skipped duplicate, which is what makes a second import add
nothing.

A batch's lookups are made before the previous batch is written, so that on PostgreSQL (see
`postgres`) they reach the server while this thread encodes that batch: what they cannot see,
the previous batch's own keys and new prompts, the writer remembers and adds. Other databases
(SQLite) get the same rows through bulk_create, one statement after another.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from datetime import datetime
from itertools import combinations
from typing import Any, Protocol

from django.contrib.auth.models import AbstractBaseUser
from django.db import connection
from django.db.models import Model
from django.utils import timezone

from feedback.models import (
    Assignment,
    AssignmentStatus,
    Completion,
    CompletionSource,
    Demonstration,
    DemonstrationStatus,
    Item,
    ItemCompletion,
    Origin,
    PairwiseJudgement,
    Project,
    Prompt,
    TaskKind,
)

from .parsing import ImportOptions, ParsedRow
from .postgres import Postgres
from .readers import BATCH

_JUDGED = ("sft", "preference")  # shapes that arrive with their label


@dataclass
class _Plan:
    """One item a row makes: its kind, which of the row's completions, and its import key."""

    row: ParsedRow
    kind: str
    indices: list[int]
    key: str


@dataclass
class _Prepared:
    """A batch whose lookups are under way."""

    rows: list[ParsedRow]
    plans: list[_Plan]
    found: Callable[[], tuple[set[str], dict[str, int]]]  # waits for the lookups


class BatchWriter:
    """Writes batches of valid rows into `project`; counts what it created in `created`.

    `write` takes a batch and writes the one given before it, and `flush` the last one: a
    batch's lookups run before the previous batch is written (they overlap its encoding), and
    what they miss, the previous batch's own import keys and new prompts, is kept here until
    the next batch. The invariant that makes it right: a lookup sees every batch but the one
    written just after it."""

    def __init__(
        self,
        *,
        project: Project,
        owner: AbstractBaseUser,
        options: ImportOptions,
        source: str,
        db: Database,
    ) -> None:
        self.project, self.owner, self.options, self.source = project, owner, options, source
        self.db = db
        self.insert = db.insert
        self.created = {"prompts": 0, "completions": 0, "items": 0, "judgements": 0}
        self._pending: _Prepared | None = None
        # What the last batch written added, which the pending batch's lookups did not see.
        self._last_keys: set[str] = set()
        self._last_prompts: dict[str, int] = {}
        # Into a project that had no import keys (or no prompts) before, a key (a prompt) can
        # only exist if this import added it: only those the filter says it may have added
        # are looked up. A row that another transaction adds meanwhile makes the COPY fail
        # on the unique index, as it would were it added between a lookup and the COPY.
        had_keys, had_prompts = db.imported_before(project)
        self._keys_added = None if had_keys else _Added()
        self._prompts_added = None if had_prompts else _Added()

    def write(self, batch: list[ParsedRow]) -> int:
        """Start `batch` and write the batch before it; returns how many of that batch's rows
        had been imported before."""
        prepared = self._prepare(batch) if batch else None
        skipped = self.flush()
        self._pending = prepared
        return skipped

    def flush(self) -> int:
        """Write the batch given last, if any; returns its rows imported before."""
        pending, self._pending = self._pending, None
        return self._write(pending) if pending else 0

    def _prepare(self, batch: list[ParsedRow]) -> _Prepared:
        plans = [_Plan(row, *plan) for row in batch for plan in item_plans(row, self.options)]
        prompt_rows = [row for row in batch if row.shape == "prompts"]
        keys = [plan.key for plan in plans]
        if self._keys_added is not None:
            keys = self._keys_added.among(keys)
        maybe_prompts = None
        if self._prompts_added is not None:
            hashes = {plan.row.prompt_hash for plan in plans}
            maybe_prompts = set(
                self._prompts_added.among([*hashes, *(r.prompt_hash for r in prompt_rows)])
            )

        def hashes_for(existing: set[str]) -> set[str]:
            # Prompts are looked up only for rows that may add something: a re-imported file,
            # whose items all exist, costs one lookup per batch.
            hashes = {plan.row.prompt_hash for plan in plans if plan.key not in existing}
            hashes |= {row.prompt_hash for row in prompt_rows}
            return hashes if maybe_prompts is None else hashes & maybe_prompts

        if not keys and maybe_prompts == set():
            found = _nothing_found  # nothing this import may have added, nothing from before
        else:
            found = self.db.lookup(self.project, keys, hashes_for)
        return _Prepared(batch, plans, found)

    def _write(self, prepared: _Prepared) -> int:
        now = timezone.now()
        batch, plans = prepared.rows, prepared.plans
        existing, prompt_ids = prepared.found()
        last_keys, last_prompts = self._last_keys, self._last_prompts
        fresh, seen = [], set()
        for plan in plans:
            key = plan.key
            if key not in existing and key not in last_keys and key not in seen:
                fresh.append(plan)
                seen.add(key)
        skipped = len({id(p.row) for p in plans} - {id(p.row) for p in fresh})
        needing = [plan.row for plan in fresh] + [row for row in batch if row.shape == "prompts"]
        for row in needing:
            if row.prompt_hash in last_prompts:
                prompt_ids[row.prompt_hash] = last_prompts[row.prompt_hash]
        existed = set(prompt_ids)
        new_prompts = self._prompts(needing, prompt_ids, now)
        skipped += sum(1 for row in batch if row.shape == "prompts" and row.prompt_hash in existed)
        self._last_keys, self._last_prompts = seen, new_prompts
        if self._keys_added is not None:
            self._keys_added.add(list(seen))
        if self._prompts_added is not None:
            self._prompts_added.add(list(new_prompts))
        if not fresh:
            return skipped

        completion_ids = self._completions(fresh, prompt_ids, now)
        item_ids = self.insert(
            Item,
            # submitted_count stays 0: it counts the human slots taken, and an imported label
            # takes none.
            ("kind", "prompt_id", "import_key", "metadata"),
            [
                (plan.kind, prompt_ids[plan.row.prompt_hash], plan.key, plan.row.metadata)
                for plan in fresh
            ],
            same={"project_id": self.project.pk, "created_at": now},
            returning_ids=True,
        )
        self.insert(
            ItemCompletion,
            ("item_id", "completion_id", "position"),
            [
                (item_id, completion_ids[(id(plan.row), index)], position)
                for item_id, plan in zip(item_ids, fresh, strict=True)
                for position, index in enumerate(plan.indices)
            ],
        )
        self.created["completions"] += len(completion_ids)
        self.created["items"] += len(item_ids)
        self.created["judgements"] += _write_judgements(self, item_ids, fresh, now)
        return skipped

    def _prompts(self, rows: list[ParsedRow], ids: dict[str, int], now: datetime) -> dict[str, int]:
        """Insert the prompts of these rows that `ids` lacks and add them to it; returns
        {hash: id} of those inserted."""
        new: dict[str, ParsedRow] = {}
        for row in rows:
            if row.prompt_hash not in ids:
                new.setdefault(row.prompt_hash, row)
        new_ids = self.insert(
            Prompt,
            ("content_hash", "system", "messages", "split", "tags", "external_id"),
            [
                (digest, row.system, row.messages, row.split, row.tags, row.external_id)
                for digest, row in new.items()
            ],
            same={"project_id": self.project.pk, "source": self.source, "created_at": now},
            returning_ids=True,
        )
        inserted = dict(zip(new, new_ids, strict=True))
        ids.update(inserted)
        self.created["prompts"] += len(new)
        return inserted

    def _completions(self, fresh: list[_Plan], prompt_ids: dict[str, int], now: datetime) -> dict:
        """Insert the completions the new items use, each once; {(id(row), index): id}."""
        keys: dict[tuple[int, int], None] = {}  # a dict as an ordered set
        rows = []
        for plan in fresh:
            for index in plan.indices:
                if (id(plan.row), index) not in keys:
                    keys[(id(plan.row), index)] = None
                    rows.append((prompt_ids[plan.row.prompt_hash], *plan.row.completions[index]))
        ids = self.insert(
            Completion,
            ("prompt_id", "text", "model_name"),
            rows,
            same={
                "source": CompletionSource.MODEL,
                "generation_params": {"imported_from": self.source} if self.source else {},
                "created_at": now,
            },
            returning_ids=True,
        )
        return dict(zip(keys, ids, strict=True))


def _nothing_found() -> tuple[set[str], dict[str, int]]:
    return set(), {}


class _Added:
    """The hex digests (import keys, prompt hashes) an import has added, as a Bloom filter:
    `among` may keep a digest that was not added (about 1 in 100,000 at a million added, 1 in
    230 at the largest import allowed), never drops one that was. Its size is fixed, so
    memory does not grow with the file. The digests are sha256 already: four 32-bit words of
    each are its four positions."""

    _BITS = 1 << 26  # 8 MB

    def __init__(self) -> None:
        import numpy as np

        self._np = np
        self._bits = np.zeros(self._BITS // 8, dtype=np.uint8)

    def _positions(self, digests: list[str]):
        words = bytes.fromhex("".join(digest[:32] for digest in digests))
        return self._np.frombuffer(words, dtype="<u4").reshape(-1, 4) & (self._BITS - 1)

    def add(self, digests: list[str]) -> None:
        if digests:
            positions = self._positions(digests).ravel()
            masks = self._np.left_shift(1, positions & 7).astype(self._np.uint8)
            self._np.bitwise_or.at(self._bits, positions >> 3, masks)

    def among(self, digests: list[str]) -> list[str]:
        """Those of `digests` that may have been added."""
        if not digests:
            return []
        positions = self._positions(digests)
        hits = (self._bits[positions >> 3] >> (positions & 7).astype(self._np.uint8)) & 1
        return [digest for digest, hit in zip(digests, hits.all(axis=1), strict=True) if hit]


def item_plans(row: ParsedRow, options: ImportOptions) -> list[tuple[str, list[int], str]]:
    """(kind, completion indices, import key) for every item a row makes."""
    if row.shape == "prompts":
        return []
    if row.shape == "sft":
        return [(TaskKind.DEMONSTRATION, [], row.key)]
    if row.shape == "preference":
        return [(TaskKind.PAIRWISE, [0, 1], row.key)]
    n = len(row.completions)
    if options.comparison_mode == "ranking":
        return [(TaskKind.RANKING, list(range(n)), row.key)]
    pairs = {
        "all_pairs": list(combinations(range(n), 2)),
        "adjacent": [(i, i + 1) for i in range(n - 1)],
        "first_vs_rest": [(0, i) for i in range(1, n)],
    }[options.pairing]
    return [
        (TaskKind.PAIRWISE, list(pair), hashlib.sha256(f"{row.key}:{pair}".encode()).hexdigest())
        for pair in pairs
    ]


def _write_judgements(
    writer: BatchWriter, item_ids: list[int], plans: list[_Plan], now: datetime
) -> int:
    """Imported labels hang off assignments like any other judgement, owned by the imported-
    labels owner with the status `imported`: no person's work, and none of the item's slots."""
    judged = [
        (item_id, plan.row)
        for item_id, plan in zip(item_ids, plans, strict=True)
        if plan.row.shape in _JUDGED
    ]
    if not judged:
        return 0
    assignment_ids = writer.insert(
        Assignment,
        ("item_id",),
        [(item_id,) for item_id, _ in judged],
        same={
            "project_id": writer.project.pk,
            "annotator_id": writer.owner.pk,
            "status": AssignmentStatus.IMPORTED,
            "leased_at": now,
            "expires_at": now,
            "finished_at": now,
        },
        returning_ids=True,
    )
    labelled = list(zip(assignment_ids, judged, strict=True))
    same = {
        "annotator_id": writer.owner.pk,
        "origin": Origin.IMPORTED,
        "source": writer.source[:200],
        "created_at": now,
        "updated_at": now,
    }
    demos = [
        (assignment_id, item_id, row.demonstration)
        for assignment_id, (item_id, row) in labelled
        if row.shape == "sft"
    ]
    pairs = [
        (assignment_id, item_id)
        for assignment_id, (item_id, row) in labelled
        if row.shape == "preference"
    ]
    writer.insert(
        Demonstration,
        ("assignment_id", "item_id", "text"),
        demos,
        same={**same, "status": DemonstrationStatus.ACCEPTED},
    )
    writer.insert(
        PairwiseJudgement,
        ("assignment_id", "item_id"),
        pairs,
        same={**same, "choice": "a", "strength": "", "shown_left": "a"},
    )
    return len(demos) + len(pairs)


# --- the database side --------------------------------------------------------------------------


class Database(Protocol):
    """What writing a batch needs from the database."""

    def insert(
        self,
        model: type[Model],
        columns: Sequence[str],
        rows: list[tuple],
        *,
        same: dict[str, Any] | None = None,
        returning_ids: bool = False,
    ) -> list[int]:
        """Insert `rows` (values of `columns`, by attname) with `same` in every row; the model's
        other fields get their defaults. Returns the new ids, in order, if asked. The rows may
        reach the database later, but before anything submitted after them."""

    def lookup(
        self, project: Project, keys: list[str], hashes_for: Callable[[set[str]], set[str]]
    ) -> Callable[[], tuple[set[str], dict[str, int]]]:
        """Start finding which of these import keys the project's items have, then
        {content hash: id} of its prompts with one of the hashes `hashes_for(those keys)`,
        each locked against deletion until the import commits. Returns a function that waits
        for both. The lookups see the rows inserted before this call, and maybe some after."""

    def imported_before(self, project: Project) -> tuple[bool, bool]:
        """Whether the project has items with an import key, and whether it has prompts."""

    def analyze_filled(self) -> None:
        """Refresh the planner's statistics of tables this import filled (call it only when
        the rows are staying: a failed import is rolled back, and its statistics with it)."""


@contextlib.contextmanager
def database(*, project: Project, owner: AbstractBaseUser) -> Iterator[Database]:
    """The way rows go in on this database, for one import into `project` whose labels `owner`
    holds (inside the import's transaction). Leaving the block waits until every row is in, and
    raises the first error any of them met."""
    if connection.vendor != "postgresql":
        yield _Orm()
        return
    import psycopg

    connection.ensure_connection()
    # A cursor of psycopg's own: Django's has no copy(), and binds parameters client-side,
    # which means quoting every key of the lookups' arrays into the SQL text.
    with psycopg.Cursor(connection.connection) as cursor:
        postgres = Postgres(cursor)
        stop = True
        try:
            with (
                postgres.search_later(),
                postgres.foreign_keys_by_construction(project=project, owner=owner),
            ):
                yield postgres
            stop = False
        finally:
            postgres.close(stop=stop)


class _Orm:
    """bulk_create and ORM lookups, one after the other: any database Django supports."""

    def insert(self, model, columns, rows, *, same=None, returning_ids=False) -> list[int]:
        objects = [model(**dict(zip(columns, row, strict=True)), **(same or {})) for row in rows]
        model.objects.bulk_create(objects, batch_size=BATCH)
        return [obj.pk for obj in objects] if returning_ids else []

    def lookup(self, project, keys, hashes_for):
        items = Item.objects.filter(project=project, import_key__in=keys)
        existing = set(items.values_list("import_key", flat=True)) if keys else set()
        hashes = hashes_for(existing)
        prompts = Prompt.objects.filter(project=project, content_hash__in=hashes)
        ids = dict(prompts.values_list("content_hash", "id")) if hashes else {}
        return lambda: (existing, ids)

    def imported_before(self, project: Project) -> tuple[bool, bool]:
        items = Item.objects.filter(project=project).exclude(import_key="")
        return items.exists(), Prompt.objects.filter(project=project).exists()

    def analyze_filled(self) -> None:
        pass  # SQLite and others: their statistics are not what slows the exports down
