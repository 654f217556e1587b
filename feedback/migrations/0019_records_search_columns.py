"""The records browser at a million records (feedback.selectors.records, bench/records_browser.py).

PostgreSQL only; SQLite has no tsvector, and its browser falls back to substring matches.

1. Prompts and completions get a `search` column: the tsvector of their text, GENERATED ALWAYS
   ... STORED, so PostgreSQL computes it once when the row is written (as the expression index of
   0013 did) and keeps it with the row; the GIN indexes move onto these columns. 0013 indexed the
   expression only, so every match the index could not settle alone (a phrase's word order, the
   recheck of a lossy bitmap) and every record tested one by one (walking the newest records for
   a common word) parsed and stemmed its text again: about 0.1 ms per reply, seconds per page.
   The models do not declare the columns (the import's COPY lists a model's columns, and a
   generated column may not be written); feedback.selectors.records.SearchDocument reads them.
2. Judgements get an (origin, item_id) index on the rows that were not imported, so "origin:
   human" or "simulated" finds its items without reading the imported ones; imported rows are
   most of a big project and are found from the item instead (the item_id index), which also
   keeps imports from paying for the index.
3. Items get (project_id, id) and (project_id, kind, id) indexes: a project's records newest
   first without walking the other projects' (item_queue_order puts submitted_count between
   the two), and those of one kind without walking the others (a kind the project has none of
   would otherwise read every record). New ids land at their right-hand ends, the cheapest
   kind of index to keep up.

Adding a generated column rewrites the table: about four minutes per million prompts with two
replies each on 2 cores.
"""

from django.db import migrations

PROMPT_TEXT = "COALESCE((jsonb_path_query_array(messages, '$[*].content'))::text, '')"
COLUMNS = {
    "feedback_prompt": PROMPT_TEXT,
    "feedback_completion": "COALESCE(text, '')",
}
OLD_INDEXES = {  # 0013's, on the expression
    "feedback_prompt_text_search": "feedback_prompt",
    "feedback_completion_text_search": "feedback_completion",
}
ITEM_INDEXES = {
    "feedback_item_project_newest": "project_id, id",
    "feedback_item_project_kind_newest": "project_id, kind, id",
}
JUDGEMENT_TABLES = (
    "feedback_demonstration",
    "feedback_pairwisejudgement",
    "feedback_rankingjudgement",
)


def create(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in OLD_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
    for table, text in COLUMNS.items():
        schema_editor.execute(
            f"ALTER TABLE {table} ADD COLUMN search tsvector "
            f"GENERATED ALWAYS AS (to_tsvector('english'::regconfig, {text})) STORED"
        )
        schema_editor.execute(f"CREATE INDEX {table}_search ON {table} USING gin (search)")
    for table in JUDGEMENT_TABLES:
        schema_editor.execute(
            f"CREATE INDEX {table}_origin_not_imported ON {table} (origin, item_id) "
            "WHERE origin <> 'imported'"
        )
    for name, columns in ITEM_INDEXES.items():
        schema_editor.execute(f"CREATE INDEX {name} ON feedback_item ({columns})")


def drop(apps, schema_editor):
    if schema_editor.connection.vendor != "postgresql":
        return
    for name in ITEM_INDEXES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {name}")
    for table in JUDGEMENT_TABLES:
        schema_editor.execute(f"DROP INDEX IF EXISTS {table}_origin_not_imported")
    for table, text in COLUMNS.items():
        schema_editor.execute(f"ALTER TABLE {table} DROP COLUMN IF EXISTS search")
    for name, table in OLD_INDEXES.items():
        text = COLUMNS[table]
        schema_editor.execute(
            f"CREATE INDEX IF NOT EXISTS {name} ON {table} "
            f"USING gin (to_tsvector('english'::regconfig, {text}))"
        )


class Migration(migrations.Migration):
    dependencies = [("feedback", "0018_imported_labels_belong_to_their_source")]

    operations = [migrations.RunPython(create, drop)]
