"""The admin data screens, with imports and snapshots run by a real Celery worker on Redis."""

import json
import time

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.files.uploadedfile import SimpleUploadedFile

from config.celery import CeleryQueue, app
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

    response = client.post(
        f"/projects/{project.pk}/snapshots/",
        {"kind": "preference", "name": "seed", "test_fraction": "0", "aggregation": "majority",
         "min_agreement": "0.5", "include_imported": "on"},
    )  # fmt: skip
    snapshot = DatasetSnapshot.objects.get()
    assert response["Location"] == f"/snapshots/{snapshot.pk}/"
    snapshot = wait_for(lambda: DatasetSnapshot.objects.get(), lambda s: s.status != "building")
    assert snapshot.status == "ready" and snapshot.row_counts == {"train": 12, "test": 0}
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
    content = PREFS + b'{"prompt": "x", "chosen": "", "rejected": "y"}\n'
    page = preview(client, project, content)
    client.post(
        f"/projects/{project.pk}/data/import/",
        {"upload_token": page.context["upload_token"], "shape": "auto",
         "comparison_mode": "pairwise", "pairing": "all_pairs"},
    )  # fmt: skip
    data_import = wait_for(lambda: DataImport.objects.get(), lambda d: d.is_finished)
    assert data_import.status == "failed"
    assert data_import.report["errors"] == [{"row": 13, "message": "Must not be empty."}]
    assert not Item.objects.exists()
    html = client.get(f"/imports/{data_import.pk}/").content.decode()
    assert "Nothing was imported" in html and "Row 13" in html


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
