"""The search columns' GIN indexes leave out the rows not indexed yet (an import's, 0023).

A GIN index keeps an entry for a NULL too. Every row an import writes (search NULL until
feedback.services.search fills it) went into the index's pending list, and about every 4 MB
the importing backend sorted that list into the tree: a tenth of the server's CPU in an import
(perf on bench/import_export.py), for entries no search reads. A search (`search @@ query`,
strict) implies `search IS NOT NULL`, so the planner uses the partial index as it did the
whole one.

Built CONCURRENTLY, then swapped in, so that a deployment keeps writing while it builds.
"""

from django.db import migrations

TABLES = ("feedback_prompt", "feedback_completion")


def _swap(schema_editor, where: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for table in TABLES:
        # A build stopped half way leaves an invalid index of this name behind: start afresh.
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {table}_search_new")
        schema_editor.execute(
            f"CREATE INDEX CONCURRENTLY {table}_search_new ON {table} USING gin (search){where}"
        )
        schema_editor.execute(f"DROP INDEX CONCURRENTLY IF EXISTS {table}_search")
        schema_editor.execute(f"ALTER INDEX {table}_search_new RENAME TO {table}_search")


def forwards(apps, schema_editor):
    _swap(schema_editor, " WHERE search IS NOT NULL")


def backwards(apps, schema_editor):
    _swap(schema_editor, "")


class Migration(migrations.Migration):
    atomic = False  # CREATE INDEX CONCURRENTLY runs outside a transaction

    dependencies = [("feedback", "0023_search_vectors_after_imports")]

    operations = [migrations.RunPython(forwards, backwards)]
