"""Search vectors that an import leaves for afterwards (feedback.services.search).

0019 made the `search` columns GENERATED ... STORED: PostgreSQL parses and stems every text as
its row goes in. In an import that is 42% of the server's CPU, and a million-row import spent a
minute on it (bench/import_export.py --without search). Here the columns become ordinary ones
(DROP EXPRESSION keeps their values and rewrites nothing), kept up by a trigger that computes
the vector when a row is written and its text changes, as the generated column did, except in a
transaction that set `veredicto.search_later` (an import): its rows keep a NULL vector, and
feedback.services.search fills them after it commits. Meanwhile a search still finds them, by
computing their vectors as it goes (feedback.selectors.records); the partial index lists them.

The expressions are 0019's, copied: a migration keeps the SQL it ran.
"""

from django.db import migrations

TEXTS = {
    "feedback_prompt": (
        "messages",
        "COALESCE((jsonb_path_query_array(NEW.messages, '$[*].content'))::text, '')",
    ),
    "feedback_completion": ("text", "COALESCE(NEW.text, '')"),
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, (column, text) in TEXTS.items():
        schema_editor.execute(f"ALTER TABLE {table} ALTER COLUMN search DROP EXPRESSION")
        schema_editor.execute(
            f"CREATE FUNCTION {table}_search() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
            f"NEW.search := to_tsvector('english'::regconfig, {text}); RETURN NEW; END $$"
        )
        # WHEN is tested without calling the function: an import's rows cost a comparison.
        schema_editor.execute(
            f"CREATE TRIGGER {table}_search BEFORE INSERT ON {table} "
            "FOR EACH ROW WHEN (current_setting('veredicto.search_later', true) "
            f"IS DISTINCT FROM 'on') EXECUTE FUNCTION {table}_search()"
        )
        # A text changed is indexed at once, always: left for later, its old vector would
        # still be there, and wrong.
        schema_editor.execute(
            f"CREATE TRIGGER {table}_search_changed BEFORE UPDATE OF {column} ON {table} "
            f"FOR EACH ROW EXECUTE FUNCTION {table}_search()"
        )
        schema_editor.execute(
            f"CREATE INDEX {table}_search_pending ON {table} (id) WHERE search IS NULL"
        )


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for table, (_, text) in TEXTS.items():
        schema_editor.execute(f"DROP INDEX IF EXISTS {table}_search_pending")
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_search ON {table}")
        schema_editor.execute(f"DROP TRIGGER IF EXISTS {table}_search_changed ON {table}")
        schema_editor.execute(f"DROP FUNCTION IF EXISTS {table}_search()")
        # Back to a generated column (which rewrites the table), with 0019's index.
        schema_editor.execute(f"ALTER TABLE {table} DROP COLUMN search")
        schema_editor.execute(
            f"ALTER TABLE {table} ADD COLUMN search tsvector GENERATED ALWAYS AS "
            f"(to_tsvector('english'::regconfig, {text.replace('NEW.', '')})) STORED"
        )
        schema_editor.execute(f"CREATE INDEX {table}_search ON {table} USING gin (search)")


class Migration(migrations.Migration):
    dependencies = [("feedback", "0022_assignment_project")]

    operations = [migrations.RunPython(create, drop)]
