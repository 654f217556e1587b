"""The HTTP API: tokens, roles identical to the UI, the annotation flow, imports and snapshots,
and schemathesis fuzzing the whole schema for server errors."""

import json
import time

import pytest
import schemathesis
from celery.contrib.testing.worker import start_worker
from django.contrib.auth import get_user_model
from django.core.files.uploadedfile import SimpleUploadedFile
from django.core.signals import request_finished, request_started
from django.db import close_old_connections
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    content_type_conformance,
    not_a_server_error,
    response_schema_conformance,
    status_code_conformance,
)

from config.celery import CeleryQueue, app
from config.wsgi import application
from core.models import ApiToken
from core.tokens import token_create
from feedback import services
from feedback.models import PairwiseJudgement, TaskKind
from tests.factories import ProjectFactory, make_item

pytestmark = pytest.mark.django_db


def bearer(user) -> dict:
    _, key = token_create(user=user, name=f"test-{user.pk}-{time.monotonic_ns()}")
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def api(client):
    def call(method, path, user=None, headers=None, **kwargs):
        headers = {**(bearer(user) if user else {}), **(headers or {})}
        return getattr(client, method)(f"/api{path}", headers=headers, **kwargs)

    return call


def assert_error(response, status, code=None):
    assert response.status_code == status, response.content
    body = response.json()
    assert set(body) == {"error"} and {"code", "message", "details"} <= set(body["error"])
    if code:
        assert body["error"]["code"] == code


# --- tokens ----------------------------------------------------------------------------------


def test_tokens_are_shown_once_stored_hashed_and_revocable(client, annotator, api):
    client.force_login(annotator)
    page = client.post("/account/tokens/", {"name": "laptop"})
    key = page.context["new_key"]
    assert key.startswith("vdt_") and key in page.content.decode()
    token = ApiToken.objects.get()
    assert key not in (token.key_hash, token.prefix)
    assert key not in client.get("/account/tokens/").content.decode()

    headers = {"Authorization": f"Bearer {key}"}
    client.logout()
    assert client.get("/api/projects", headers=headers).status_code == 200
    client.force_login(annotator)
    client.post(f"/account/tokens/{token.pk}/revoke/")
    client.logout()
    assert_error(client.get("/api/projects", headers=headers), 401, "unauthenticated")


def test_no_or_bad_token_is_401(api):
    assert_error(api("get", "/projects"), 401, "unauthenticated")
    assert_error(api("get", "/projects", headers={"Authorization": "Bearer vdt_nope"}), 401)


def test_a_deactivated_users_token_is_401(api, annotator):
    headers = bearer(annotator)
    assert api("get", "/projects", headers=headers).status_code == 200
    get_user_model().objects.filter(pk=annotator.pk).update(is_active=False)
    assert_error(api("get", "/projects", headers=headers), 401, "unauthenticated")


def test_a_token_brings_every_role_of_its_user_and_stamps_its_use(api, annotator, reviewer):
    from core.roles import Role, user_roles
    from core.tokens import token_authenticate

    annotator.groups.add(*reviewer.groups.all())
    token, key = token_create(user=annotator, name="both")
    user = token_authenticate(key)
    assert user.pk == annotator.pk
    assert user_roles(user) == {Role.ANNOTATOR, Role.REVIEWER}
    token.refresh_from_db()
    assert token.last_used_at is not None
    assert token_authenticate(key.replace("vdt_", "vdt_x", 1)) is None


def test_duplicate_active_token_name_is_refused(client, annotator):
    client.force_login(annotator)
    client.post("/account/tokens/", {"name": "ci"})
    assert client.post("/account/tokens/", {"name": "ci"}).status_code == 422
    assert ApiToken.objects.count() == 1


# --- roles -----------------------------------------------------------------------------------


def test_annotators_see_only_projects_they_may_work_on(api, annotator, other_annotator, admin_user):
    mine, members_only = ProjectFactory(), ProjectFactory()
    ProjectFactory(is_active=False)
    members_only.annotators.add(other_annotator)
    names = {p["name"] for p in api("get", "/projects", annotator).json()}
    assert names == {mine.name}
    assert len(api("get", "/projects", admin_user).json()) == 3
    assert_error(api("get", f"/projects/{members_only.pk}", annotator), 404)


@pytest.mark.parametrize("user_fixture", ["annotator", "reviewer"])
def test_admin_endpoints_refuse_other_roles(api, request, user_fixture, project):
    user = request.getfixturevalue(user_fixture)
    upload = SimpleUploadedFile("p.jsonl", b'{"prompt": "x"}\n')
    assert_error(api("post", f"/projects/{project.pk}/imports", user, data={"file": upload}), 403)
    assert_error(
        api("post", f"/projects/{project.pk}/snapshots", user,
            data={"kind": "sft"}, content_type="application/json"),
        403,
    )  # fmt: skip


def test_reviewers_cannot_take_tasks(api, reviewer, project, pairwise_item):
    assert_error(api("post", f"/projects/{project.pk}/next", reviewer), 404)


def test_annotators_take_tasks_only_where_they_may_work(api, annotator, other_annotator):
    members_only, closed = ProjectFactory(), ProjectFactory(is_active=False)
    members_only.annotators.add(other_annotator)
    for project in (members_only, closed):
        make_item(project)
        assert_error(api("post", f"/projects/{project.pk}/next", annotator), 404, "not_found")
    assert api("post", f"/projects/{members_only.pk}/next", other_annotator).status_code == 200
    assert_error(api("post", f"/projects/{2**63}/next", annotator), 404, "not_found")


# --- the annotation flow ---------------------------------------------------------------------


def test_annotator_works_a_pairwise_task_over_the_api(api, annotator, project, pairwise_item):
    leased = api("post", f"/projects/{project.pk}/next", annotator)
    assert leased.status_code == 200
    body = leased.json()
    assert body["item"]["id"] == pairwise_item.pk and len(body["item"]["completions"]) == 2
    url = f"/assignments/{body['id']}/pairwise"
    payload = {"choice": "b", "strength": "clear", "labels": {"helpfulness": 5}}
    first = api("post", url, annotator, data=payload, content_type="application/json")
    again = api("post", url, annotator, data=payload, content_type="application/json")
    assert first.status_code == again.status_code == 200
    assert first.json()["id"] == again.json()["id"]
    assert first.json()["data"]["choice"] == "b"
    assert PairwiseJudgement.objects.count() == 1
    assert api("post", f"/projects/{project.pk}/next", annotator).status_code == 204


def test_api_errors_have_a_stable_shape(api, annotator, other_annotator, project, pairwise_item):
    assignment = api("post", f"/projects/{project.pk}/next", annotator).json()
    url = f"/assignments/{assignment['id']}/pairwise"
    bad_choice = api("post", url, annotator, data={"choice": "up"}, content_type="application/json")
    assert_error(bad_choice, 422, "invalid_request")
    no_strength = api("post", url, annotator, data={"choice": "a"}, content_type="application/json")
    assert_error(no_strength, 422, "invalid")
    assert "strength" in no_strength.json()["error"]["details"]
    theirs = api(
        "post", url, other_annotator, data={"choice": "tie"}, content_type="application/json"
    )
    assert_error(theirs, 404, "not_found")
    project.is_active = False
    project.save()
    closed = api("post", url, annotator, data={"choice": "tie"}, content_type="application/json")
    assert_error(closed, 409, "closed")
    assert not PairwiseJudgement.objects.exists()


def test_annotators_read_only_their_own_judgements(api, annotator, other_annotator, admin_user):
    project = ProjectFactory(overlap=2)
    make_item(project)
    for user in (annotator, other_annotator):
        a = services.task_next_for_annotator(project=project, annotator=user)
        services.pairwise_submit(assignment_id=a.pk, annotator=user, choice="tie")
    mine = api("get", f"/projects/{project.pk}/judgements", annotator).json()
    assert mine["count"] == 1 and mine["items"][0]["annotator"] == annotator.username
    assert api("get", f"/projects/{project.pk}/judgements", admin_user).json()["count"] == 2
    assert_error(api("get", f"/projects/{project.pk}/items", annotator), 403)
    items = api("get", f"/projects/{project.pk}/items?limit=1", admin_user).json()
    assert items["count"] == 1 and len(items["items"][0]["completions"]) == 2


# --- imports and snapshots through a real worker ---------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_import_then_snapshot_then_download_over_the_api(api, admin_user, settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path
    project = ProjectFactory(task_kinds=[TaskKind.PAIRWISE])
    rows = b"".join(
        json.dumps({"prompt": f"Q{n}", "chosen": "yes", "rejected": "no"}).encode() + b"\n"
        for n in range(8)
    )
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[CeleryQueue.DEFAULT]):
        created = api(
            "post", f"/projects/{project.pk}/imports", admin_user,
            data={"file": SimpleUploadedFile("prefs.jsonl", rows), "shape": "preference"},
        )  # fmt: skip
        assert created.status_code == 202, created.content
        status = _poll(
            api, f"/imports/{created.json()['id']}", admin_user, "status", "queued", "running"
        )
        assert status["status"] == "succeeded" and status["report"]["created"]["items"] == 8

        snapshot = api(
            "post", f"/projects/{project.pk}/snapshots", admin_user,
            data={"kind": "preference", "policy": {"include_imported": True, "test_fraction": 0}},
            content_type="application/json",
        )  # fmt: skip
        assert snapshot.status_code == 202
        ready = _poll(
            api, f"/snapshots/{snapshot.json()['id']}", admin_user, "status", "queued", "running"
        )
    assert ready["status"] == "succeeded" and ready["row_counts"] == {"train": 8, "test": 0}
    assert "train.jsonl" in ready["files"]
    download = api("get", f"/snapshots/{ready['id']}/files/train.jsonl", admin_user)
    assert len(b"".join(download.streaming_content).splitlines()) == 8
    bad_policy = api(
        "post", f"/projects/{project.pk}/snapshots", admin_user,
        data={"kind": "preference", "policy": {"agregation": "all"}},
        content_type="application/json",
    )  # fmt: skip
    assert_error(bad_policy, 422, "invalid")


def test_snapshot_thresholds_are_validated_and_the_filters_reported(api, admin_user, settings,
                                                                    tmp_path, project):  # fmt: skip
    from feedback.models import Assignment, DatasetSnapshot
    from feedback.services import review
    from tests.factories import annotator

    settings.MEDIA_ROOT = tmp_path
    gold, ordinary = make_item(project), make_item(project)
    review.item_mark_gold(item_id=gold.pk, admin=admin_user, answer={"choice": "a"})
    sloppy = annotator("sloppy")
    for item, choice in ((gold, "b"), (ordinary, "a")):
        a = Assignment.objects.create(item=item, annotator=sloppy, expires_at="2100-01-01T00:00Z")
        services.pairwise_submit(
            assignment_id=a.pk, annotator=sloppy, choice=choice, strength="clear"
        )

    def create(policy):
        body = {"kind": "preference", "policy": policy}
        return api("post", f"/projects/{project.pk}/snapshots", admin_user,
                   data=body, content_type="application/json")  # fmt: skip

    refused = create({"min_gold_accuracy": 1.2, "min_item_agreement": -1})
    assert_error(refused, 422, "invalid")
    assert sorted(refused.json()["error"]["details"]["policy"]) == [
        "min_gold_accuracy must be a number from 0 to 1 (or null for no filter).",
        "min_item_agreement must be a number from 0 to 1 (or null for no filter).",
    ]
    assert not DatasetSnapshot.objects.exists()

    created = create({"min_gold_accuracy": 0.5, "test_fraction": 0})
    assert created.status_code == 202
    assert created.json()["policy"]["min_gold_accuracy"] == 0.5
    services.snapshot_build(snapshot=DatasetSnapshot.objects.get(pk=created.json()["id"]))
    body = api("get", f"/snapshots/{created.json()['id']}", admin_user).json()
    assert body["stats"]["excluded_annotators"] == [
        {"username": "sloppy", "reasons": ["gold accuracy 0 below 0.5"]}
    ]
    assert body["stats"]["dropped"]["gold_judgements"] == 1
    assert body["row_counts"] == {"train": 0, "test": 0}


def test_a_dawid_skene_snapshot_over_the_api(api, admin_user, settings, tmp_path, project):
    from feedback.models import DatasetSnapshot
    from tests.factories import outvoted_crowd

    settings.MEDIA_ROOT = tmp_path
    outvoted = outvoted_crowd(project)

    def create(policy):
        body = {"kind": "preference", "policy": {"test_fraction": 0, **policy}}
        return api("post", f"/projects/{project.pk}/snapshots", admin_user,
                   data=body, content_type="application/json")  # fmt: skip

    refused = create({"aggregation": "posterior", "min_posterior": 0.9})
    assert_error(refused, 422, "invalid")
    assert sorted(refused.json()["error"]["details"]["policy"]) == [
        "aggregation is majority, all or dawid_skene.",
        "min_posterior applies to aggregation dawid_skene only.",
    ]
    assert not DatasetSnapshot.objects.exists()

    created = create({"aggregation": "dawid_skene", "min_posterior": 0.9})
    assert created.status_code == 202
    snapshot = services.snapshot_build(
        snapshot=DatasetSnapshot.objects.get(pk=created.json()["id"])
    )
    row = next(
        json.loads(line)
        for line in (snapshot.path() / "train.jsonl").read_text().splitlines()
        if json.loads(line)["item_id"] == outvoted.pk
    )
    assert row["chosen"][0]["content"] == "right" and row["posterior"] > 0.99
    body = api("get", f"/snapshots/{snapshot.pk}", admin_user).json()
    assert body["policy"]["aggregation"] == "dawid_skene"
    assert body["stats"]["dropped"]["pairs_below_min_posterior"] == 0


def _poll(api, path, user, field, *pending, timeout=30):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        body = api("get", path, user).json()
        if body[field] not in pending:
            return body
        time.sleep(0.2)
    raise AssertionError(f"{path} still {body[field]}")


# --- fuzzing ---------------------------------------------------------------------------------


schema = schemathesis.openapi.from_wsgi("/api/openapi.json", application)


@pytest.fixture
def fuzz_headers(admin_user, project, pairwise_item):
    # Calling the WSGI app directly fires request_finished, which would close the test's
    # connection mid-transaction; Django's own test client disconnects this handler too.
    request_started.disconnect(close_old_connections)
    request_finished.disconnect(close_old_connections)
    yield bearer(admin_user)
    request_started.connect(close_old_connections)
    request_finished.connect(close_old_connections)


# Every answer is documented: no server error, a status code and content type the schema
# lists, and a body that matches its schema. Bounded for `make test`: a few examples per
# operation, the same ones on every run (derandomize), about a minute on two cores.
CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_schema_conformance,
]


@schema.parametrize()
@settings(
    max_examples=10,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
    derandomize=True,
)
def test_no_input_makes_the_api_fail_or_stray_from_its_schema(case, fuzz_headers):
    case.call_and_validate(headers=fuzz_headers, checks=CHECKS)
