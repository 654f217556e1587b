"""Idempotency keys on the API's writes (core.idempotency): a retried POST gets the first
response and creates nothing; the same key with another request is refused; an error keeps
nothing; keys belong to their user and expire; and two requests sent at once with one key make
one row, which the database decides (PostgreSQL's unique index, not a lock in the process)."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from django.db import connection, connections
from django.test import Client
from django.test.client import encode_multipart
from django.utils import timezone

from config.api import api as ninja_api
from config.celery import app
from core.models import IdempotencyKey
from core.roles import Role
from core.tokens import token_create
from evals.models import EvalRun
from feedback import services
from feedback.models import Assignment, DataImport, DatasetSnapshot, PairwiseJudgement
from jobs.tasks import sweep
from modeling.models import Checkpoint, CheckpointKind
from tests.factories import ProjectFactory, UserFactory, make_item
from tests.feedback.test_api import assert_error

pytestmark = pytest.mark.django_db


def client_of(user) -> Client:
    _, key = token_create(user=user, name=f"test-{time.monotonic_ns()}")
    return Client(headers={"Authorization": f"Bearer {key}"})


def post(client: Client, path: str, body: dict, key: str | None = "k-1"):
    headers = {"Idempotency-Key": key} if key is not None else {}
    return client.post(f"/api{path}", body, content_type="application/json", headers=headers)


@pytest.fixture
def admin(admin_user):
    return client_of(admin_user)


@pytest.fixture
def project(db):
    return ProjectFactory()


@pytest.fixture
def checkpoint(db):
    return Checkpoint.objects.create(name="tiny", kind=CheckpointKind.POLICY, storage_path="/m/t")


@pytest.fixture
def snapshot_request(project):
    return f"/projects/{project.pk}/snapshots", {"kind": "prompts", "name": "nightly"}


# --- a retry after a lost response ---------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["snapshot", "eval run"])
def test_a_retry_after_a_lost_response_gets_the_first_response_and_creates_nothing(
    admin, project, checkpoint, endpoint
):
    path, body, model = {
        "snapshot": (f"/projects/{project.pk}/snapshots", {"kind": "prompts"}, DatasetSnapshot),
        "eval run": (
            "/evals/runs",
            {"checkpoint_id": checkpoint.pk, "suite": "multiple_choice", "task": "facts_mc"},
            EvalRun,
        ),
    }[endpoint]
    first = post(admin, path, body)  # committed; say its answer never reached the client
    assert first.status_code == 202, first.content

    retry = post(admin, path, {**body})
    assert retry.status_code == 202
    assert retry.json() == first.json()
    assert retry["Idempotent-Replayed"] == "true" and "Idempotent-Replayed" not in first
    assert model.objects.count() == 1

    another = post(admin, path, body, key="k-2")  # a new key is a new request
    assert another.status_code == 202 and another.json()["id"] != first.json()["id"]
    assert model.objects.count() == 2


def test_without_a_key_every_post_creates(admin, snapshot_request):
    path, body = snapshot_request
    post(admin, path, body, key=None)
    post(admin, path, body, key=None)
    assert DatasetSnapshot.objects.count() == 2 and not IdempotencyKey.objects.exists()


def test_json_bodies_are_the_same_request_whatever_their_key_order(admin, snapshot_request):
    path, body = snapshot_request
    first = post(admin, path, body)
    again = admin.post(
        f"/api{path}",
        '{ "name": "nightly",  "kind": "prompts" }',
        content_type="application/json",
        headers={"Idempotency-Key": "k-1"},
    )
    assert again.status_code == 202 and again.json()["id"] == first.json()["id"]


def test_a_retried_upload_is_the_same_request_whatever_its_multipart_boundary(
    admin, project, settings, tmp_path
):
    settings.MEDIA_ROOT = tmp_path
    content = b'{"prompt": "Hello?"}\n'

    def upload(boundary: str):
        from django.core.files.uploadedfile import SimpleUploadedFile

        fields = {"file": SimpleUploadedFile("p.jsonl", content), "shape": "prompts"}
        return admin.post(
            f"/api/projects/{project.pk}/imports",
            encode_multipart(boundary, fields),
            content_type=f"multipart/form-data; boundary={boundary}",
            headers={"Idempotency-Key": "upload-1"},
        )

    first, retry = upload("BoundaryOfTheFirstTry"), upload("AnotherBoundaryOnRetry")
    assert first.status_code == 202, first.content
    assert retry.status_code == 202 and retry.json()["id"] == first.json()["id"]
    assert DataImport.objects.count() == 1


def test_a_retried_judgement_submit_is_replayed(project, annotator):
    item = make_item(project)
    lease = Assignment.objects.create(
        item=item, annotator=annotator, expires_at="2100-01-01T00:00Z"
    )
    client = client_of(annotator)
    body = {"choice": "a", "strength": "clear"}
    first = post(client, f"/assignments/{lease.pk}/pairwise", body)
    retry = post(client, f"/assignments/{lease.pk}/pairwise", body)
    assert first.status_code == retry.status_code == 200
    assert retry.json() == first.json() and retry["Idempotent-Replayed"] == "true"
    assert PairwiseJudgement.objects.count() == 1


# --- refusals and what is not kept ---------------------------------------------------------------


def test_the_same_key_with_another_body_or_endpoint_is_refused(admin, project, snapshot_request):
    path, body = snapshot_request
    post(admin, path, body)

    other_body = post(admin, path, {**body, "name": "weekly"})
    assert_error(other_body, 422, "idempotency_key_reused")
    other_project = ProjectFactory()
    other_path = post(admin, f"/projects/{other_project.pk}/snapshots", body)
    assert_error(other_path, 422, "idempotency_key_reused")
    assert DatasetSnapshot.objects.count() == 1


def test_an_error_keeps_nothing_so_the_corrected_request_can_use_the_key(admin, snapshot_request):
    path, body = snapshot_request
    refused = post(admin, path, {**body, "policy": {"agregation": "all"}})
    assert_error(refused, 422, "invalid")
    assert not IdempotencyKey.objects.exists()

    corrected = post(admin, path, body)
    assert corrected.status_code == 202 and DatasetSnapshot.objects.count() == 1


def test_keys_belong_to_their_user(admin, roles, snapshot_request):
    path, body = snapshot_request
    colleague = client_of(UserFactory(roles=[Role.ADMIN]))
    mine, theirs = post(admin, path, body), post(colleague, path, body)
    assert mine.json()["id"] != theirs.json()["id"]
    assert DatasetSnapshot.objects.count() == 2


def test_an_expired_key_is_forgotten(admin, snapshot_request, settings):
    path, body = snapshot_request
    first = post(admin, path, body)
    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))

    again = post(admin, path, body)
    assert again.status_code == 202 and again.json()["id"] != first.json()["id"]
    assert "Idempotent-Replayed" not in again

    IdempotencyKey.objects.update(created_at=timezone.now() - timedelta(hours=25))
    sweep()  # the scheduled sweep forgets it
    assert not IdempotencyKey.objects.exists()


@pytest.mark.parametrize("key", ["", "x" * 256, "tab\tinside"])
def test_a_malformed_key_is_refused(admin, snapshot_request, key):
    path, body = snapshot_request
    assert_error(post(admin, path, body, key=key), 422, "invalid_idempotency_key")
    assert not DatasetSnapshot.objects.exists()


def test_every_create_endpoint_documents_the_key():
    schema = ninja_api.get_openapi_schema()
    keyed = {
        (path, method)
        for path, operations in schema["paths"].items()
        for method, operation in operations.items()
        if any(p["name"] == "Idempotency-Key" for p in operation.get("parameters", []))
    }
    creates = {
        ("/api/projects/{project_id}/imports", "post"),
        ("/api/projects/{project_id}/snapshots", "post"),
        ("/api/jobs", "post"),
        ("/api/jobs/{job_id}/rerun", "post"),
        ("/api/evals/runs", "post"),
        ("/api/evals/runs/{run_id}/rerun", "post"),
        ("/api/assignments/{assignment_id}/pairwise", "post"),
    }
    assert creates <= keyed


# --- two at once ---------------------------------------------------------------------------------


@pytest.fixture
def purge_default_queue():
    yield
    with app.connection_for_write() as broker:
        broker.default_channel.queue_purge("default")


def _waiting_on_a_lock() -> bool:
    with connections["default"].cursor() as cursor:
        cursor.execute(
            "SELECT count(*) FROM pg_stat_activity "
            "WHERE wait_event_type = 'Lock' AND datname = current_database()"
        )
        return cursor.fetchone()[0] > 0


@pytest.mark.skipif("connection.vendor != 'postgresql'")
@pytest.mark.django_db(transaction=True)
def test_two_posts_sent_at_once_with_one_key_create_one_row(
    admin_user, monkeypatch, purge_default_queue
):
    """Forced: the first request stops inside the endpoint, its snapshot row written but not
    committed; the second is sent then, and must wait on the key's unique index (seen in
    pg_stat_activity) rather than create a second snapshot; the first then finishes."""
    project = ProjectFactory()
    path, body = f"/projects/{project.pk}/snapshots", {"kind": "prompts"}
    inside, release = threading.Event(), threading.Event()
    real_request = services.snapshot_request

    def request_then_pause(**kwargs):
        snapshot = real_request(**kwargs)
        if not inside.is_set():
            inside.set()
            assert release.wait(30)
        return snapshot

    monkeypatch.setattr(services, "snapshot_request", request_then_pause)
    clients = [client_of(admin_user), client_of(admin_user)]  # two tokens, one user
    responses: dict[int, object] = {}

    def send(n: int) -> None:
        try:
            responses[n] = post(clients[n], path, body)
        finally:
            connection.close()

    first = threading.Thread(target=send, args=(0,))
    first.start()
    assert inside.wait(30)
    second = threading.Thread(target=send, args=(1,))
    second.start()
    deadline = time.monotonic() + 10
    while not _waiting_on_a_lock() and time.monotonic() < deadline:
        time.sleep(0.05)
    waited = _waiting_on_a_lock()
    release.set()
    first.join(30)
    second.join(30)

    assert waited, "the second request did not wait for the first"
    assert responses[0].status_code == responses[1].status_code == 202
    assert responses[0].json()["id"] == responses[1].json()["id"]
    assert responses[1]["Idempotent-Replayed"] == "true"
    assert DatasetSnapshot.objects.count() == 1
