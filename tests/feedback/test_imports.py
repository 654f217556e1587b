import csv
import gc
import hashlib
import importlib
import json
import os
import threading
from io import StringIO

import datasets
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from django.core.management import call_command
from django.core.management.base import CommandError
from django.db import IntegrityError, connection
from django.db.models import Q
from django.utils import timezone

from core.roles import Role
from core.tokens import token_create
from feedback import selectors, services
from feedback.models import (
    Assignment,
    AssignmentStatus,
    Completion,
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
from feedback.quality.reports import annotator_rows
from feedback.services import ImportOptions, import_file
from tests.factories import ProjectFactory, UserFactory, make_item

pytestmark = pytest.mark.django_db


@pytest.fixture
def project(roles):
    return ProjectFactory(name="Imports", overlap=2)


@pytest.fixture
def importer(admin_user):
    return admin_user


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def counts():
    return (Prompt.objects.count(), Completion.objects.count(), Item.objects.count())


def run(project, path, **options):
    return import_file(project=project, path=path, options=ImportOptions(**options))


# --- formats -------------------------------------------------------------------------------------


def test_jsonl_prompts_in_both_shapes(project, tmp_path):
    path = write_jsonl(
        tmp_path / "p.jsonl",
        [
            {"prompt": "What is 2+2?", "tags": ["math"], "id": "q1"},
            {
                "system": "Be terse.",
                "messages": [
                    {"role": "user", "content": "Hi"},
                    {"role": "assistant", "content": "Hello"},
                    {"role": "user", "content": "Bye?"},
                ],
                "split": "test",
            },
        ],
    )
    report = run(project, path)
    assert report.ok, report.errors
    assert report.shapes == {"prompts": 2}
    first, second = Prompt.objects.order_by("id")
    assert first.tags == ["math"] and first.external_id == "q1" and first.source == "p.jsonl"
    assert second.system == "Be terse." and second.split == "test" and len(second.messages) == 3


def test_csv_with_json_columns(project, tmp_path):
    path = tmp_path / "c.csv"
    with path.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["prompt", "completions", "tags"])
        writer.writerow(["Name a colour", json.dumps(["red", "blue"]), "easy, colours"])
    report = run(project, path)
    assert report.ok, report.errors
    item = Item.objects.get()
    assert item.kind == TaskKind.PAIRWISE
    assert [c.text for c in item.ordered_completions()] == ["red", "blue"]
    assert item.prompt.tags == ["easy", "colours"]


def test_parquet_and_save_to_disk_folders(project, tmp_path):
    rows = [
        {"prompt": f"Question {n}?", "chosen": f"yes {n}", "rejected": f"no {n}"} for n in range(3)
    ]
    pq.write_table(pa.Table.from_pylist(rows), tmp_path / "prefs.parquet")
    datasets.DatasetDict(
        {
            "train": datasets.Dataset.from_list(rows[:2]),
            "test": datasets.Dataset.from_list([{"prompt": "Held out?"}]),
        }
    ).save_to_disk(str(tmp_path / "hf"))

    assert run(project, tmp_path / "prefs.parquet").created["items"] == 3
    report = run(project, tmp_path / "hf", shape="auto")
    assert report.ok, report.errors
    assert report.skipped_duplicates == 2  # the two train rows came in with the Parquet file
    assert Prompt.objects.get(messages__0__content="Held out?").split == "test"


# --- shapes --------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pairing", "expected"),
    [
        ("all_pairs", [("x", "y"), ("x", "z"), ("y", "z")]),
        ("adjacent", [("x", "y"), ("y", "z")]),
        ("first_vs_rest", [("x", "y"), ("x", "z")]),
    ],
)
def test_comparison_pairing_policies(project, tmp_path, pairing, expected):
    row = {"prompt": "Pick", "completions": [{"text": "x", "model": "m1"}, "y", {"text": "z"}]}
    run(project, write_jsonl(tmp_path / "c.jsonl", [row]), pairing=pairing)
    pairs = [
        tuple(c.text for c in item.ordered_completions()) for item in Item.objects.order_by("id")
    ]
    assert pairs == expected
    assert Completion.objects.get(text="x").model_name == "m1"
    assert not PairwiseJudgement.objects.exists()  # comparisons still need annotators


def test_comparisons_as_ranking_items(project, tmp_path):
    row = {"prompt": "Rank", "completions": ["a", "b", "c", "d"]}
    run(project, write_jsonl(tmp_path / "r.jsonl", [row]), comparison_mode="ranking")
    item = Item.objects.get()
    assert item.kind == TaskKind.RANKING and len(item.ordered_completions()) == 4


def test_preference_pairs_arrive_judged_and_marked_imported(project, tmp_path):
    rows = [{"prompt": "2+2?", "chosen": "4", "rejected": "5", "chosen_model": "good"}]
    run(project, write_jsonl(tmp_path / "pref.jsonl", rows), source="unit-test")
    judgement = PairwiseJudgement.objects.get()
    assert judgement.choice == "a"
    assert judgement.origin == Origin.IMPORTED and judgement.source == "unit-test"
    assert [c.text for c in judgement.item.ordered_completions()] == ["4", "5"]
    assert judgement.item.submitted_count == 0  # no annotator's slot: see the section below
    assert Completion.objects.get(text="4").model_name == "good"


def test_anthropic_hh_text_layout(project, tmp_path):
    history = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell a joke"
    row = {"chosen": history + "\n\nAssistant: A pun.", "rejected": history + "\n\nAssistant: No."}
    report = run(project, write_jsonl(tmp_path / "hh.jsonl", [row]))
    assert report.ok, report.errors
    prompt = Prompt.objects.get()
    assert prompt.messages == [
        {"role": "user", "content": "Hi there"},
        {"role": "assistant", "content": "Hello!"},
        {"role": "user", "content": "Tell a joke"},
    ]
    assert [c.text for c in Item.objects.get().ordered_completions()] == ["A pun.", "No."]


def test_ultrafeedback_binarized_layout(project, tmp_path):
    row = {
        "prompt": "Name a prime.",
        "chosen": [
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "7"},
        ],
        "rejected": [
            {"role": "user", "content": "Name a prime."},
            {"role": "assistant", "content": "9"},
        ],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
    }
    report = run(project, write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert report.ok, report.errors
    assert Prompt.objects.get().messages == [{"role": "user", "content": "Name a prime."}]
    assert [c.text for c in Item.objects.get().ordered_completions()] == ["7", "9"]


def test_sft_rows_become_accepted_imported_demonstrations(project, tmp_path):
    rows = [
        {"messages": [{"role": "user", "content": "Hi"}, {"role": "assistant", "content": "Hey"}]},
        {"prompt": "Capital of France?", "completion": "Paris."},
    ]
    run(project, write_jsonl(tmp_path / "sft.jsonl", rows))
    demos = Demonstration.objects.order_by("id")
    assert [d.text for d in demos] == ["Hey", "Paris."]
    assert {d.status for d in demos} == {DemonstrationStatus.ACCEPTED}
    assert {d.origin for d in demos} == {Origin.IMPORTED}


def test_imported_preferences_can_seed_a_reward_model_snapshot(project, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    rows = [{"prompt": f"Q{n}?", "chosen": f"good {n}", "rejected": f"bad {n}"} for n in range(5)]
    run(project, write_jsonl(tmp_path / "pref.jsonl", rows))
    snapshot = services.snapshot_create(
        project=project,
        kind="preference",
        policy={"include_imported": True, "test_fraction": 0},
    )
    assert snapshot.row_counts["train"] == 5
    default = services.snapshot_create(project=project, kind="preference")
    assert sum(default.row_counts.values()) == 0


# --- imported labels belong to their source ----------------------------------------------------

BOILING = [{"prompt": "Water boils at?", "chosen": "100 °C.", "rejected": "50 °C."}]


def test_imported_labels_are_no_persons_work(client, project, admin_user, tmp_path):
    """The admin who uploads a preference file did not judge it (issue #17): their history,
    the Progress page and the quality page show none of it, and where imported labels are shown
    at all they are "imported from <source>"."""
    run(project, write_jsonl(tmp_path / "pref.jsonl", BOILING), source="boiling.jsonl")
    judgement = PairwiseJudgement.objects.get()
    owner = judgement.annotator
    assert owner != admin_user and judgement.assignment.annotator == owner
    assert not owner.is_active and not owner.has_usable_password()
    assert not owner.groups.exists()
    assert judgement.assignment.status == AssignmentStatus.IMPORTED
    assert judgement.credited_to == "imported from boiling.jsonl"

    client.force_login(admin_user)
    history = client.get("/history/").content.decode()
    assert "100 °C." not in history
    progress = selectors.project_progress(project=project)
    assert progress.per_annotator == [] and progress.judgements == 0
    assert progress.imported == 1
    page = client.get(f"/projects/{project.pk}/progress/").content.decode()
    annotators = page.split("<h2>Annotators</h2>")[1].split("</table>")[0]
    assert "No work yet." in annotators and owner.username not in annotators
    assert annotators.count("<tr>") == 2  # the header, and "No work yet"
    assert [row.username for row in annotator_rows(project)] == []
    record = client.get(f"/records/{judgement.item_id}/").content.decode()
    assert "imported from boiling.jsonl" in record and owner.username not in record
    assert selectors.projects_for_annotator(user=admin_user).get(pk=project.pk).my_done == 0


def test_imported_labels_are_shown_by_the_api_as_their_sources(client, project, tmp_path):
    run(project, write_jsonl(tmp_path / "pref.jsonl", BOILING), source="boiling.jsonl")
    _, key = token_create(user=UserFactory(username="api-admin", roles=[Role.ADMIN]), name="t")
    response = client.get(
        f"/api/projects/{project.pk}/judgements", headers={"Authorization": f"Bearer {key}"}
    )
    [judgement] = response.json()["items"]
    assert judgement["annotator"] == "imported from boiling.jsonl"
    assert judgement["origin"] == Origin.IMPORTED


def test_an_item_with_an_imported_label_still_takes_its_annotators(
    project, annotator, other_annotator, tmp_path
):
    """Imported labels take none of an item's overlap slots: at overlap 1 the item is still
    served, and submitted_count counts the human judgements only (bench/annotation_load.py
    checks the same invariant under load)."""
    from bench.annotation_load import check_integrity

    project.overlap = 1
    project.save()
    run(project, write_jsonl(tmp_path / "pref.jsonl", BOILING))
    item = Item.objects.get()
    assert item.submitted_count == 0

    assignment = services.task_next_for_annotator(project=project, annotator=annotator)
    assert assignment is not None and assignment.item_id == item.pk
    services.pairwise_submit(
        assignment_id=assignment.pk, annotator=annotator, choice="a", strength="clear"
    )
    item.refresh_from_db()
    assert item.submitted_count == 1  # the annotator's judgement, not the imported one
    assert services.task_next_for_annotator(project=project, annotator=other_annotator) is None

    integrity = check_integrity(project.pk, project.overlap)
    assert integrity.count_drift == 0 and integrity.over_assigned == 0
    assert integrity.judgements == 1
    # Snapshots still take the imported label when asked to.
    labels = PairwiseJudgement.objects.filter(item=item)
    assert sorted(labels.values_list("origin", flat=True)) == [Origin.HUMAN, Origin.IMPORTED]


def test_snapshots_take_imported_labels_only_when_asked(project, tmp_path, settings):
    settings.MEDIA_ROOT = tmp_path / "media"
    run(project, write_jsonl(tmp_path / "pref.jsonl", BOILING))
    asked = services.snapshot_create(
        project=project, kind="preference", policy={"include_imported": True, "test_fraction": 0}
    )
    rows = [json.loads(line) for line in (asked.path() / "train.jsonl").read_text().splitlines()]
    assert [row["chosen"][0]["content"] for row in rows] == ["100 °C."]
    default = services.snapshot_create(project=project, kind="preference")
    assert sum(default.row_counts.values()) == 0


def submitted_slot(item, user):
    now = timezone.now()
    return Assignment.objects.create(
        item=item, annotator=user, status="submitted", expires_at=now, finished_at=now
    )


def test_the_migration_gives_labels_imported_before_it_back_to_their_source(
    project, admin_user, annotator
):
    """Labels imported before the fix were the importing admin's, on a submitted assignment
    that held a slot: the data migration re-owns them and counts the items' slots again."""
    from django.apps import apps

    migration = importlib.import_module(
        "feedback.migrations.0018_imported_labels_belong_to_their_source"
    )
    imported_item = make_item(project, TaskKind.PAIRWISE)
    judged_too = make_item(project, TaskKind.PAIRWISE)
    human_only = make_item(project, TaskKind.PAIRWISE)
    for item in (imported_item, judged_too):  # as the import left them
        slot = submitted_slot(item, admin_user)
        PairwiseJudgement.objects.create(
            assignment=slot, item=item, annotator=admin_user, origin=Origin.IMPORTED,
            source="old.jsonl", choice="a", shown_left="a",
        )  # fmt: skip
    for item in (judged_too, human_only):
        slot = submitted_slot(item, annotator)
        PairwiseJudgement.objects.create(
            assignment=slot, item=item, annotator=annotator, choice="b", shown_left="a"
        )
    Item.objects.filter(pk__in=[imported_item.pk, human_only.pk]).update(submitted_count=1)
    Item.objects.filter(pk=judged_too.pk).update(submitted_count=2)

    migration.reown_imported_labels(apps, None)

    owner = services.imports.imported_labels_owner()
    imported = PairwiseJudgement.objects.filter(origin=Origin.IMPORTED)
    assert set(imported.values_list("annotator", flat=True)) == {owner.pk}
    assert set(
        Assignment.objects.filter(pairwisejudgement__in=imported).values_list("annotator", "status")
    ) == {(owner.pk, AssignmentStatus.IMPORTED)}
    assert not Assignment.objects.filter(annotator=admin_user).exists()
    counts_now = dict(Item.objects.values_list("pk", "submitted_count"))
    assert counts_now == {imported_item.pk: 0, judged_too.pk: 1, human_only.pk: 1}


# --- idempotence and atomicity ---------------------------------------------------------------


@pytest.mark.parametrize(
    "completions",
    [[], [("4", "")], [('say "hi"\\', "gpt-x"), ("caf\u00e9 \U0001f600 \n\t\x01", "\u2028")]],
)
def test_import_keys_stay_the_hash_of_json_dumps(completions):
    """Stored keys must not change, or files imported before would import again."""
    from feedback.services.imports.parsing import ParsedRow

    row = ParsedRow("comparisons", "", [{"role": "user", "content": "x"}], completions=completions)
    payload = [row.shape, row.prompt_hash, row.completions, row.demonstration]
    assert row.key == hashlib.sha256(json.dumps(payload).encode()).hexdigest()


def test_importing_the_same_file_twice_adds_nothing(project, tmp_path):
    rows = [
        {"prompt": "A?"},
        {"prompt": "B?", "completions": ["1", "2", "3"]},
        {"prompt": "C?", "chosen": "yes", "rejected": "no"},
        {"prompt": "D?", "completion": "demo"},
    ]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    project.task_kinds = [TaskKind.PAIRWISE, TaskKind.DEMONSTRATION]
    project.save()
    first = run(project, path)
    before = counts()
    second = run(project, path)
    assert first.ok and second.ok
    assert counts() == before
    assert second.skipped_duplicates == 4
    assert second.created == {"prompts": 0, "completions": 0, "items": 0, "judgements": 0}


def test_same_prompt_with_new_completions_adds_items_to_the_existing_prompt(project, tmp_path):
    run(
        project,
        write_jsonl(tmp_path / "a.jsonl", [{"prompt": "P?", "completions": ["1", "2"]}]),
    )
    run(
        project,
        write_jsonl(tmp_path / "b.jsonl", [{"prompt": "P?", "completions": ["3", "4"]}]),
    )
    assert Prompt.objects.count() == 1
    assert Item.objects.count() == 2


def test_prompts_imported_before_are_found_by_rows_that_judge_them(project, tmp_path, monkeypatch):
    """A project with prompts but no import keys: keys are known to be new, prompts are not."""
    monkeypatch.setattr(services.imports, "BATCH", 2)
    prompts = [{"prompt": f"P{n}?"} for n in range(5)]
    run(project, write_jsonl(tmp_path / "prompts.jsonl", prompts))
    pairs = [{"prompt": f"P{n % 5}?", "chosen": f"c{n}", "rejected": "r"} for n in range(9)]
    report = run(project, write_jsonl(tmp_path / "pairs.jsonl", pairs))
    assert report.ok, report.errors
    assert report.created == {"prompts": 0, "completions": 18, "items": 9, "judgements": 9}
    assert Prompt.objects.count() == 5
    assert references_missing() == {}


def test_the_filter_of_what_an_import_added_never_forgets_and_rarely_imagines():
    from feedback.services.imports.writing import _Added

    digest = lambda n: hashlib.sha256(str(n).encode()).hexdigest()  # noqa: E731
    added = _Added()
    added.add([digest(n) for n in range(50_000)])
    assert added.among([digest(n) for n in range(50_000)]) == [digest(n) for n in range(50_000)]
    assert len(added.among([digest(n) for n in range(50_000, 150_000)])) < 10
    assert added.among([]) == []


BAD_ROWS = [
    (b'{"prompt": "ok"}\n{"prompt": "broken\n', "row 2", "invalid JSON"),
    (b'{"prompt": "ok"}\n{"prompt": "caf\xe9"}\n', "row 2", "invalid UTF-8"),
    (b'{"messages": [{"role": "wizard", "content": "x"}]}\n', "row 1", "unknown role"),
    (b'{"prompt": "   "}\n', "row 1", "Must not be empty"),
    (b'{"prompt": 42}\n', "row 1", "text or a list of messages"),
    (b'["not", "an", "object"]\n', "row 1", "JSON object"),
    (b'{"prompt": "x", "chosen": "same", "rejected": "same"}\n', "row 1", "same text"),
    (b'{"prompt": "x", "completions": ["only one"]}\n', "row 1", "2 or more"),
    (b'{"prompt": "x", "split": "validation"}\n', "row 1", "split must be"),
    (b'{"unrelated": 1}\n', "row 1", "Cannot tell the shape"),
    # Half a preference pair, or messages as text, used to go in as a plain prompt (issue #17).
    (b'{"prompt": "x", "chosen": "y"}\n', "row 1", "rejected is missing"),
    (b'{"prompt": "x", "rejected": "y", "rejected_model": "m"}\n', "row 1", "chosen is missing"),
    (b'{"messages": "not a list"}\n', "row 1", "messages must be a list"),
    (b'{"messages": {"role": "user"}}\n', "row 1", "not an object"),
    (b'{"completions": ["a", "b"]}\n', "row 1", "prompt is missing"),
    (b'{"prompt": "x", "chosen": "y", "rejected": null}\n', "row 1", "rejected is missing"),
    (b'{"prompt": "x", "chosen": "", "rejected": "y"}\n', "row 1", "chosen: Must not be empty"),
    (
        b'{"chosen": "\\n\\nHuman: a\\n\\nAssistant: b", '
        b'"rejected": "\\n\\nHuman: c\\n\\nAssistant: d"}\n',
        "row 1",
        "different conversations",
    ),
]


@pytest.mark.parametrize(("content", "where", "message"), BAD_ROWS)
def test_bad_rows_are_reported_with_row_numbers_and_nothing_is_written(
    project, tmp_path, content, where, message
):
    path = tmp_path / "bad.jsonl"
    path.write_bytes(b'{"prompt": "a fine first row"}\n' * 0 + content)
    report = run(project, path)
    assert not report.ok
    row_number = int(where.split()[1])
    assert any(e["row"] == row_number and message in e["message"] for e in report.errors), (
        report.errors
    )
    assert counts() == (0, 0, 0)


def test_oversized_text_and_too_many_messages_are_refused(project, tmp_path, settings):
    settings.VEREDICTO_MAX_TEXT_CHARS = 100
    turns = [{"role": r, "content": "x"} for r in ["user", "assistant"] * 40] + [
        {"role": "user", "content": "x"}
    ]
    path = write_jsonl(tmp_path / "big.jsonl", [{"prompt": "y" * 101}, {"messages": turns}])
    report = run(project, path)
    messages = [e["message"] for e in report.errors]
    assert any("limit is 100" in m for m in messages)
    assert any("At most 64 messages" in m for m in messages)
    assert counts() == (0, 0, 0)


def test_project_that_does_not_collect_the_kind_is_refused(roles, tmp_path):
    project = ProjectFactory(task_kinds=[TaskKind.DEMONSTRATION])
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "x", "chosen": "a", "rejected": "b"}])
    report = run(project, path)
    assert "does not collect pairwise tasks" in report.errors[0]["message"]
    assert counts() == (0, 0, 0)


def test_empty_and_unknown_files_are_refused(project, tmp_path):
    (tmp_path / "empty.jsonl").write_text("")
    (tmp_path / "data.xlsx").write_text("x")
    with pytest.raises(services.imports.ValidationError, match="empty"):
        run(project, tmp_path / "empty.jsonl")
    with pytest.raises(services.imports.ValidationError, match="Unknown file type"):
        run(project, tmp_path / "data.xlsx")


def test_a_failure_while_writing_rolls_everything_back(project, tmp_path, monkeypatch):
    monkeypatch.setattr(services.imports, "BATCH", 1000)
    rows = [{"prompt": f"Q{n}?", "chosen": "a", "rejected": "b"} for n in range(1500)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    real = services.imports.writing._write_judgements
    calls = []

    def fail_on_second_batch(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise RuntimeError("disk full")
        return real(*args, **kwargs)

    monkeypatch.setattr(services.imports.writing, "_write_judgements", fail_on_second_batch)
    with pytest.raises(RuntimeError):
        run(project, path)
    assert counts() == (0, 0, 0)
    assert foreign_keys_checked()
    assert gc.isenabled()
    assert not [t for t in threading.enumerate() if t.name.startswith("import-")]


def test_a_failure_while_reading_reaches_the_import_and_rolls_back(project, tmp_path, monkeypatch):
    monkeypatch.setattr(services.imports, "BATCH", 1000)  # two batches written first
    rows = [{"prompt": f"Q{n}?", "chosen": "a", "rejected": "b"} for n in range(2500)]
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    real = services.imports.parsing.parse_row

    def fail_on_row_2100(row, options):
        if row["prompt"] == "Q2100?":
            raise RuntimeError("reader broke")
        return real(row, options)

    monkeypatch.setattr(services.imports.parsing, "parse_row", fail_on_row_2100)
    with pytest.raises(RuntimeError, match="reader broke"):
        run(project, path)
    assert counts() == (0, 0, 0)


@pytest.mark.timeout(60)
@pytest.mark.skipif(
    connection.vendor != "postgresql", reason="SQLite cannot add a CHECK constraint to a table"
)
def test_a_database_error_while_rows_go_in_rolls_back_and_reaches_the_import(
    project, tmp_path, monkeypatch
):
    """Rows reach PostgreSQL from a thread of their own (imports/postgres.py): an error there,
    two batches after the first rows were sent, must stop the import with the database's own
    message, roll every batch back, and leave no thread behind."""
    monkeypatch.setattr(services.imports, "BATCH", 1000)
    rows = [{"prompt": f"Q{n}?", "chosen": "a", "rejected": "b"} for n in range(3500)]
    rows[2100]["chosen"] = "refused by the database"
    path = write_jsonl(tmp_path / "p.jsonl", rows)
    with connection.cursor() as cursor:  # a real error from the server, rolled back with the test
        cursor.execute(
            "ALTER TABLE feedback_completion ADD CONSTRAINT refuse_one "
            "CHECK (text <> 'refused by the database')"
        )
    with pytest.raises(IntegrityError, match="refuse_one"):
        run(project, path)
    assert counts() == (0, 0, 0)
    assert foreign_keys_checked()
    assert gc.isenabled()
    assert not [t for t in threading.enumerate() if t.name.startswith("import-")]
    # The connection is usable again, and the same file without the bad row goes in.
    rows[2100]["chosen"] = "fine"
    report = run(project, write_jsonl(tmp_path / "q.jsonl", rows))
    assert report.ok and report.created["items"] == 3500


@pytest.mark.skipif(connection.vendor != "postgresql", reason="PostgreSQL's lookups and plans")
def test_the_imports_lookups_probe_the_unique_indexes_under_their_collation(project, tmp_path):
    """The content hashes compare as bytes (collation "C", migration 0025, with every other
    indexed code of the tables an import writes), and so must the import's lookups: compared
    under another collation, the unique indexes could not serve them, and each batch would
    read every row of the project."""
    from feedback.services.imports.postgres import existing_keys_sql, prompt_ids_sql

    rows = [{"prompt": f"Q{n}?", "chosen": "a", "rejected": "b"} for n in range(50)]
    assert run(project, write_jsonl(tmp_path / "p.jsonl", rows)).ok
    hashes = list(Prompt.objects.values_list("content_hash", flat=True)[:3])
    keys = list(Item.objects.values_list("import_key", flat=True)[:3])
    with connection.cursor() as cursor:
        cursor.execute("ANALYZE feedback_prompt; ANALYZE feedback_item")
        cursor.execute("SET LOCAL enable_seqscan = off")
        plans = {}
        for name, sql, params in (
            ("prompts", prompt_ids_sql(), [project.pk, [*hashes, "0" * 64]]),
            ("keys", existing_keys_sql(), [[*keys, "0" * 64], project.pk]),
        ):
            cursor.execute(sql.replace("%b", "%s"), params)
            plans[name] = {tuple(row) for row in cursor.fetchall()}
            cursor.execute("EXPLAIN " + sql.replace("%b", "%s"), params)
            plans[f"{name} plan"] = "\n".join(row[0] for row in cursor.fetchall())
        # Every indexed code of the tables an import writes, not only the hashes.
        cursor.execute(
            "SELECT DISTINCT attrelid::regclass::text, attname, collname FROM pg_index "
            "JOIN pg_attribute ON attrelid = indrelid AND attnum = ANY(indkey) "
            "JOIN pg_collation c ON c.oid = attcollation "
            "WHERE indrelid::regclass::text ~ '^feedback_(prompt|item|assignment|.*judgement|"
            "demonstration)$'"
        )
        collations = {(table, column): name for table, column, name in cursor.fetchall()}
        assert collations["feedback_prompt", "content_hash"] == "C"
        assert collations["feedback_assignment", "status"] == "C"
        assert set(collations.values()) == {"C"}, collations

    def probes(plan: str, index: str, column: str) -> bool:
        """The index finds rows by the key itself (an Index Cond on its column), not only by
        the project with the key tested on each of its rows."""
        conditions = [line for line in plan.splitlines() if "Index Cond" in line]
        return f" {index} " in plan and any(column in line for line in conditions)

    assert probes(plans["prompts plan"], "prompt_unique_per_project", "content_hash")
    assert probes(plans["keys plan"], "item_import_key_once_per_project", "import_key")
    found = dict(plans["prompts"])
    assert [found[h] for h in hashes] == [
        Prompt.objects.get(content_hash=h).pk for h in hashes
    ] and found["0" * 64] is None
    assert plans["keys"] == {(key,) for key in keys}


def foreign_keys_checked() -> bool:
    """Whether PostgreSQL checks foreign keys again, as outside an import (on other databases
    the import never stops it)."""
    if connection.vendor != "postgresql":
        return True
    with connection.cursor() as cursor:
        cursor.execute("SHOW session_replication_role")
        return cursor.fetchone()[0] == "origin"


def references_missing() -> dict[str, int]:
    """Rows whose foreign keys point at nothing, by table: what the database's own checks
    would have refused."""
    projects, prompts = Project.objects.values("id"), Prompt.objects.values("id")
    items, assignments = Item.objects.values("id"), Assignment.objects.values("id")
    found = {
        "prompts": Prompt.objects.exclude(project_id__in=projects),
        "completions": Completion.objects.exclude(prompt_id__in=prompts),
        "items": Item.objects.filter(~Q(prompt_id__in=prompts) | ~Q(project_id__in=projects)),
        "item positions": ItemCompletion.objects.filter(
            ~Q(item_id__in=items) | ~Q(completion_id__in=Completion.objects.values("id"))
        ),
        "assignments": Assignment.objects.exclude(item_id__in=items),
        "judgements": PairwiseJudgement.objects.filter(
            ~Q(assignment_id__in=assignments) | ~Q(item_id__in=items)
        ),
        "demonstrations": Demonstration.objects.filter(
            ~Q(assignment_id__in=assignments) | ~Q(item_id__in=items)
        ),
    }
    return {table: rows.count() for table, rows in found.items() if rows.exists()}


MIXED = [
    {"prompt": "Shared?", "chosen": "yes", "rejected": "no"},
    {"prompt": "Shared?", "completions": ["1", "2", "3"]},
    {"prompt": "Shared?", "completion": "demo"},
    {"prompt": "Alone?"},
]


@pytest.mark.parametrize("triggers", ["off while writing", "on, row by row", "on by default"])
def test_every_reference_points_at_a_row_whichever_way_keys_are_checked(
    project, tmp_path, monkeypatch, settings, triggers
):
    # Turning triggers off is an explicit opt-in, even for a role that may (issue #19).
    settings.VEREDICTO_IMPORT_TRIGGERS_OFF = triggers != "on by default"
    postgres, asked = services.imports.postgres.Postgres, []
    may = postgres._may_turn_off_triggers
    if triggers == "on, row by row":
        may = lambda self: False  # noqa: E731

    def spy(self):
        asked.append(may(self))
        return asked[-1]

    monkeypatch.setattr(postgres, "_may_turn_off_triggers", spy)
    project.task_kinds = [TaskKind.PAIRWISE, TaskKind.DEMONSTRATION]
    project.save()
    # Batches of 2 rows: the shared prompt is created by one batch and found by the next.
    monkeypatch.setattr(services.imports, "BATCH", 2)
    first = run(project, write_jsonl(tmp_path / "a.jsonl", MIXED * 3))
    more = [{"prompt": "Shared?", "chosen": "maybe", "rejected": "never"}]
    second = run(project, write_jsonl(tmp_path / "b.jsonl", more))
    assert first.ok and second.ok, (first.errors, second.errors)
    assert first.created == {"prompts": 2, "completions": 5, "items": 5, "judgements": 2}
    assert first.skipped_duplicates == 8
    assert second.created == {"prompts": 0, "completions": 2, "items": 1, "judgements": 1}
    assert Prompt.objects.count() == 2
    assert references_missing() == {}
    assert foreign_keys_checked()
    if connection.vendor == "postgresql":  # the test database's role is a superuser
        assert asked == [triggers == "off while writing"] * 2


# --- management command ----------------------------------------------------------------------


def test_import_data_command(project, tmp_path):
    path = write_jsonl(tmp_path / "p.jsonl", [{"prompt": "Hello?"}])
    out = StringIO()
    call_command("import_data", str(path), project="Imports", stdout=out)
    assert "Imported 1 rows" in out.getvalue()
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"prompt": ""}\n')
    with pytest.raises(CommandError, match="nothing was imported"):
        call_command("import_data", str(bad), project="Imports")


# --- conversations kept exactly ----------------------------------------------------------------

HISTORY = "\n\nHuman: Hi there\n\nAssistant: Hello!\n\nHuman: Tell a joke"
THREE_TURNS = [
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello!"},
    {"role": "user", "content": "Tell a joke"},
]


@pytest.mark.parametrize(
    "prompt",
    ["Tell a joke", [{"role": "user", "content": "Tell a joke"}], THREE_TURNS],
    ids=["last-turn-as-text", "last-turn-as-messages", "whole-conversation"],
)
def test_a_multi_turn_preference_row_with_an_explicit_prompt_keeps_every_turn(
    project, tmp_path, prompt
):
    row = {
        "prompt": prompt,
        "chosen": HISTORY + "\n\nAssistant: A pun.",
        "rejected": [*THREE_TURNS, {"role": "assistant", "content": "No."}],
    }
    report = run(project, write_jsonl(tmp_path / "hh.jsonl", [row]))
    assert report.ok, report.errors
    assert Prompt.objects.get().messages == THREE_TURNS
    assert [c.text for c in Item.objects.get().ordered_completions()] == ["A pun.", "No."]


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            {"prompt": "Something else", "chosen": HISTORY + "\n\nAssistant: A", "rejected": "B"},
            "prompt does not match the conversation in chosen",
        ),
        (
            {"prompt": "Tell a joke", "chosen": HISTORY + "\n\nAssistant: A",
             "rejected": "\n\nHuman: Tell a joke\n\nAssistant: B"},
            "chosen and rejected continue different conversations",
        ),
        (
            {"chosen": "Preamble" + HISTORY + "\n\nAssistant: A", "rejected": "B"},
            "text before the first Human: turn",
        ),
        (
            {"prompt": "Other", "completion": HISTORY + "\n\nAssistant: A"},
            "prompt does not match the conversation in completion",
        ),
    ],
    ids=["prompt-disagrees", "histories-differ", "preamble", "sft-prompt-disagrees"],
)  # fmt: skip
def test_a_row_whose_conversation_cannot_be_kept_exactly_is_refused(
    project, tmp_path, row, message
):
    report = run(project, write_jsonl(tmp_path / "bad.jsonl", [row]))
    assert [e["row"] for e in report.errors] == [1]
    assert message in report.errors[0]["message"]
    assert counts() == (0, 0, 0)


def test_hh_turns_keep_their_surrounding_spaces(project, tmp_path):
    history = "\n\nHuman:  Hi there \n\nAssistant: Hello!\t\n\nHuman: Tell a joke "
    row = {"chosen": history + "\n\nAssistant:  A pun. ", "rejected": history + "\n\nAssistant: No"}
    report = run(project, write_jsonl(tmp_path / "hh.jsonl", [row]))
    assert report.ok, report.errors
    assert Prompt.objects.get().messages == [
        {"role": "user", "content": " Hi there "},
        {"role": "assistant", "content": "Hello!\t"},
        {"role": "user", "content": "Tell a joke "},
    ]
    assert [c.text for c in Item.objects.get().ordered_completions()] == [" A pun. ", "No"]


def test_an_sft_completion_in_the_hh_layout_keeps_its_earlier_turns(project, tmp_path):
    row = {"prompt": "Tell a joke", "completion": HISTORY + "\n\nAssistant: A pun."}
    report = run(project, write_jsonl(tmp_path / "sft.jsonl", [row]))
    assert report.ok, report.errors
    assert Prompt.objects.get().messages == THREE_TURNS
    assert Demonstration.objects.get().text == "A pun."


# --- metadata the rows carried -------------------------------------------------------------------


def test_ultrafeedback_scores_and_prompt_id_are_kept_on_the_item(project, tmp_path):
    turns = [{"role": "user", "content": "Name a prime."}]
    row = {
        "prompt": "Name a prime.",
        "prompt_id": "abc123",
        "chosen": [*turns, {"role": "assistant", "content": "7"}],
        "rejected": [*turns, {"role": "assistant", "content": "9"}],
        "messages": [*turns, {"role": "assistant", "content": "7"}],
        "score_chosen": 9.0,
        "score_rejected": 2.0,
        "source": {"dataset": "uf", "tags": ["math"]},
    }
    report = run(project, write_jsonl(tmp_path / "uf.jsonl", [row]))
    assert report.ok, report.errors
    assert Item.objects.get().metadata == {
        "prompt_id": "abc123",
        "score_chosen": 9.0,
        "score_rejected": 2.0,
        "source": {"dataset": "uf", "tags": ["math"]},
    }


def test_every_item_a_row_makes_carries_its_metadata(project, tmp_path):
    rows = [
        {"prompt": "Q", "completions": ["a", "b", "c"], "batch": 7},
        {"prompt": "Hi", "completion": "Hey", "quality": "gold"},
        {"prompt": "Plain", "chosen": "x", "rejected": "y"},
    ]
    report = run(project, write_jsonl(tmp_path / "m.jsonl", rows))
    assert report.ok, report.errors
    by_kind = {}
    for item in Item.objects.order_by("id"):
        by_kind.setdefault(item.kind, []).append(item.metadata)
    assert by_kind["pairwise"] == [{"batch": 7}] * 3 + [{}]
    assert by_kind["demonstration"] == [{"quality": "gold"}]


def test_metadata_from_parquet_keeps_dates_as_text_and_refuses_bytes(project, tmp_path):
    from datetime import datetime

    when = datetime(2024, 5, 1, 12, 30)
    table = pa.table(
        {"prompt": ["Q1", "Q2"], "completion": ["A1", "A2"], "collected": [when, when],
         "blob": [None, b"\x00\x01"]}
    )  # fmt: skip
    pq.write_table(table, tmp_path / "m.parquet")
    report = run(project, tmp_path / "m.parquet")
    assert report.errors == [
        {"row": 2, "message": "blob: bytes cannot be kept as metadata (JSON values only)."}
    ]
    pq.write_table(table.drop(["blob"]), tmp_path / "ok.parquet")
    assert run(project, tmp_path / "ok.parquet").ok
    assert Item.objects.first().metadata == {"collected": "2024-05-01T12:30:00"}


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        ({"big": 2**70}, "big: the number is too large"),
        ({"deep": json.loads("[" * 40 + "]" * 40)}, "nested more than 20 levels"),
        ({"huge": "x" * 70_000}, "bytes as JSON; the limit is 65,536"),
    ],
    ids=["bigint", "deep", "huge"],
)
def test_metadata_that_cannot_be_stored_is_a_row_error(project, tmp_path, extra, message):
    row = {"prompt": "Q", "chosen": "a", "rejected": "b", **extra}
    report = run(project, write_jsonl(tmp_path / "m.jsonl", [row]))
    assert [e["row"] for e in report.errors] == [1]
    assert message in report.errors[0]["message"], report.errors


# --- uploaded files ------------------------------------------------------------------------------


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    return settings.MEDIA_ROOT


def uploaded_files(media) -> list:
    """The files under uploads/, and the folders made for each."""
    return sorted([*media.glob("uploads/*/*"), *media.glob("uploads/*/*/*")])


def queued_import(project, importer, content: bytes):
    from django.core.files.uploadedfile import SimpleUploadedFile

    path = services.imports.upload_store(
        uploaded=SimpleUploadedFile("rows.jsonl", content), project=project
    )
    return services.imports.data_import_create(
        project=project, path=path, original_name="rows.jsonl", options=ImportOptions(),
        user=importer,
    )  # fmt: skip


@pytest.mark.parametrize(
    ("content", "status"),
    [(b'{"prompt": "Hello?"}\n', "succeeded"), (b'{"prompt": ""}\n', "failed")],
)
def test_the_uploaded_file_is_removed_once_its_import_finishes(
    project, importer, media, content, status
):
    data_import = queued_import(project, importer, content)
    assert len(uploaded_files(media)) == 2  # the upload's folder and the file

    finished = services.imports.data_import_run(data_import=data_import)

    assert finished.status == status
    assert uploaded_files(media) == []


def test_an_import_whose_file_is_gone_fails_with_a_clear_reason(project, importer, media):
    data_import = queued_import(project, importer, b'{"prompt": "Hello?"}\n')
    (media / data_import.file).unlink()

    finished = services.imports.data_import_run(data_import=data_import)

    assert finished.status == "failed"
    assert "the uploaded file is gone" in finished.error


def test_a_refused_preview_keeps_no_file(client, admin_user, project, media):
    from django.core.files.uploadedfile import SimpleUploadedFile

    client.force_login(admin_user)
    for name, content in [("empty.jsonl", b""), ("data.xlsx", b"x")]:
        response = client.post(
            f"/projects/{project.pk}/data/preview/",
            {"file": SimpleUploadedFile(name, content), "shape": "auto",
             "comparison_mode": "pairwise", "pairing": "all_pairs"},
        )  # fmt: skip
        assert response.status_code == 422
    response = client.post(
        f"/api/projects/{project.pk}/imports", {"file": SimpleUploadedFile("e.jsonl", b"")}
    )
    assert response.status_code == 422
    assert uploaded_files(media) == []


def test_uploads_left_after_a_preview_are_swept_once_their_token_expires(project, importer, media):
    import os
    import time

    from django.core.files.uploadedfile import SimpleUploadedFile

    stale_preview = services.imports.upload_store(
        uploaded=SimpleUploadedFile("a.jsonl", b'{"prompt": "A?"}\n'), project=project
    )
    fresh_preview = services.imports.upload_store(
        uploaded=SimpleUploadedFile("b.jsonl", b'{"prompt": "B?"}\n'), project=project
    )
    waiting = queued_import(project, importer, b'{"prompt": "C?"}\n')
    day_ago = time.time() - services.imports.UPLOAD_KEPT_SECONDS - 60
    for path in (stale_preview, media / waiting.file):
        os.utime(path.parent, (day_ago, day_ago))
        os.utime(path, (day_ago, day_ago))

    removed = services.imports.uploads_sweep()

    assert removed == 1
    assert not stale_preview.exists() and not stale_preview.parent.exists()
    assert fresh_preview.exists() and (media / waiting.file).exists()


def test_a_file_name_that_is_not_utf8_is_recorded_readably(project, tmp_path):
    # A command-line path with undecodable bytes reaches Python as lone surrogates.
    path = write_jsonl(tmp_path / os.fsdecode(b"rows-\xff.jsonl"), [{"prompt": "Hi?"}])
    assert run(project, path).ok
    assert Prompt.objects.get().source == "rows-\\xff.jsonl"
    with pytest.raises(services.imports.ValidationError, match="unpaired surrogate"):
        ImportOptions(source=os.fsdecode(b"\xff"))
