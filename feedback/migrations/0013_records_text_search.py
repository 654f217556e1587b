"""GIN indexes for the records browser's full-text search (feedback.selectors.records).

Each index is on exactly the expression the selector compiles, so PostgreSQL can use it: the
prompts' message contents (not the JSON keys) and the completions' text, English stemming.
SQLite has no such index; the browser falls back to a substring match there.
"""

from django.db import migrations

INDEXES = {
    "feedback_prompt_text_search": (
        "feedback_prompt",
        "to_tsvector('english'::regconfig, "
        "COALESCE((jsonb_path_query_array(messages, '$[*].content'))::text, ''))",
    ),
    "feedback_completion_text_search": (
        "feedback_completion",
        "to_tsvector('english'::regconfig, COALESCE(text, ''))",
    ),
}


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name, (table, expression) in INDEXES.items():
        schema_editor.execute(f"CREATE INDEX IF NOT EXISTS {name} ON {table} USING gin ({expression})")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")


class Migration(migrations.Migration):
    dependencies = [("feedback", "0012_project_settings_validated")]

    operations = [migrations.RunPython(create, drop)]
