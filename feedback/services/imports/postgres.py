"""Writing an import into PostgreSQL: binary COPY, sent by a thread of its own.

An import spends about as long in Python (reading, parsing, encoding) as PostgreSQL spends
ingesting what it sends. Run one after the other, the two take turns on a 2-core machine; here
they overlap. A thread, the *pipe*, owns the connection and runs its statements in the order
they were submitted, while the importing thread goes on encoding the next batch (psycopg
releases the GIL while it waits for the server). Nothing the importing thread does waits for
a batch it has sent:

- ids are drawn from the tables' sequences ahead of need (`_Ids`), so a row's references are
  known before it is sent;
- a batch's lookups (which import keys and prompts exist) are submitted before the previous
  batch's rows, and the importing thread adds what that batch inserted (see BatchWriter).

Every statement goes through the pipe, in order, in the import's transaction: the first error
stops it, and is raised to the importing thread at its next wait (a lookup, a statement whose
result it needs, the end); the transaction is then rolled back as with any other error.
"""

from __future__ import annotations

import contextlib
import functools
import queue
import struct
import sys
import threading
from collections import Counter, deque
from collections.abc import Callable, Iterable
from concurrent.futures import Future
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import partial
from typing import Any, TypeVar

import orjson
from django.conf import settings
from django.contrib.auth.models import AbstractBaseUser
from django.db import connection, transaction

from feedback.models import Item, Project, Prompt
from feedback.services.search import search_index_soon

T = TypeVar("T")

# An import refreshes a table's statistics itself when it added at least this many rows, and
# a tenth of what the statistics said the table held (autovacuum's own share,
# autovacuum_analyze_scale_factor): a few rows more in a large table leave its plans as they were.
_ANALYZE_AFTER = 10_000
_ANALYZE_SHARE = 0.1

# Ids are drawn when fewer than _IDS_LOW batches' worth are left, _IDS_DRAWN batches' worth at a
# time: the draw has run long before the batches that need it are encoded, the server sees one
# draw every few batches (each statement costs it a few milliseconds idle, while the writing
# thread waits for the interpreter), and an import leaves a gap of a few batches unused.
_IDS_LOW, _IDS_DRAWN = 2, 6

# Statements the pipe holds before the importing thread waits (a batch makes 6 to 10).
_PIPE_DEPTH = 10

# How long the importing thread may keep the interpreter when the pipe wants it back, after each
# wait on the server (Python's default is 5 ms): the server idles that long at every statement
# and every megabyte of COPY data. A tenth of a millisecond makes it idle a tenth of the import
# less than half a millisecond did, with a second thread reading ahead (measured at 200k rows).
_SWITCH_INTERVAL = 0.0001

# Binary COPY (https://www.postgresql.org/docs/current/sql-copy.html#id-1.9.3.55.9.4): a
# signature, then per row a 16-bit field count and each field as a 32-bit length and bytes.
_COPY_HEADER = b"PGCOPY\n\xff\r\n\x00" + bytes(8)  # signature, flags, header extension length
_COPY_TRAILER = b"\xff\xff"
_NULL = b"\xff\xff\xff\xff"
_LENGTH = struct.Struct(">i").pack
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


# The values rows give, by type oid, for the generated row encoders: fixed-size ones as a
# struct format character, variable-size ones as the expression of their bytes.
_FIXED = {20: "q", 23: "i", 21: "h", 16: "?", 701: "d"}  # bigint, integer, smallint, bool, float8
_VARIABLE = {25: "{}.encode()", 1043: "{}.encode()", 3802: "_dumps({})"}  # text, varchar, jsonb


@functools.cache
def _rows_encoder(types: tuple[int, ...], fields: int) -> Callable[[Iterable[tuple], bytes], bytes]:
    """encode(rows, tail): the COPY stream of rows of values of these types, each followed by
    `tail` (the encoded values every row shares), in a record of `fields` fields.

    Generated for the types at hand so that a row costs one struct.pack per run of fields up
    to the next variable-size value, instead of a call and a concatenation per value: it is
    the importing thread's hottest loop. (Built by hand rather than by psycopg's write_row,
    which looks up a dumper for every value, and encodes the shared columns once per row.)"""
    names: dict[str, Any] = {"_dumps": orjson.dumps, "_EPOCH": _EPOCH}
    names |= {"_MICROSECOND": timedelta(microseconds=1), "_HEADER": _COPY_HEADER}
    names |= {"_TRAILER": _COPY_TRAILER}
    values = [f"v{index}" for index in range(len(types))]
    body: list[str] = []
    pending = [">h", str(fields)]  # a struct format, then its arguments

    def pack() -> None:
        name = f"_pack{len(names)}"
        names[name] = struct.Struct(pending[0]).pack
        body.append(f"append({name}({', '.join(pending[1:])}))")
        pending[:] = [">"]

    for value, oid in zip(values, types, strict=True):
        if oid in _FIXED:
            code = _FIXED[oid]
            pending[0] += "i" + code
            pending += [str(struct.calcsize(">" + code)), value]
        elif oid == 1184:  # timestamptz: microseconds since 2000-01-01
            pending[0] += "iq"
            pending += ["8", f"({value} - _EPOCH) // _MICROSECOND"]
        else:
            body.append(f"b{value} = {_VARIABLE[oid].format(value)}")
            if oid == 3802:  # jsonb: a version byte (1), then the JSON text
                pending[0] += "iB"
                pending += [f"len(b{value}) + 1", "1"]
            else:
                pending[0] += "i"
                pending.append(f"len(b{value})")
            pack()
            body.append(f"append(b{value})")
    if len(pending) > 1:
        pack()
    source = (
        "def encode(rows, tail):\n"
        "    parts = [_HEADER]\n"
        "    append = parts.append\n"
        f"    for {', '.join(values)}, in rows:\n"
        + "".join(f"        {line}\n" for line in body)
        + "        append(tail)\n"
        "    append(_TRAILER)\n"
        "    return b''.join(parts)\n"
    )
    exec(source, names)
    return names["encode"]


@dataclass(frozen=True)
class _CopyTarget:
    statement: str
    encode_rows: Callable[[Iterable[tuple], bytes], bytes]
    tail: bytes  # the encoded `same` values and defaults that follow the values a row gives
    sequence: str

    def encode(self, rows: Iterable[tuple]) -> bytes:
        """The whole COPY stream for these rows."""
        return self.encode_rows(rows, self.tail)


class _Stopped(Exception):
    """What the pipe's remaining work gets when the import stopped for a reason of its own."""


class _Pipe:
    """Runs work on the connection in a thread of its own, in the order it was submitted."""

    def __init__(self) -> None:
        # Bounded: the importing thread waits rather than encode batches faster than the
        # server takes them (about two batches of statements, a few MB of COPY data each).
        self._work: queue.Queue[tuple[Callable[[], Any], Future] | None] = queue.Queue(
            maxsize=_PIPE_DEPTH
        )
        self._error: BaseException | None = None  # the first, which stops the rest
        self._thread = threading.Thread(target=self._run, name="import-writer", daemon=True)
        self._interval = sys.getswitchinterval()
        sys.setswitchinterval(min(self._interval, _SWITCH_INTERVAL))
        self._thread.start()

    def submit(self, work: Callable[[], T]) -> Callable[[], T]:
        """Run `work` after everything submitted before it. Returns a function that waits for
        its result, raising its error, or the one that stopped the pipe before it ran."""
        if self._error is not None:
            with connection.wrap_database_errors:
                raise self._error
        future: Future = Future()
        self._work.put((work, future))

        def wait() -> T:
            with connection.wrap_database_errors:  # psycopg's errors as Django's, as elsewhere
                return future.result()

        return wait

    def call(self, work: Callable[[], T]) -> T:
        return self.submit(work)()

    def close(self, *, stop: bool) -> None:
        """End the thread: after the work submitted has run, or at once (`stop`) skipping the
        work not yet begun (an import that failed is rolled back anyway)."""
        if stop and self._error is None:
            self._error = _Stopped()
        self._work.put(None)
        self._thread.join()
        sys.setswitchinterval(self._interval)

    def _run(self) -> None:
        while (task := self._work.get()) is not None:
            work, future = task
            if self._error is not None:
                future.set_exception(self._error)
                continue
            try:
                future.set_result(work())
            except BaseException as exc:  # raised to whoever waits, and stops the rest
                self._error = exc
                future.set_exception(exc)


class _Ids:
    """Ids drawn from one sequence ahead of need, through the pipe, so that encoding a batch
    never waits for the database. nextval is safe with concurrent writers and never rolled
    back: an id drawn and not used is a gap in the sequence, like those of any failed insert."""

    def __init__(self, pipe: _Pipe, cursor, sequence: str) -> None:
        self.pipe, self.cursor, self.sequence = pipe, cursor, sequence
        self.ready: list[int] = []
        self.coming: deque[tuple[int, Callable[[], list[int]]]] = deque()
        self.promised = 0  # ids in `coming`

    def take(self, n: int) -> list[int]:
        while len(self.ready) < n:
            if not self.coming:
                self._draw(n - len(self.ready))
            count, wait = self.coming.popleft()
            self.promised -= count
            self.ready += wait()
        ids, self.ready = self.ready[:n], self.ready[n:]
        if len(self.ready) + self.promised < _IDS_LOW * n:
            self._draw(_IDS_DRAWN * n)
        return ids

    def _draw(self, n: int) -> None:
        self.coming.append((n, self.pipe.submit(partial(self._nextval, n))))
        self.promised += n

    def _nextval(self, n: int) -> list[int]:
        self.cursor.execute(
            "SELECT array(SELECT nextval(%s::regclass) FROM generate_series(1, %s))",
            [self.sequence, n],
        )
        return self.cursor.fetchone()[0]


# Both lookups probe the project's unique index once per key, in a subquery per key that the
# planner cannot turn into a join, with the project's id hidden from it in a sub-select. Written
# as joins or `= ANY(keys)`, they let statistics taken before this import (which say the project
# has no rows, while this transaction is filling it) pick a plan that reads every row of the
# project for every batch: quadratic, and minutes at a million rows. The keys compare under the
# columns' own collation, "C" (migration 0025), as the indexes do.


def prompt_ids_sql() -> str:
    """(key, id or NULL) for each of an array of content hashes (the second parameter) among a
    project's prompts (the first), each found locked FOR KEY SHARE."""
    table = connection.ops.quote_name(Prompt._meta.db_table)
    return (
        f"SELECT key, (SELECT id FROM {table} "
        "  WHERE project_id = (SELECT %s) AND content_hash = key FOR KEY SHARE) "
        "FROM unnest(%b::text[]) AS key"
    )


def existing_keys_sql() -> str:
    """The import keys of an array (the first parameter) that a project's items (the second)
    already have."""
    table = connection.ops.quote_name(Item._meta.db_table)
    # NOT (import_key = '') is the unique index's own condition, so that it may be used.
    return (
        f"SELECT key FROM unnest(%b::text[]) AS key WHERE (SELECT true FROM {table} "
        "  WHERE project_id = (SELECT %s) AND import_key = key AND NOT (import_key = ''))"
    )


class Postgres:
    """Binary COPY through the pipe, ids drawn ahead; lookups with one binary array parameter
    each (an IN list of a thousand placeholders costs more to build than to run).

    The cursor is the pipe's alone: the importing thread only submits work to it."""

    def __init__(self, cursor) -> None:
        self._cursor = cursor
        self._pipe = _Pipe()
        self._tables: dict[str, tuple[dict[str, int], str]] = {}  # column types, pk sequence
        self._ids: dict[str, _Ids] = {}  # by sequence
        self.inserted: Counter[str] = Counter()  # rows per table

    def close(self, *, stop: bool) -> None:
        self._pipe.close(stop=stop)

    def insert(self, model, columns, rows, *, same=None, returning_ids=False) -> list[int]:
        if not rows:
            return []
        target = self._target(model, tuple(columns), same or {}, returning_ids)
        if returning_ids:
            ids = self._ids_of(target.sequence).take(len(rows))
            data = target.encode((pk, *row) for pk, row in zip(ids, rows, strict=True))
        else:
            ids, data = [], target.encode(rows)
        self._pipe.submit(partial(self._copy, target.statement, data))
        self.inserted[model._meta.db_table] += len(rows)
        return ids

    def lookup(
        self, project: Project, keys: list[str], hashes_for: Callable[[set[str]], set[str]]
    ) -> Callable[[], tuple[set[str], dict[str, int]]]:
        def both() -> tuple[set[str], dict[str, int]]:
            existing = self._existing_keys(project, keys) if keys else set()
            hashes = hashes_for(existing)
            return existing, self._prompt_ids(project, hashes) if hashes else {}

        return self._pipe.submit(both)

    def imported_before(self, project: Project) -> tuple[bool, bool]:
        quote = connection.ops.quote_name
        items, prompts = (quote(model._meta.db_table) for model in (Item, Prompt))
        # NOT (import_key = ''): the unique index's condition, as in _existing_keys.
        [(had_keys, had_prompts)] = self.fetch(
            f"SELECT EXISTS (SELECT FROM {items} "
            "    WHERE project_id = %s AND NOT (import_key = '')), "
            f"EXISTS (SELECT FROM {prompts} WHERE project_id = %s)",
            [project.pk, project.pk],
        )
        return had_keys, had_prompts

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
            [(counted,)] = self.fetch(
                "SELECT reltuples FROM pg_class WHERE oid = %s::regclass", [table]
            )
            if rows >= _ANALYZE_SHARE * counted:
                self.execute(f"ANALYZE {quote(table)}")

    @contextlib.contextmanager
    def search_later(self):
        """The rows' search vectors left for after the commit (feedback.services.search).

        Parsing and stemming every text as it goes in was 42% of the server's CPU in an
        import; done afterwards by a worker, it keeps no one waiting (migration 0023's trigger
        skips the rows of a transaction with this setting on). The worker is asked when the
        import commits: rolled back, it left nothing to index."""
        self.execute("SELECT set_config('veredicto.search_later', 'on', true)")
        yield
        self.execute("SELECT set_config('veredicto.search_later', 'off', true)")
        transaction.on_commit(search_index_soon, robust=True)

    @contextlib.contextmanager
    def foreign_keys_by_construction(self, *, project: Project, owner: AbstractBaseUser):
        """Foreign keys kept by construction instead of checked row by row, where allowed.

        PostgreSQL checks each foreign key of each new row with a query of its own: 14 per
        preference row, half the server's time in an import. With VEREDICTO_IMPORT_TRIGGERS_OFF
        (opt-in) and where this role may set
        session_replication_role (a superuser, or `GRANT SET ON PARAMETER
        session_replication_role`), those triggers are off while the rows go in, and what they
        guarantee is kept another way: every reference points at a row this transaction
        inserted (invisible to others until commit) or at a row it holds locked FOR KEY SHARE,
        as the triggers would have locked it: the project and the labels' owner here,
        existing prompts in the lookups. Elsewhere the triggers stay on and run at the end of
        each COPY (deferred, they would queue one pending check per row until commit: server
        memory growing with the file).
        """
        quote = connection.ops.quote_name
        for row in (project, owner):
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
        if not settings.VEREDICTO_IMPORT_TRIGGERS_OFF:  # an explicit opt-in, never by default
            return False
        if connection.pg_version < 150000:  # no has_parameter_privilege before PostgreSQL 15
            sql = "SELECT current_setting('is_superuser') = 'on'"
        else:
            sql = "SELECT has_parameter_privilege('session_replication_role', 'SET')"
        return bool(self.fetch(sql, [])[0][0])

    def execute(self, sql: str, params: list | None = None) -> None:
        """Run a statement after everything submitted so far, and wait for it."""
        self._pipe.call(partial(self._cursor.execute, sql, params))

    def fetch(self, sql: str, params: list) -> list[tuple]:
        """A query's rows, after everything submitted so far."""
        return self._pipe.call(partial(self._fetch_now, sql, params))

    # --- run by the pipe --------------------------------------------------------------------

    def _fetch_now(self, sql: str, params: list) -> list[tuple]:
        self._cursor.execute(sql, params)
        return self._cursor.fetchall()

    def _copy(self, statement: str, data: bytes) -> None:
        with self._cursor.copy(statement) as copy:
            copy.write(data)

    def _prompt_ids(self, project: Project, hashes: set[str]) -> dict[str, int]:
        """{content hash: id} of the project's prompts with one of these hashes, each locked
        against deletion until the import commits."""
        rows = self._fetch_now(prompt_ids_sql(), [project.pk, list(hashes)])
        return {key: pk for key, pk in rows if pk is not None}

    def _existing_keys(self, project: Project, keys: list[str]) -> set[str]:
        return {key for (key,) in self._fetch_now(existing_keys_sql(), [keys, project.pk])}

    # --- the importing thread's --------------------------------------------------------------

    def _ids_of(self, sequence: str) -> _Ids:
        if sequence not in self._ids:
            self._ids[sequence] = _Ids(self._pipe, self._cursor, sequence)
        return self._ids[sequence]

    def _target(self, model, columns: tuple[str, ...], same: dict, with_pk: bool) -> _CopyTarget:
        fields = {f.attname: f for f in model._meta.concrete_fields}
        pk = model._meta.pk
        given = [pk.attname] if with_pk else []
        given += [*columns]
        rest = [f for name, f in fields.items() if name not in given and name not in same]
        rest = [f for f in rest if f is not pk]
        table = model._meta.db_table
        if table not in self._tables:
            types = self.fetch(
                "SELECT attname, atttypid FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attnum > 0 AND NOT attisdropped",
                [table],
            )
            [(sequence,)] = self.fetch("SELECT pg_get_serial_sequence(%s, %s)", [table, pk.column])
            self._tables[table] = (dict(types), sequence)
        types, sequence = self._tables[table]
        given_columns = [fields[name].column for name in given]
        tail = [(fields[name].column, value) for name, value in same.items()]
        tail += [(f.column, f.get_default()) for f in rest]
        names = given_columns + [column for column, _ in tail]
        quote = connection.ops.quote_name
        return _CopyTarget(
            statement=f"COPY {quote(table)} ({', '.join(map(quote, names))}) "
            "FROM STDIN (FORMAT BINARY)",
            encode_rows=_rows_encoder(tuple(types[column] for column in given_columns), len(names)),
            tail=b"".join(
                _NULL if value is None else _ENCODERS[types[column]](value)
                for column, value in tail
            ),
            sequence=sequence,
        )
