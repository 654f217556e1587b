"""Writing validated rows into a project, one batch at a time with a fixed number of queries.

For each batch: find which prompts and import keys the project already has, then insert the new
prompts, completions, items and item positions, and for judged shapes (preference, sft) a
submitted assignment of the importing user with its imported judgement. A row whose items all
exist already counts as a skipped duplicate, which is what makes a second import add nothing.

On PostgreSQL rows go in with binary COPY: ids are drawn from the tables' sequences first, so a
row's references are known before it is sent and every table takes one COPY per batch. Foreign
keys are then checked at the end of each COPY rather than at commit, so the server never queues
millions of pending checks. Other databases (SQLite) get the same rows through bulk_create.
"""

from __future__ import annotations

import contextlib
import hashlib
import struct
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from itertools import combinations
from operator import call
from typing import Any, Protocol

import orjson
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
from .readers import BATCH

_JUDGED = ("sft", "preference")  # shapes that arrive with their label


@dataclass
class _Plan:
    """One item a row makes: its kind, which of the row's completions, and its import key."""

    row: ParsedRow
    kind: str
    indices: list[int]
    key: str


class BatchWriter:
    """Writes batches of valid rows into `project`; counts what it created in `created`."""

    def __init__(
        self,
        *,
        project: Project,
        user: AbstractBaseUser,
        options: ImportOptions,
        source: str,
        db: Database,
    ) -> None:
        self.project, self.user, self.options, self.source = project, user, options, source
        self.db = db
        self.insert = db.insert
        self.created = {"prompts": 0, "completions": 0, "items": 0, "judgements": 0}

    def write(self, batch: list[ParsedRow]) -> int:
        """Write one batch; returns how many of its rows had been imported before."""
        now = timezone.now()
        plans = [_Plan(row, *plan) for row in batch for plan in item_plans(row, self.options)]
        keys = [plan.key for plan in plans]
        existing = self.db.existing_keys(self.project, keys) if keys else set()
        fresh, seen = [], set()
        for plan in plans:
            if plan.key not in existing and plan.key not in seen:
                fresh.append(plan)
                seen.add(plan.key)
        skipped = len({id(p.row) for p in plans} - {id(p.row) for p in fresh})
        # Prompts are looked up only for rows that add something: a re-imported file, whose
        # items all exist, costs one lookup per batch.
        needing = [plan.row for plan in fresh] + [row for row in batch if row.shape == "prompts"]
        prompt_ids, existed = self._prompts(needing, now)
        skipped += sum(1 for row in batch if row.shape == "prompts" and row.prompt_hash in existed)
        if not fresh:
            return skipped

        completion_ids = self._completions(fresh, prompt_ids, now)
        item_ids = self.insert(
            Item,
            ("kind", "prompt_id", "import_key", "submitted_count"),
            [
                (
                    plan.kind,
                    prompt_ids[plan.row.prompt_hash],
                    plan.key,
                    int(plan.row.shape in _JUDGED),
                )
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

    def _prompts(self, rows: list[ParsedRow], now: datetime) -> tuple[dict[str, int], set[str]]:
        """{prompt hash: id} for each of these rows, and the hashes that existed before."""
        hashes = {row.prompt_hash for row in rows}
        ids = self.db.prompt_ids(self.project, hashes) if hashes else {}
        existed = set(ids)
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
        ids.update(zip(new, new_ids, strict=True))
        self.created["prompts"] += len(new)
        return ids, existed

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
    """Imported labels hang off submitted assignments of the importing user, like any other."""
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
            "annotator_id": writer.user.pk,
            "status": AssignmentStatus.SUBMITTED,
            "leased_at": now,
            "expires_at": now,
            "finished_at": now,
        },
        returning_ids=True,
    )
    labelled = list(zip(assignment_ids, judged, strict=True))
    same = {
        "annotator_id": writer.user.pk,
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
        other fields get their defaults. Returns the new ids, in order, if asked."""

    def prompt_ids(self, project: Project, hashes: set[str]) -> dict[str, int]:
        """{content hash: id} of the project's prompts with one of these hashes, each locked
        against deletion until the import commits."""

    def existing_keys(self, project: Project, keys: list[str]) -> set[str]:
        """Which of these import keys the project's items already have."""

    def analyze_filled(self) -> None:
        """Refresh the planner's statistics of tables this import filled (call it only when
        the rows are staying: a failed import is rolled back, and its statistics with it)."""


@contextlib.contextmanager
def database(*, project: Project, user: AbstractBaseUser) -> Iterator[Database]:
    """The way rows go in on this database, for one import into `project` by `user` (inside
    the import's transaction)."""
    if connection.vendor != "postgresql":
        yield _Orm()
        return
    import psycopg

    connection.ensure_connection()
    # A cursor of psycopg's own: Django's has no copy(), and binds parameters client-side,
    # which means quoting every key of the lookups' arrays into the SQL text.
    with psycopg.Cursor(connection.connection) as cursor:
        postgres = _Postgres(cursor)
        with postgres.foreign_keys_by_construction(project=project, user=user):
            yield postgres


class _Orm:
    """bulk_create and ORM lookups: any database Django supports."""

    def insert(self, model, columns, rows, *, same=None, returning_ids=False) -> list[int]:
        objects = [model(**dict(zip(columns, row, strict=True)), **(same or {})) for row in rows]
        model.objects.bulk_create(objects, batch_size=BATCH)
        return [obj.pk for obj in objects] if returning_ids else []

    def prompt_ids(self, project: Project, hashes: set[str]) -> dict[str, int]:
        prompts = Prompt.objects.filter(project=project, content_hash__in=hashes)
        return dict(prompts.values_list("content_hash", "id"))

    def existing_keys(self, project: Project, keys: list[str]) -> set[str]:
        items = Item.objects.filter(project=project, import_key__in=keys)
        return set(items.values_list("import_key", flat=True))

    def analyze_filled(self) -> None:
        pass  # SQLite and others: their statistics are not what slows the exports down


# An import refreshes a table's statistics itself when it added at least this many rows, and
# a tenth of what the statistics said the table held (autovacuum's own share,
# autovacuum_analyze_scale_factor): a few rows more in a large table leave its plans as they were.
_ANALYZE_AFTER = 10_000
_ANALYZE_SHARE = 0.1

# Binary COPY (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4): a
# signature, then per row a 16-bit field count and each field as a 32-bit length and bytes.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_LENGTH = struct.Struct(">i").pack
_FIELDS = struct.Struct(">h").pack
_INT8 = struct.Struct(">iq").pack  # length 8, then the value
_INT4 = struct.Struct(">ii").pack
_INT2 = struct.Struct(">ih").pack
_EPOCH = datetime(2000, 1, 1, tzinfo=UTC)  # PostgreSQL's timestamps count from here


def _text(value: str) -> bytes:
    data = value.encode()
    return _LENGTH(len(data)) + data


def _jsonb(value: Any) -> bytes:
    data = orjson.dumps(value)
    return _LENGTH(len(data) + 1) + b"\x01" + data  # version 1 of jsonb's binary format


def _timestamp(value: datetime) -> bytes:
    return _INT8(8, (value - _EPOCH) // timedelta(microseconds=1))


# Encoders by type oid, for the types these tables use (an unknown type fails loudly).
_ENCODERS: dict[int, Callable[[Any], bytes]] = {
    20: lambda value: _INT8(8, value),  # bigint
    23: lambda value: _INT4(4, value),  # integer
    21: lambda value: _INT2(2, value),  # smallint
    16: lambda value: b"\x00\x00\x00\x01" + (b"\x01" if value else b"\x00"),  # boolean
    25: _text,  # text
    1043: _text,  # varchar
    3802: _jsonb,  # jsonb
    1184: _timestamp,  # timestamptz
    701: lambda value: struct.pack(">id", 8, value),  # double precision
}


@dataclass(frozen=True)
class _CopyTarget:
    statement: str
    encoders: list[Callable[[Any], bytes]]  # for the values a row gives
    head: bytes  # the field count
    tail: bytes  # the encoded `same` values and defaults that follow them
    sequence: str

    def encode(self, rows: Iterable[tuple]) -> bytes:
        """The whole COPY stream for these rows. Built by hand rather than by psycopg's
        write_row, which looks up a dumper for every value, and which encodes the columns
        every row shares once per row: here they are encoded once per batch."""
        encoders, head, tail = self.encoders, self.head, self.tail
        parts = [_COPY_HEADER]
        for row in rows:
            parts += (head, *map(call, encoders, row), tail)
        parts.append(_COPY_TRAILER)
        return b"".join(parts)


class _Postgres:
    """Binary COPY, ids drawn from the sequences beforehand; lookups with one binary array
    parameter each (an IN list of a thousand placeholders costs more to build than to run)."""

    def __init__(self, cursor) -> None:
        self.cursor = cursor
        self.tables: dict[str, tuple[dict[str, int], str]] = {}  # column types, pk sequence
        self.inserted: Counter[str] = Counter()  # rows per table

    def analyze_filled(self) -> None:
        """ANALYZE the tables this import added many rows to for their size, before it commits.

        Autovacuum takes a minute or more to notice a large import, and until it does, plans
        use the statistics of the tables before it: an export run right after importing a
        million rows then plans its joins for a few hundred (nested loops and hash batches
        where sorted merges belong) and spends 5 times the server's CPU. ANALYZE inside the
        transaction counts its own new rows, costs a few hundred milliseconds per table at a
        million rows (it samples 30,000 rows), and is rolled back with the import.
        """
        quote = connection.ops.quote_name
        for table, rows in self.inserted.items():
            if rows < _ANALYZE_AFTER:
                continue
            # reltuples: what the last ANALYZE (or VACUUM) counted; -1 for never.
            [(counted,)] = self._fetch(
                "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table]
            )
            if rows >= _ANALYZE_SHARE * counted:
                self.execute(f"ANALYZE {quote(table)}")

    @contextlib.contextmanager
    def foreign_keys_by_construction(self, *, project: Project, user: AbstractBaseUser):
        """Foreign keys kept by construction instead of checked row by row, where allowed.

        PostgreSQL checks each foreign key of each new row with a query of its own: 14 per
        preference row, half the server's time in an import. Where this role may set
        session_replication_role (a superuser, or `GRANT SET ON PARAMETER
        session_replication_role`), those triggers are off while the rows go in, and what they
        guarantee is kept another way: every reference points at a row this transaction
        inserted (invisible to others until commit) or at a row it holds locked FOR KEY SHARE,
        as the triggers would have locked it: the project and user here, existing prompts in
        prompt_ids. Elsewhere the triggers stay on and run at the end of each COPY (deferred,
        they would queue one pending check per row until commit: server memory growing with
        the file).
        """
        quote = connection.ops.quote_name
        for row in (project, user):
            meta = row._meta
            self.execute(
                f"SELECT 1 FROM {quote(meta.db_table)} WHERE {quote(meta.pk.column)} = %s "
                "FOR KEY SHARE",
                [row.pk],
            )
        if self._may_turn_off_triggers():
            self.execute("SELECT set_config('session_replication_role', 'replica', true)")
            yield
            # Back on for the rest of the transaction, which may be a caller's.
            self.execute("SELECT set_config('session_replication_role', 'origin', true)")
        else:
            self.execute("SET CONSTRAINTS ALL IMMEDIATE")
            yield
            # Django makes every foreign key DEFERRABLE INITIALLY DEFERRED: back to that.
            self.execute("SET CONSTRAINTS ALL DEFERRED")
        # (After an error we never get here; rolling back restores both settings.)

    def _may_turn_off_triggers(self) -> bool:
        if connection.pg_version < 150000:  # no has_parameter_privilege before PostgreSQL 15
            sql = "SELECT current_setting('is_superuser') = 'on'"
        else:
            sql = "SELECT has_parameter_privilege('session_replication_role', 'SET')"
        return bool(self._fetch(sql, [])[0][0])

    def insert(self, model, columns, rows, *, same=None, returning_ids=False) -> list[int]:
        if not rows:
            return []
        target = self._target(model, tuple(columns), same or {}, returning_ids)
        with connection.wrap_database_errors:
            if returning_ids:
                ids = self._next_ids(target.sequence, len(rows))
                data = target.encode((pk, *row) for pk, row in zip(ids, rows, strict=True))
            else:
                ids, data = [], target.encode(rows)
            with self.cursor.copy(target.statement) as copy:
                copy.write(data)
        self.inserted[model._meta.db_table] += len(rows)
        return ids

    # Both lookups probe the project's unique index once per key, in a subquery per key that
    # the planner cannot turn into a join, with the project's id hidden from it in a sub-select.
    # Written as joins or `= ANY(keys)`, they let statistics taken before this import (which
    # say the project has no rows, while this transaction is filling it) pick a plan that reads
    # every row of the project for every batch: quadratic, and minutes at a million rows.

    def prompt_ids(self, project: Project, hashes: set[str]) -> dict[str, int]:
        table = connection.ops.quote_name(Prompt._meta.db_table)
        sql = (
            f"SELECT key, (SELECT id FROM {table} "
            "  WHERE project_id = (SELECT %s) AND content_hash = key FOR KEY SHARE) "
            "FROM unnest(%b::text[]) AS key"
        )
        rows = self._fetch(sql, [project.pk, list(hashes)])
        return {key: pk for key, pk in rows if pk is not None}

    def existing_keys(self, project: Project, keys: list[str]) -> set[str]:
        table = connection.ops.quote_name(Item._meta.db_table)
        # NOT (import_key = '') is the unique index's own condition, so that it may be used.
        sql = (
            f"SELECT key FROM unnest(%b::text[]) AS key WHERE (SELECT true FROM {table} "
            "  WHERE project_id = (SELECT %s) AND import_key = key AND NOT (import_key = ''))"
        )
        return {key for (key,) in self._fetch(sql, [keys, project.pk])}

    def execute(self, sql: str, params: list | None = None) -> None:
        with connection.wrap_database_errors:
            self.cursor.execute(sql, params)

    def _fetch(self, sql: str, params: list) -> list[tuple]:
        self.execute(sql, params)
        return self.cursor.fetchall()

    def _next_ids(self, sequence: str, n: int) -> list[int]:
        self.cursor.execute(
            "SELECT array(SELECT nextval(%s::regclass) FROM generate_series(1, %s))",
            [sequence, n],
        )
        return self.cursor.fetchone()[0]

    def _target(self, model, columns: tuple[str, ...], same: dict, with_pk: bool) -> _CopyTarget:
        fields = {f.attname: f for f in model._meta.concrete_fields}
        pk = model._meta.pk
        given = [pk.attname] if with_pk else []
        given += [*columns]
        rest = [f for name, f in fields.items() if name not in given and name not in same]
        rest = [f for f in rest if f is not pk]
        table = model._meta.db_table
        if table not in self.tables:
            types = self._fetch(
                "SELECT attname, atttypid FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [table],
            )
            [(sequence,)] = self._fetch("SELECT pg_get_serial_sequence(%s, %s)", [table, pk.column])
            self.tables[table] = (dict(types), sequence)
        types, sequence = self.tables[table]
        given_columns = [fields[name].column for name in given]
        tail = [(fields[name].column, value) for name, value in same.items()]
        tail += [(f.column, f.get_default()) for f in rest]
        names = given_columns + [column for column, _ in tail]
        quote = connection.ops.quote_name
        return _CopyTarget(
            statement=f"COPY {quote(table)} ({', '.join(map(quote, names))}) "
            "FROM STDIN (FORMAT BINARY)",
            encoders=[_ENCODERS[types[column]] for column in given_columns],
            head=_FIELDS(len(names)),
            tail=b"".join(
                _NULL if value is None else _ENCODERS[types[column]](value)
                for column, value in tail
            ),
            sequence=sequence,
        )
