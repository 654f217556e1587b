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

from django.db import connection, transaction

from feedback.models import Completion, Prompt
from feedback.selectors.records import SEARCH_CONFIG
from jobs.queues import CeleryQueue
from jobs.services import task_send

# The text each table's vector is computed from: migration 0023's trigger, unqualified.
TEXTS = {
    Prompt: "COALESCE((jsonb_path_query_array(messages, '$[*].content'))::text, '')",
    Completion: "COALESCE(text, '')",
}

# Rows indexed per transaction: a fraction of a second of the server's time (about 30
# microseconds a text), so that a write to one of them never waits long for its row lock.
INDEX_BATCH = 5_000

INDEX_TASK = "feedback.tasks.index_search"


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
        for model in TEXTS:
            table = connection.ops.quote_name(model._meta.db_table)
            cursor.execute(f"SELECT count(*) FROM {table} WHERE search IS NULL")
            pending += cursor.fetchone()[0]
    return pending


def search_index_pending(*, batch_size: int = INDEX_BATCH) -> int:
    """Compute the vectors still missing, oldest rows first, a batch per transaction; returns
    how many. Rows another indexer holds are skipped (SKIP LOCKED), and left to it."""
    if connection.vendor != "postgresql":
        return 0
    done = 0
    for model, text in TEXTS.items():
        table = connection.ops.quote_name(model._meta.db_table)
        # On by id: the entries of rows just indexed stay in the partial index until a
        # vacuum, and each batch would read them all again.
        after = 0
        while True:
            with transaction.atomic(), connection.cursor() as cursor:
                cursor.execute(
                    f"WITH batch AS (SELECT id FROM {table} WHERE search IS NULL AND id > %s "
                    "    ORDER BY id LIMIT %s FOR UPDATE SKIP LOCKED) "
                    f"UPDATE {table} AS t SET search = to_tsvector(%s::regconfig, {text}) "
                    "FROM batch WHERE t.id = batch.id RETURNING t.id",
                    [after, batch_size, SEARCH_CONFIG],
                )
                ids = [row[0] for row in cursor.fetchall()]
            done += len(ids)
            if not ids:
                break
            after = max(ids)
    return done
