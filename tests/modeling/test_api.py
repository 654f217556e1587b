"""The training API: admin only, launches validated and queued exactly as the UI form does (on
commit, to the real `gpu` queue on the test Redis), cancel and re-run, the checkpoint registry
with lineage, and a launch that a real Celery worker trains end to end.

Launch tests commit (transaction=True): the message is sent by an on-commit hook, and the worker
reads the rows from its own connection."""

from __future__ import annotations

import time

import pytest

from core.tokens import token_create
from jobs.services import work_sweep
from modeling.models import Checkpoint, JobStatus, TrainingJob
from tests.modeling.helpers import queued_tasks, wait_until_finished

FEW_STEPS = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}
TRAIN_JOB = "modeling.tasks.train_job"


@pytest.fixture
def api(client):
    def call(method: str, path: str, user=None, json: dict | None = None):
        headers = {}
        if user is not None:
            _, key = token_create(user=user, name=f"test-{user.pk}-{time.monotonic_ns()}")
            headers["Authorization"] = f"Bearer {key}"
        kwargs = {"data": json, "content_type": "application/json"} if json is not None else {}
        return getattr(client, method)(f"/api{path}", headers=headers, **kwargs)

    return call


def assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.content
    error = response.json()["error"]
    assert {"code", "message", "details"} <= set(error)
    if code:
        assert error["code"] == code
    return error


def launch_body(parent, snapshot, kind="sft", **extra) -> dict:
    return {
        "kind": kind,
        "parent_id": parent.pk,
        "snapshot_id": snapshot.pk,
        "config": FEW_STEPS,
        **extra,
    }


def _queued_job(admin_user, base_checkpoint, snapshot) -> TrainingJob:
    return TrainingJob.objects.create(
        kind="sft",
        parent=base_checkpoint,
        snapshot=snapshot,
        config=FEW_STEPS,
        time_limit_seconds=600,
        launched_by=admin_user,
    )


# --- roles -------------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize("who", ["annotator", "reviewer", "nobody"])
def test_only_admins_may_use_the_training_api(
    api, request, who, admin_user, base_checkpoint, make_snapshot, empty_gpu_queue
):
    user = request.getfixturevalue(who)
    snapshot = make_snapshot("sft")
    job = _queued_job(admin_user, base_checkpoint, snapshot)
    reads = ["/jobs", f"/jobs/{job.pk}", "/checkpoints", f"/checkpoints/{base_checkpoint.pk}"]
    for path in reads:
        assert_error(api("get", path, user), 403, "forbidden")
        assert_error(api("get", path), 401, "unauthenticated")
    for path in (f"/jobs/{job.pk}/cancel", f"/jobs/{job.pk}/rerun"):
        assert_error(api("post", path, user), 403, "forbidden")

    refused = api("post", "/jobs", user, json=launch_body(base_checkpoint, snapshot))

    assert_error(refused, 403, "forbidden")
    assert list(TrainingJob.objects.values_list("pk", "status")) == [(job.pk, JobStatus.QUEUED)]
    assert queued_tasks() == []


# --- launching ---------------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_launch_is_queued_on_the_gpu_queue_when_it_commits(
    api, admin_user, base_checkpoint, make_snapshot, empty_gpu_queue
):
    response = api(
        "post", "/jobs", admin_user, json=launch_body(base_checkpoint, make_snapshot("sft"))
    )

    assert response.status_code == 202, response.content
    body = response.json()
    assert body["status"] == "queued" and body["kind"] == "sft"
    assert body["config"]["max_steps"] == 2
    assert body["config"]["assistant_only_loss"] is True  # the kind's defaults filled in
    assert body["launched_by"] == admin_user.username
    assert queued_tasks() == [TRAIN_JOB]


@pytest.mark.django_db(transaction=True)
@pytest.mark.parametrize(
    "case, field",
    [
        ("unknown setting", "config"),
        ("setting out of range", "config"),
        ("missing snapshot", "snapshot_id"),
        ("snapshot of the wrong kind", "snapshot"),
        ("missing parent", "parent_id"),
        ("reward model for sft", "reward_model"),
    ],
)
def test_a_refused_launch_says_why_writes_nothing_and_queues_nothing(
    api, admin_user, base_checkpoint, make_snapshot, empty_gpu_queue, case, field
):
    sft, prefs = make_snapshot("sft"), make_snapshot("preference")
    body = {
        "unknown setting": launch_body(base_checkpoint, sft, config={"learning_rat": 0.1}),
        "setting out of range": launch_body(base_checkpoint, sft, config={"batch_size": 0}),
        "missing snapshot": launch_body(base_checkpoint, sft, snapshot_id=sft.pk + 1000),
        "snapshot of the wrong kind": launch_body(base_checkpoint, sft, kind="dpo"),
        "missing parent": launch_body(base_checkpoint, prefs, kind="dpo", parent_id=9999),
        "reward model for sft": launch_body(
            base_checkpoint, sft, reward_model_id=base_checkpoint.pk
        ),
    }[case]

    error = assert_error(api("post", "/jobs", admin_user, json=body), 422, "invalid")

    assert field in error["details"], error
    assert TrainingJob.objects.count() == 0
    assert queued_tasks() == []


def test_unknown_settings_are_named_with_the_allowed_ones(
    api, admin_user, base_checkpoint, make_snapshot
):
    body = launch_body(base_checkpoint, make_snapshot("sft"), config={"learning_rat": 0.1})

    error = assert_error(api("post", "/jobs", admin_user, json=body), 422)

    (message,) = error["details"]["config"]
    assert message.startswith("learning_rat: unknown setting for sft (allowed: ")
    assert "learning_rate" in message


def test_an_unknown_kind_is_a_schema_error(api, admin_user, base_checkpoint, make_snapshot):
    body = launch_body(base_checkpoint, make_snapshot("sft"), kind="sparkles")

    assert_error(api("post", "/jobs", admin_user, json=body), 422, "invalid_request")
    assert TrainingJob.objects.count() == 0


# --- cancel and re-run -------------------------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_cancel_then_rerun_queues_one_new_attempt(
    api, admin_user, base_checkpoint, make_snapshot, empty_gpu_queue
):
    launched = api(
        "post", "/jobs", admin_user, json=launch_body(base_checkpoint, make_snapshot("sft"))
    )
    job_id = launched.json()["id"]
    assert_error(api("post", f"/jobs/{job_id}/rerun", admin_user), 409, "conflict")

    cancelled = api("post", f"/jobs/{job_id}/cancel", admin_user)
    assert cancelled.status_code == 200, cancelled.content
    assert cancelled.json()["status"] == "cancelled"
    assert cancelled.json()["cancel_requested"] is True
    assert_error(api("post", f"/jobs/{job_id}/cancel", admin_user), 409, "conflict")

    first = api("post", f"/jobs/{job_id}/rerun", admin_user)
    again = api("post", f"/jobs/{job_id}/rerun", admin_user)  # a double click

    assert first.status_code == again.status_code == 202, first.content
    rerun = first.json()
    assert again.json()["id"] == rerun["id"] != job_id
    assert rerun["attempt"] == 2 and rerun["previous_attempt_id"] == job_id
    assert rerun["status"] == "queued"
    # The cancelled launch's message is still on the queue (its claim will find nothing); the
    # re-run added exactly one more.
    assert queued_tasks() == [TRAIN_JOB, TRAIN_JOB]


def test_a_running_job_is_asked_to_stop(api, admin_user, base_checkpoint, make_snapshot):
    job = _queued_job(admin_user, base_checkpoint, make_snapshot("sft"))
    TrainingJob.objects.filter(pk=job.pk).update(status=JobStatus.RUNNING)

    body = api("post", f"/jobs/{job.pk}/cancel", admin_user).json()

    assert body["status"] == "running" and body["cancel_requested"] is True


def test_unknown_ids_are_404(api, admin_user):
    for method, path in [
        ("get", "/jobs/999"),
        ("post", "/jobs/999/cancel"),
        ("post", "/jobs/999/rerun"),
        ("get", "/checkpoints/999"),
    ]:
        assert_error(api(method, path, admin_user), 404, "not_found")


# --- reading -----------------------------------------------------------------------------------


def test_job_list_filters_by_status_and_kind_and_pages(
    api, admin_user, base_checkpoint, make_snapshot
):
    snapshot = make_snapshot("sft")
    jobs = [_queued_job(admin_user, base_checkpoint, snapshot) for _ in range(3)]
    TrainingJob.objects.filter(pk=jobs[0].pk).update(status=JobStatus.FAILED, error="boom")

    failed = api("get", "/jobs?status=failed", admin_user).json()
    page = api("get", "/jobs?limit=2&offset=0", admin_user).json()

    assert [j["id"] for j in failed["items"]] == [jobs[0].pk]
    assert failed["items"][0]["error"] == "boom"
    assert page["count"] == 3 and len(page["items"]) == 2
    assert api("get", "/jobs?kind=dpo", admin_user).json()["count"] == 0
    assert_error(api("get", "/jobs?status=sleeping", admin_user), 422, "invalid_request")


def test_a_job_whose_worker_went_silent_reads_failed_after_the_sweep(
    api, admin_user, base_checkpoint, make_snapshot, settings
):
    job = _queued_job(admin_user, base_checkpoint, make_snapshot("sft"))
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, heartbeat_at=job.created_at.replace(year=2000)
    )
    assert api("get", f"/jobs/{job.pk}", admin_user).json()["status"] == "running"

    work_sweep()  # Celery beat's schedule, not the read, decides
    body = api("get", f"/jobs/{job.pk}", admin_user).json()

    assert body["status"] == "failed"
    assert body["error"].startswith("worker stopped responding")


# --- end to end through a real worker ----------------------------------------------------------


@pytest.mark.django_db(transaction=True)
def test_a_job_launched_over_the_api_trains_on_a_real_worker_with_its_lineage(
    api, gpu_worker, admin_user, base_checkpoint, make_snapshot
):
    snapshot = make_snapshot("sft")
    launched = api("post", "/jobs", admin_user, json=launch_body(base_checkpoint, snapshot))
    job_id = launched.json()["id"]

    wait_until_finished(TrainingJob.objects.get(pk=job_id))
    job = api("get", f"/jobs/{job_id}", admin_user).json()

    assert job["status"] == "succeeded", job["error"]
    assert job["worker_host"] == gpu_worker.hostname
    assert job["step"] == job["total_steps"] == 2
    assert "loss" in job["metrics"] and job["metric_history"]
    assert "Registered checkpoint" in job["log_tail"]
    produced = job["checkpoint"]
    assert produced["parent_id"] == base_checkpoint.pk and produced["job_id"] == job_id
    assert Checkpoint.objects.get(pk=produced["id"]).job_id == job_id

    detail = api("get", f"/checkpoints/{produced['id']}", admin_user).json()
    assert detail["snapshot_id"] == snapshot.pk
    assert detail["parameter_count"] > 0
    assert detail["lineage"] == [
        {
            "checkpoint_id": base_checkpoint.pk,
            "name": "tiny",
            "kind": "policy",
            "job_id": None,
            "job_kind": None,
            "snapshot_id": None,
            "snapshot_name": None,
        },
        {
            "checkpoint_id": produced["id"],
            "name": produced["name"],
            "kind": "policy",
            "job_id": job_id,
            "job_kind": "sft",
            "snapshot_id": snapshot.pk,
            "snapshot_name": snapshot.name,
        },
    ]
    listed = api("get", "/checkpoints?kind=policy", admin_user).json()
    assert {c["id"] for c in listed["items"]} == {base_checkpoint.pk, produced["id"]}
    assert api("get", "/checkpoints?kind=reward", admin_user).json()["count"] == 0
