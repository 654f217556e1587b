"""Indexed codes and hashes compare as bytes (collation "C").

A prompt's `content_hash` and an item's `import_key` are hex digests, and an item's kind, an
assignment's status and a judgement's status and origin are a few lowercase words. Each is only
tested for equality or sorted within its own short list, and each is in an index that every
import and every submitted label writes to. Under a linguistic collation (en_US.UTF-8, a managed
server's usual default) every comparison in those indexes goes through the C library's strcoll;
under "C" it is a memcmp, and these values sort the same either way.
bench/hash_collation.py: a million digests into a unique index, 4.93 s under en_US.utf8 against
3.91 s under C; bench/import_export.py --locale en_US.utf8: about 4% of the server's CPU in an
import.

PostgreSQL only, and outside the models: SQLite has no collation named "C" (its default, BINARY,
already compares bytes), and a field's `db_collation` cannot differ by database. A later
AlterField of one of these columns must keep the collation.
"""

from django.db import migrations

COLUMNS = (
    ("feedback_prompt", "content_hash"),
    ("feedback_item", "import_key"),
    ("feedback_item", "kind"),
    ("feedback_assignment", "status"),
    ("feedback_demonstration", "status"),
    ("feedback_demonstration", "origin"),
    ("feedback_pairwisejudgement", "status"),
    ("feedback_pairwisejudgement", "origin"),
    ("feedback_rankingjudgement", "status"),
    ("feedback_rankingjudgement", "origin"),
)


def _collate(schema_editor, collation: str) -> None:
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, column in COLUMNS:
        with schema_editor.connection.cursor() as cursor:
            cursor.execute(
                "SELECT format_type(atttypid, atttypmod) FROM pg_attribute "
                "WHERE attrelid = %s::regclass AND attname = %s",
                [table, column],
            )
            (kind,) = cursor.fetchone()
        # A collation change rewrites no rows; PostgreSQL rebuilds the column's indexes.
        schema_editor.execute(
            f'ALTER TABLE {table} ALTER COLUMN {column} TYPE {kind} COLLATE "{collation}"'
        )


def forwards(apps, schema_editor):
    _collate(schema_editor, "C")


def backwards(apps, schema_editor):
    _collate(schema_editor, "default")


class Migration(migrations.Migration):
    dependencies = [("feedback", "0024_search_index_skips_pending_rows")]

    operations = [migrations.RunPython(forwards, backwards)]
