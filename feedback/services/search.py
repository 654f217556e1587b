"""The records browser's search vectors that imports leave for after their commit.

Every prompt and completion has a `search` column, its text's tsvector (migration 0019), which
a trigger computes as the row is written (migration 0023), except in an import: parsing and
stemming its texts would be 42% of the server's CPU there, so its rows go in with NULL and are
indexed here once it has committed, a batch at a time, by a worker (feedback.tasks.index_search,
sent when the import commits and run by Celery beat every minute in case that send was lost).
Until then a search still finds them, computing their vectors as it goes
(feedback.selectors.records): it is slower for the minute or two after a big import, never
incomplete.

PostgreSQL only: SQLite has no search column (its browser matches substrings).
"""

from __future__ import annotations

import time

from django.contrib.postgres.search import SearchVector
from django.db import connection, transaction

from feedback.selectors.records import (
    SEARCH_CONFIG,
    SEARCHED_TEXT,
    SearchDocument,
    search_catching_up,
)
from jobs.queues import CeleryQueue
from jobs.services import task_send

# Rows indexed per transaction: a fraction of a second of the server's time (about 30
# microseconds a text), so that a write to one of them never waits long for its row lock.
INDEX_BATCH = 5_000

INDEX_TASK = "feedback.tasks.index_search"

# How long one run of the task indexes before it hands the worker back: a million-row import
# leaves about 90 s of indexing, and a `make run` worker has one slot, which snapshots, the
# sweep and training jobs would otherwise wait behind. The task sends itself again to the back
# of the queue while work is left.
INDEX_TASK_SECONDS = 10.0


def search_index_soon() -> None:
    """Have a worker index what is pending (an import has just committed). With the broker
    away, the beat's next run does it."""
    task_send(INDEX_TASK, queue=CeleryQueue.DEFAULT.value)


def search_pending() -> int:
    """Prompts and completions whose vectors are still to be computed."""
    if connection.vendor != "postgresql":
        return 0
    pending = 0
    with connection.cursor() as cursor:
        for model in SEARCHED_TEXT:
            table = connection.ops.quote_name(model._meta.db_table)
            cursor.execute(f"SELECT count(*) FROM {table} WHERE search IS NULL")
            pending += cursor.fetchone()[0]
    return pending


def search_index_pending(*, batch_size: int = INDEX_BATCH, seconds: float | None = None) -> int:
    """Compute the vectors still missing, oldest rows first, a batch per transaction; returns
    how many. Rows another indexer holds are skipped (SKIP LOCKED), and left to it. With
    `seconds`, no batch starts after that long (at least one runs), so some may be left."""
    if connection.vendor != "postgresql":
        return 0
    deadline = None if seconds is None else time.monotonic() + seconds
    done = 0
    for model in SEARCHED_TEXT:
        table = connection.ops.quote_name(model._meta.db_table)
        # On by id: the entries of rows just indexed stay in the partial index until a
        # vacuum, and each batch would read them all again.
        after = 0
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                batch, params = _batch(model, after=after, size=batch_size)
                # A CTE, run once: as a subquery in FROM the planner may rescan it for each
                # row updated, and each rescan locks the next rows (those this statement has
                # updated are skipped), so the batch would grow past its LIMIT.
                cursor.execute(
                    f"WITH batch (id, vector) AS MATERIALIZED ({batch}) "
                    f"UPDATE {table} AS t SET search = batch.vector FROM batch "
                    "WHERE t.id = batch.id RETURNING t.id",
                    params,
                )
                ids = [row[0] for row in cursor.fetchall()]
            done += len(ids)
            if not ids:
                break
            if deadline is not None and time.monotonic() >= deadline:
                return done
            after = max(ids)
    return done


def _batch(model, *, after: int, size: int) -> tuple[str, tuple]:
    """SQL of the next rows without a vector (id, vector), locked: the vector is the one the
    records browser computes for them meanwhile (selectors.records.matching), which is the
    trigger's."""
    vector = SearchVector(SEARCHED_TEXT[model](), config=SEARCH_CONFIG)
    rows = (
        model.objects.alias(found=SearchDocument())
        .filter(found__isnull=True, pk__gt=after)
        .order_by("pk")
        .select_for_update(skip_locked=True)
        .annotate(vector=vector)
        .values_list("pk", "vector")[:size]
    )
    return rows.query.sql_with_params()


def search_index_step() -> int:
    """One run of the worker's task: INDEX_TASK_SECONDS of indexing, then the task sent again
    while texts are left, so that what was queued meanwhile runs first; returns how many."""
    done = search_index_pending(batch_size=INDEX_BATCH, seconds=INDEX_TASK_SECONDS)
    # Nothing done means another run holds what is left: it carries on, and this one stops.
    if done and search_catching_up():
        search_index_soon()
    return done
