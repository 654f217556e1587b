"""The admin data screens, with imports and snapshots run by a real Celery worker on Redis."""

import json
import re
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.uploadedfile import SimpleUploadedFile

from config.celery import CeleryQueue, app
from feedback import services
from feedback.models import DataImport, DatasetSnapshot, Item, PairwiseJudgement
from tests.factories import ProjectFactory

PREFS = "".join(
    json.dumps({"prompt": f"Q{n}?", "chosen": f"good {n}", "rejected": f"bad {n}"}) + "\n"
    for n in range(12)
).encode()


@pytest.fixture
def media(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    return tmp_path


@pytest.fixture
def worker(transactional_db):
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[CeleryQueue.DEFAULT]):
        yield


def wait_for(fetch, done, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        obj = fetch()
        if done(obj):
            return obj
        time.sleep(0.2)
    raise AssertionError(f"timed out waiting; last state {obj!r}")


def preview(client, project, content=PREFS, name="prefs.jsonl"):
    upload = SimpleUploadedFile(name, content, content_type="application/jsonl")
    return client.post(
        f"/projects/{project.pk}/data/preview/",
        {"file": upload, "shape": "auto", "comparison_mode": "pairwise", "pairing": "all_pairs"},
    )


@pytest.mark.django_db(transaction=True)
def test_admin_previews_imports_and_snapshots_with_a_real_worker(client, admin_user, media, worker):
    project = ProjectFactory(name="Data")
    client.force_login(admin_user)

    page = preview(client, project)
    html = page.content.decode()
    assert page.status_code == 200
    assert "12 × preference" in html and "good 0" in html
    token = page.context["upload_token"]

    response = client.post(
        f"/projects/{project.pk}/data/import/",
        {"upload_token": token, "shape": "auto", "comparison_mode": "pairwise",
         "pairing": "all_pairs", "source": ""},
    )  # fmt: skip
    data_import = DataImport.objects.get()
    assert response["Location"] == f"/imports/{data_import.pk}/"
    data_import = wait_for(lambda: DataImport.objects.get(), lambda d: d.is_finished)
    assert data_import.status == "succeeded", data_import.report
    assert PairwiseJudgement.objects.count() == 12
    assert "12 items" in client.get(f"/imports/{data_import.pk}/").content.decode()
    # The import's search vectors, left for after its commit, indexed by the worker it asked.
    wait_for(services.search_pending, lambda pending: pending == 0)
    assert client.get(f"/projects/{project.pk}/records/?q=good").context["page"].count == 12

    response = client.post(
        f"/projects/{project.pk}/snapshots/",
        {"kind": "preference", "name": "seed", "test_fraction": "0", "aggregation": "majority",
         "min_agreement": "0.5", "include_imported": "on"},
    )  # fmt: skip
    snapshot = DatasetSnapshot.objects.get()
    assert response["Location"] == f"/snapshots/{snapshot.pk}/"
    snapshot = wait_for(lambda: DatasetSnapshot.objects.get(), lambda s: not s.is_active)
    assert snapshot.status == "succeeded" and snapshot.row_counts == {"train": 12, "test": 0}
    detail = client.get(f"/snapshots/{snapshot.pk}/").content.decode()
    assert snapshot.content_hash in detail
    download = client.get(f"/snapshots/{snapshot.pk}/files/train.jsonl")
    rows = [json.loads(line) for line in b"".join(download.streaming_content).splitlines()]
    assert len(rows) == 12 and rows[0]["chosen"][0]["role"] == "assistant"


@pytest.mark.django_db(transaction=True)
def test_an_import_with_bad_rows_fails_with_row_numbers_and_writes_nothing(
    client, admin_user, media, worker
):
    project = ProjectFactory(name="Data")
    client.force_login(admin_user)
    # Past the rows a preview checks: only the import itself reads that far.
    good = PREFS * 20
    content = good + b'{"prompt": "x", "chosen": "", "rejected": "y"}\n'
    page = preview(client, project, content)
    assert page.context["upload_token"]
    client.post(
        f"/projects/{project.pk}/data/import/",
        {"upload_token": page.context["upload_token"], "shape": "auto",
         "comparison_mode": "pairwise", "pairing": "all_pairs"},
    )  # fmt: skip
    data_import = wait_for(lambda: DataImport.objects.get(), lambda d: d.is_finished)
    assert data_import.status == "failed"
    assert data_import.report["errors"] == [{"row": 241, "message": "chosen: Must not be empty."}]
    assert not Item.objects.exists()
    html = client.get(f"/imports/{data_import.pk}/").content.decode()
    assert "Nothing was imported" in html and "Row 241" in html


def import_button(html: str) -> str:
    return re.search(r"<button[^>]*>Import the whole file</button>", html).group(0)


@pytest.mark.django_db
def test_a_preview_flags_rows_of_a_known_shape_with_a_field_missing_or_of_the_wrong_type(
    client, admin_user, media
):
    """Half a preference pair, or messages that are not a list, used to be read as a plain
    prompt without a word (issue #17): each is a row error naming the field, and a file whose
    preview shows errors cannot be imported."""
    project = ProjectFactory(name="Data")
    client.force_login(admin_user)
    rows = [
        {"prompt": "Fine?", "chosen": "yes", "rejected": "no"},
        {"prompt": "Half a pair?", "chosen": "yes"},
        {"messages": "not a list"},
        {"prompt": "The other half?", "rejected": "no"},
        {"completions": ["a", "b"]},
        {"prompt": "Odd reply?", "chosen": "yes", "rejected": 7},
    ]
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()

    page = preview(client, project, content)

    html = page.content.decode()
    assert page.status_code == 200
    for expected in (
        "Row 2: rejected is missing",
        "Row 3: messages must be a list of {role, content} messages, not text",
        "Row 4: chosen is missing",
        "Row 5: prompt is missing",
        "Row 6: rejected must be text or a list of messages",
    ):
        assert expected in html
    assert "5 rows cannot be imported" in html
    assert "disabled" in import_button(html)
    assert page.context["upload_token"] is None
    assert not list(media.glob("uploads/*/*/*"))  # nothing kept for an import that cannot run


@pytest.mark.django_db
def test_the_server_refuses_an_import_whose_first_rows_have_errors(client, admin_user, media):
    """The button is not the only guard: options changed after the preview are checked again."""
    project = ProjectFactory(name="Data")
    client.force_login(admin_user)
    page = preview(client, project)
    assert "disabled" not in import_button(page.content.decode())

    response = client.post(
        f"/projects/{project.pk}/data/import/",
        {"upload_token": page.context["upload_token"], "shape": "sft",
         "comparison_mode": "pairwise", "pairing": "all_pairs"},
    )  # fmt: skip

    assert response.status_code == 422
    assert "errors" in response.content.decode()
    assert not DataImport.objects.exists()


@pytest.mark.django_db
def test_a_preview_says_how_many_rows_it_shows(client, admin_user, media):
    """ "The first 7 rows" above a table of 5 (issue #17): each count says what it counts."""
    project = ProjectFactory(name="Data")
    client.force_login(admin_user)
    seven = b"".join(PREFS.splitlines(keepends=True)[:7])

    html = preview(client, project, seven).content.decode()

    assert "Checked the first 7 rows" in html
    assert "The first 5 valid rows, as they will be imported" in html
    body = html.split('<table class="data preview">')[1].split("</tbody>")[0]
    assert body.count("<tr>") == 6  # the header row and 5 rows


@pytest.mark.django_db
def test_a_preview_shows_each_reply_on_its_own_with_its_model(client, admin_user, media):
    project = ProjectFactory(name="Data")
    client.force_login(admin_user)
    rows = [
        {"prompt": "Pick one", "completions": [{"text": "first", "model": "model-a"},
                                               {"text": "second", "model": "model-b"}, "third"]},
        {"prompt": "Better?", "chosen": "good", "rejected": "bad", "chosen_model": "model-c"},
    ]  # fmt: skip
    content = "".join(json.dumps(row) + "\n" for row in rows).encode()

    html = preview(client, project, content).content.decode()

    replies = re.findall(r'<div class="preview-reply">(.*?)</div></div>', html, re.S)
    assert len(replies) == 5
    assert "reply 1" in replies[0] and "model-a" in replies[0] and "first" in replies[0]
    assert "model-b" in replies[1] and "second" in replies[1]
    assert "badge" not in replies[2] and "third" in replies[2]
    assert "chosen" in replies[3] and "model-c" in replies[3] and "good" in replies[3]
    assert "rejected" in replies[4] and "bad" in replies[4]


@pytest.mark.django_db
def test_preview_of_an_unreadable_file_is_a_clear_422(client, admin_user, media):
    project = ProjectFactory()
    client.force_login(admin_user)
    response = preview(client, project, b"x", name="sheet.xlsx")
    assert response.status_code == 422
    assert "Unknown file type .xlsx" in response.content.decode()
    response = preview(client, project, b"", name="empty.jsonl")
    assert response.status_code == 422


@pytest.mark.django_db
def test_a_tampered_upload_token_is_refused(client, admin_user, media):
    project, other = ProjectFactory(), ProjectFactory()
    client.force_login(admin_user)
    token = preview(client, other).context["upload_token"]
    for bad in ("forged", token):
        response = client.post(
            f"/projects/{project.pk}/data/import/",
            {"upload_token": bad, "shape": "auto", "comparison_mode": "pairwise",
             "pairing": "all_pairs"},
        )  # fmt: skip
        assert response.status_code == 400
    assert not DataImport.objects.exists()


@pytest.mark.django_db
def test_bad_snapshot_settings_are_a_422(client, admin_user, media):
    project = ProjectFactory()
    client.force_login(admin_user)
    response = client.post(
        f"/projects/{project.pk}/snapshots/",
        {
            "kind": "preference",
            "test_fraction": "2",
            "aggregation": "majority",
            "min_agreement": "0.5",
        },
    )
    assert response.status_code == 422
    assert not DatasetSnapshot.objects.exists()


@pytest.mark.django_db
@pytest.mark.parametrize("user_fixture", ["annotator", "reviewer"])
def test_data_screens_are_admin_only(client, request, user_fixture, media):
    project = ProjectFactory()
    client.force_login(request.getfixturevalue(user_fixture))
    assert client.get(f"/projects/{project.pk}/data/").status_code == 403
    assert preview(client, project).status_code == 403
    assert client.post(f"/projects/{project.pk}/snapshots/", {"kind": "sft"}).status_code == 403


@pytest.mark.django_db
def test_downloads_only_serve_known_files_of_ready_snapshots(client, admin_user, media):
    from feedback import services

    project = ProjectFactory()
    snapshot = services.snapshot_create(project=project, kind="prompts")
    client.force_login(admin_user)
    assert client.get(f"/snapshots/{snapshot.pk}/files/manifest.json").status_code == 200
    assert client.get(f"/snapshots/{snapshot.pk}/files/..%2Fsecret").status_code == 404
    assert client.get(f"/snapshots/{snapshot.pk}/files/settings.py").status_code == 404
    assert client.get(f"/snapshots/{snapshot.pk}/files/train.parquet").status_code == 404  # empty


@pytest.fixture
def sloppy_on_gold(admin_user):
    """ "sloppy" gets the only gold item wrong (gold accuracy 0) and judges one ordinary item."""
    from feedback import services
    from feedback.models import Assignment
    from feedback.services import review
    from tests.factories import annotator, make_item

    project = ProjectFactory(overlap=1)
    gold, ordinary = make_item(project), make_item(project)
    review.item_mark_gold(item_id=gold.pk, admin=admin_user, answer={"choice": "a"})
    sloppy = annotator("sloppy")
    for item, choice in ((gold, "b"), (ordinary, "a")):
        a = Assignment.objects.create(item=item, annotator=sloppy, expires_at="2100-01-01T00:00Z")
        services.pairwise_submit(
            assignment_id=a.pk, annotator=sloppy, choice=choice, strength="clear"
        )
    return project


SNAPSHOT_FORM = {"kind": "preference", "test_fraction": "0", "aggregation": "majority",
                 "min_agreement": "0.5"}  # fmt: skip


@pytest.mark.django_db
@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("min_gold_accuracy", "1.5", "less than or equal to 1"),
        ("min_annotator_agreement", "-0.2", "greater than or equal to 0"),
        ("min_item_agreement", "lots", "Enter a number"),
    ],
)
def test_out_of_range_trust_thresholds_are_a_422_naming_the_field(
    client, admin_user, media, field, value, message
):
    project = ProjectFactory()
    client.force_login(admin_user)
    response = client.post(f"/projects/{project.pk}/snapshots/", {**SNAPSHOT_FORM, field: value})
    assert response.status_code == 422
    assert message in response.content.decode()
    assert response.context["snapshot_form"].errors.keys() == {field}
    assert not DatasetSnapshot.objects.exists()


@pytest.mark.django_db
def test_the_form_records_the_trust_options_and_the_page_shows_what_they_did(
    client, admin_user, media, sloppy_on_gold
):
    from feedback import services

    client.force_login(admin_user)
    form = {**SNAPSHOT_FORM, "min_gold_accuracy": "0.5", "exclude_flagged": "on"}
    response = client.post(f"/projects/{sloppy_on_gold.pk}/snapshots/", form)
    snapshot = DatasetSnapshot.objects.get()
    assert response.status_code == 302
    assert {k: snapshot.policy[k] for k in ("min_gold_accuracy", "exclude_flagged",
            "min_annotator_agreement", "min_item_agreement", "include_gold")} == {
        "min_gold_accuracy": 0.5, "exclude_flagged": True, "min_annotator_agreement": None,
        "min_item_agreement": None, "include_gold": False}  # fmt: skip

    services.snapshot_build(snapshot=snapshot)  # what the worker does
    html = client.get(f"/snapshots/{snapshot.pk}/").content.decode()

    assert "Min gold accuracy</th><td>0.5" in html
    assert "Min annotator agreement</th><td>off" in html
    assert "<strong>sloppy</strong>: gold accuracy 0 below 0.5" in html
    assert "judgements on gold items</td><td>1" in html
    assert "judgements by left-out annotators</td><td>1" in html
    assert "0 pairs took an adjudicated answer" in html
    listing = client.get(f"/projects/{sloppy_on_gold.pk}/data/").content.decode()
    assert "<td>sloppy</td>" in listing


# --- in a browser ------------------------------------------------------------------------------


@pytest.fixture
def judged(roles, admin_user):
    """24 pairwise items and 4 gold ones judged by three annotators through the queue: two
    careful ones who disagree on two items, and "lefty", who always takes the left reply in a
    second (side bias, too fast)."""
    from feedback import services
    from feedback.services import review
    from tests.factories import annotator, make_item

    project = ProjectFactory(name="Helpful replies", overlap=3, gold_rate=0.15)
    for n in range(24):
        make_item(project, texts=[f"A careful reply {n}", f"A sloppy reply {n}"])
    for _ in range(4):
        gold = make_item(project, texts=["Right", "Wrong"])
        review.item_mark_gold(item_id=gold.pk, admin=admin_user, answer={"choice": "a"})
    for name in ("careful1", "careful2", "lefty"):
        user = annotator(name)
        while a := services.task_next_for_annotator(project=project, annotator=user):
            a_id = a.item.item_completions.get(position=0).completion_id
            left = "a" if a.display_order[0] == a_id else "b"
            choice = "a"
            if name == "lefty":
                choice = left
            elif name == "careful2" and a.item_id % 12 == 0:
                choice = "b"
            services.pairwise_submit(
                assignment_id=a.pk, annotator=user, choice=choice, strength="clear",
                seconds_spent=1.0 if name == "lefty" else 25.0,
            )  # fmt: skip
    return project


@pytest.mark.browser
@pytest.mark.django_db(transaction=True)
def test_admin_reads_quality_adjudicates_and_builds_a_trusted_snapshot(
    page, admin_user, media, worker, judged
):
    from tests.playwright_support import login, shot

    login(page, admin_user.username)
    page.goto(f"/projects/{judged.pk}/quality/")
    page.wait_for_selector("tr:has-text('lefty') >> text=side bias")
    shot(page, "quality", full_page=True)

    page.click("text=with split judgements")
    page.wait_for_selector("text=Adjudicate")
    shot(page, "disagreements", full_page=True)
    split = page.locator("a:has-text('Adjudicate')").count()
    page.locator("a:has-text('Adjudicate')").first.click()
    page.wait_for_selector("text=The recorded answer")
    shot(page, "adjudicate", full_page=True)
    page.check("input[name=choice][value=b]")
    page.fill("textarea[name=note]", "B is the careful one here.")
    page.click("button:has-text('Record')")
    page.wait_for_url(f"**/projects/{judged.pk}/disagreements/")
    assert page.locator("a:has-text('Adjudicate')").count() == split - 1

    page.goto(f"/projects/{judged.pk}/data/")
    page.fill("input[name=name]", "trusted v1")
    page.fill("input[name=test_fraction]", "0")
    # Out of range: the browser itself refuses to send it (the server's 422 is tested above).
    page.fill("input[name=min_annotator_agreement]", "1.5")
    page.click("button:has-text('Build snapshot')")
    assert page.eval_on_selector(
        "input[name=min_annotator_agreement]", "input => input.validity.rangeOverflow"
    )
    assert page.url.endswith(f"/projects/{judged.pk}/data/")
    assert not DatasetSnapshot.objects.exists()
    page.fill("input[name=min_annotator_agreement]", "0.6")
    page.check("input[name=exclude_flagged]")
    shot(page, "data-snapshot-form", full_page=True)
    page.click("button:has-text('Build snapshot')")
    page.wait_for_selector("#snapshot-status >> text=Ready", timeout=60_000)
    shot(page, "snapshot", full_page=True)

    filters = page.inner_text("#snapshot-filters")
    # lefty's agreement depends on how the queue shuffled the sides; the flags do not.
    assert "lefty: " in filters and "flagged: too fast (median 1.0s)" in filters
    assert "1 pair took an adjudicated answer" in filters
    snapshot = DatasetSnapshot.objects.get(name="trusted v1")
    assert [a["username"] for a in snapshot.stats["excluded_annotators"]] == ["lefty"]


@pytest.mark.django_db
def test_the_form_offers_dawid_skene_and_refuses_a_min_posterior_without_it(
    client, admin_user, media
):
    from feedback import services
    from tests.factories import outvoted_crowd

    project = ProjectFactory(overlap=4)
    outvoted_crowd(project)
    client.force_login(admin_user)
    assert (
        "Dawid–Skene posterior per item"
        in client.get(f"/projects/{project.pk}/data/").content.decode()
    )

    refused = client.post(f"/projects/{project.pk}/snapshots/",
                          {**SNAPSHOT_FORM, "min_posterior": "0.9"})  # fmt: skip
    assert refused.status_code == 422
    assert "Applies to the Dawid–Skene aggregation only." in refused.content.decode()
    assert refused.context["snapshot_form"].errors.keys() == {"min_posterior"}
    assert not DatasetSnapshot.objects.exists()

    form = {**SNAPSHOT_FORM, "aggregation": "dawid_skene", "min_posterior": "0.9"}
    assert client.post(f"/projects/{project.pk}/snapshots/", form).status_code == 302
    snapshot = services.snapshot_build(snapshot=DatasetSnapshot.objects.get())
    html = client.get(f"/snapshots/{snapshot.pk}/").content.decode()
    assert "Aggregation</th><td>dawid_skene" in html
    assert "Dawid–Skene: label&#x27;s least posterior</th><td>0.9" in html
    assert "pairs whose Dawid–Skene label was below its least posterior</td><td>0" in html
