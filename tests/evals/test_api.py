"""The evaluation API: runs and results per checkpoint, starting runs (admins only, refused ones
write and queue nothing), one run with its samples, the arena leaderboard as JSON, and the same
role rules as the dashboard for every endpoint."""

import json

import pytest

from evals import selectors
from evals.models import EvalResult, EvalRun, EvalSample, RunStatus, Suite
from feedback.models import DatasetSnapshot, SnapshotKind
from jobs.models import Status
from modeling.models import Checkpoint, CheckpointKind
from tests.evals.test_arena import TRUTH, cast, synthetic_votes
from tests.factories import ProjectFactory
from tests.feedback.test_api import assert_error, bearer

pytestmark = pytest.mark.django_db


@pytest.fixture
def api(client):
    def call(method, path, user=None, **kwargs):
        headers = bearer(user) if user else {}
        if "json" in kwargs:
            kwargs["data"] = kwargs.pop("json")
            kwargs["content_type"] = "application/json"
        return getattr(client, method)(f"/api{path}", headers=headers, **kwargs)

    return call


@pytest.fixture
def policy(db):
    return Checkpoint.objects.create(name="tiny", kind=CheckpointKind.POLICY, storage_path="/m/t")


@pytest.fixture
def other(db):
    return Checkpoint.objects.create(name="tiny-sft", kind=CheckpointKind.POLICY, storage_path="/m")


@pytest.fixture
def reward(db):
    return Checkpoint.objects.create(name="tiny-rm", kind=CheckpointKind.REWARD, storage_path="/m")


def finished_run(
    checkpoint, suite=Suite.MULTIPLE_CHOICE, task="facts_mc", status="succeeded", **values
):
    run = EvalRun.objects.create(checkpoint=checkpoint, suite=suite, task=task, status=status)
    for metric, value in values.items():
        EvalResult.objects.create(
            run=run, metric=metric, value=value, stderr=0.1, ci_low=value - 0.2,
            ci_high=value + 0.2, n=20,
        )  # fmt: skip
    return run


# --- reading runs and results --------------------------------------------------------------------


def test_runs_of_one_checkpoint_come_with_their_results_newest_first(api, reviewer, policy, other):
    older = finished_run(policy, acc=0.25)
    newer = finished_run(policy, Suite.PERPLEXITY, "heldout_prose", word_perplexity=12.5)
    finished_run(other, acc=0.5)
    response = api("get", f"/evals/runs?checkpoint_id={policy.pk}", reviewer)
    assert response.status_code == 200
    body = response.json()
    assert body["count"] == 2
    assert [run["id"] for run in body["items"]] == [newer.pk, older.pk]
    first = body["items"][0]
    assert (first["checkpoint"], first["suite"], first["status"]) == (
        "tiny",
        "perplexity",
        "succeeded",
    )
    assert first["results"] == [
        {"metric": "word_perplexity", "value": 12.5, "stderr": 0.1, "ci_low": 12.3,
         "ci_high": 12.7, "n": 20}
    ]  # fmt: skip


def test_runs_filter_by_suite_and_status(api, reviewer, policy):
    finished_run(policy, acc=0.25)
    failed = finished_run(policy, status=RunStatus.FAILED)
    finished_run(policy, Suite.PERPLEXITY, "heldout_prose", word_perplexity=3.0)
    body = api("get", "/evals/runs?suite=multiple_choice&status=failed", reviewer).json()
    assert [run["id"] for run in body["items"]] == [failed.pk]
    assert_error(api("get", "/evals/runs?suite=astrology", reviewer), 422, "invalid_request")


def test_a_run_comes_with_its_results_samples_and_definition(api, reviewer, policy):
    run = finished_run(policy, Suite.GENERATIVE, "toy_qa_gen", exact_match=0.5)
    EvalSample.objects.create(
        run=run, position=0, prompt="<b>2 + 2?</b>", output="4", target="4", correct=True
    )
    body = api("get", f"/evals/runs/{run.pk}", reviewer).json()
    assert body["results"][0]["metric"] == "exact_match"
    assert body["samples"] == [
        {"position": 0, "prompt": "<b>2 + 2?</b>", "output": "4", "target": "4",
         "correct": True, "reference_output": ""}
    ]  # fmt: skip
    assert "exact_match" in body["definition"]
    assert_error(api("get", "/evals/runs/999999", reviewer), 404, "not_found")


def test_checkpoint_results_are_the_latest_succeeded_value_of_each_metric(api, reviewer, policy):
    finished_run(policy, acc=0.25, acc_norm=0.3)
    latest = finished_run(policy, acc=0.75)
    finished_run(policy, status=RunStatus.FAILED, acc=0.0)  # failures never count
    finished_run(policy, Suite.PERPLEXITY, "heldout_prose", word_perplexity=9.0)
    body = api("get", f"/evals/checkpoints/{policy.pk}/results", reviewer).json()
    assert (body["checkpoint_id"], body["checkpoint"], body["kind"]) == (
        policy.pk,
        "tiny",
        "policy",
    )
    values = {(r["suite"], r["task"], r["metric"]): r for r in body["results"]}
    assert values["multiple_choice", "facts_mc", "acc"]["value"] == 0.75
    assert values["multiple_choice", "facts_mc", "acc"]["run_id"] == latest.pk
    assert values["multiple_choice", "facts_mc", "acc_norm"]["value"] == 0.3
    assert values["perplexity", "heldout_prose", "word_perplexity"]["lower_is_better"] is True
    assert_error(api("get", "/evals/checkpoints/999999/results", reviewer), 404, "not_found")


def test_suites_list_their_tasks_params_and_definitions(api, reviewer):
    suites = {s["suite"]: s for s in api("get", "/evals/suites", reviewer).json()}
    assert set(suites) == set(Suite.values)
    assert "facts_mc" in suites["multiple_choice"]["tasks"]
    assert "veredicto_facts_mc" in suites["lm_eval"]["tasks"]
    assert "include_path" in suites["lm_eval"]["params"]
    assert "lm-evaluation-harness" in suites["perplexity"]["definition"]


# --- starting runs -------------------------------------------------------------------------------


def test_an_admin_starts_a_run_that_is_queued_when_the_request_commits(
    api, admin_user, policy, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as callbacks:
        response = api(
            "post", "/evals/runs", admin_user,
            json={"checkpoint_id": policy.pk, "suite": "multiple_choice", "task": "facts_mc",
                  "params": {"limit": 5}},
        )  # fmt: skip
    assert response.status_code == 202, response.content
    run = EvalRun.objects.get()
    assert response.json()["id"] == run.pk and response.json()["status"] == "queued"
    assert (run.checkpoint, run.suite, run.task, run.params) == (
        policy,
        "multiple_choice",
        "facts_mc",
        {"limit": 5},
    )
    assert run.created_by == admin_user
    assert len(callbacks) == 1  # the Celery message


def test_an_lm_eval_task_can_be_started_from_the_api(api, admin_user, policy):
    response = api(
        "post", "/evals/runs", admin_user,
        json={"checkpoint_id": policy.pk, "suite": "lm_eval", "task": "veredicto_facts_mc"},
    )  # fmt: skip
    assert response.status_code == 202, response.content
    assert EvalRun.objects.get().task == "veredicto_facts_mc"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"suite": "astrology"}, None),  # not a suite: the schema refuses it
        ({"checkpoint_id": 999999}, "checkpoint_id"),
        ({"suite": "reward_accuracy"}, "checkpoint"),  # a policy is not a reward model
        ({"task": "no_such_task"}, "task"),
        ({"params": {"temperature": 2}}, "params"),
        ({"params": {"limit": 0}}, "limit"),
        ({"params": {"task_path": "relative/file.jsonl"}}, "task_path"),
        ({"params": {"task_path": "/tmp/a\x00b.jsonl"}}, "task_path"),
        ({"task": "", "params": {"task_path": "/" + "x" * 300 + ".jsonl"}}, "task"),
        ({"params": {"task_path": "/" + "x" * 1001}}, "task_path"),
        ({"reference_id": 999999}, "reference_id"),
        ({"snapshot_id": 999999}, "snapshot_id"),
        ({"judge_id": None, "suite": "win_rate", "task": "toy_qa_gen"}, "reference"),
    ],
)
def test_a_run_that_cannot_run_is_refused_and_nothing_is_queued(
    api, admin_user, policy, body, field, django_capture_on_commit_callbacks
):
    request = {"checkpoint_id": policy.pk, "suite": "multiple_choice", "task": "facts_mc", **body}
    with django_capture_on_commit_callbacks() as callbacks:
        response = api("post", "/evals/runs", admin_user, json=request)
    assert_error(response, 422)
    if field is not None:
        assert field in response.json()["error"]["details"], response.json()
    assert not EvalRun.objects.exists()
    assert callbacks == []


def test_a_snapshot_that_is_not_ready_is_refused(api, admin_user, reward):
    snapshot = DatasetSnapshot.objects.create(
        project=ProjectFactory(), name="prefs", kind=SnapshotKind.PREFERENCE,
        status=Status.QUEUED,
    )  # fmt: skip
    response = api(
        "post", "/evals/runs", admin_user,
        json={"checkpoint_id": reward.pk, "suite": "reward_accuracy", "snapshot_id": snapshot.pk},
    )  # fmt: skip
    assert_error(response, 422)
    assert "not ready" in response.json()["error"]["details"]["snapshot"][0]


def test_rerun_makes_a_new_run_and_keeps_the_old_one(api, admin_user, policy):
    old = finished_run(policy, acc=0.5)
    response = api("post", f"/evals/runs/{old.pk}/rerun", admin_user)
    assert response.status_code == 202, response.content
    new = EvalRun.objects.get(pk=response.json()["id"])
    assert new.pk != old.pk and new.status == RunStatus.QUEUED
    assert (new.checkpoint, new.suite, new.task) == (old.checkpoint, old.suite, old.task)
    assert EvalResult.objects.filter(run=old).count() == 1
    assert_error(api("post", "/evals/runs/999999/rerun", admin_user), 404, "not_found")


# --- the arena ---------------------------------------------------------------------------------


def test_leaderboard_json_has_ratings_intervals_ranks_and_vote_counts(api, reviewer):
    project = ProjectFactory(name="Arena")
    for name in TRUTH:
        Checkpoint.objects.create(name=name, kind=CheckpointKind.POLICY, storage_path="/m")
    cast(project, synthetic_votes(TRUTH, 600, seed=3))
    body = api("get", f"/projects/{project.pk}/leaderboard?reference=base", reviewer).json()
    assert body["battles"] == 600 and body["rounds"] == selectors.ARENA_ROUNDS
    assert body["reference"] == "base"
    rows = {row["model"]: row for row in body["rows"]}
    assert [row["model"] for row in body["rows"]] == ["dpo", "sft", "base", "broken"]
    assert rows["base"]["rating"] == pytest.approx(1000.0) and rows["base"]["is_reference"]
    expected = selectors.arena_leaderboard(project=project, reference="base").rows
    for row in expected:
        mine = rows[row["model"]]
        for key in ("rating", "low", "high", "rank", "votes", "wins", "losses", "ties", "elo"):
            assert mine[key] == pytest.approx(row[key]), key
        assert mine["low"] <= mine["rating"] <= mine["high"]
        assert mine["checkpoint_id"] == Checkpoint.objects.get(name=row["model"]).pk
    assert sum(row["votes"] for row in body["rows"]) == 2 * 600
    assert rows["broken"]["rank"] > rows["dpo"]["rank"]


def test_a_model_that_never_lost_still_gives_strict_json(api, reviewer):
    """Its maximum-likelihood rating is unbounded: whatever the optimiser stops at, the body must
    be JSON without Infinity or NaN (which Python's json would write and accept)."""
    project = ProjectFactory(name="Arena")
    cast(project, [("a", "b", "a")] * 3)
    response = api("get", f"/projects/{project.pk}/leaderboard", reviewer)
    assert response.status_code == 200

    def refuse(constant):
        raise AssertionError(f"{constant} in the JSON body")

    body = json.loads(response.content, parse_constant=refuse)
    rows = {row["model"]: row for row in body["rows"]}
    assert (rows["a"]["votes"], rows["a"]["wins"], rows["b"]["losses"]) == (3, 3, 3)


def test_leaderboard_of_an_unknown_project_is_404(api, reviewer):
    assert_error(api("get", "/projects/999999/leaderboard", reviewer), 404, "not_found")


# --- roles ---------------------------------------------------------------------------------------

READS = [
    "/evals/suites",
    "/evals/runs",
    "/evals/runs/{run}",
    "/evals/checkpoints/{checkpoint}/results",
    "/projects/{project}/leaderboard",
]
WRITES = ["/evals/runs", "/evals/runs/{run}/rerun"]


@pytest.fixture
def targets(policy):
    run = finished_run(policy, acc=0.5)
    return {"run": run.pk, "checkpoint": policy.pk, "project": ProjectFactory().pk}


def _start_body(policy) -> dict:
    return {"checkpoint_id": policy.pk, "suite": "multiple_choice", "task": "facts_mc"}


@pytest.mark.parametrize("path", READS)
def test_annotators_and_users_without_a_role_may_not_read(api, annotator, nobody, targets, path):
    for user in (annotator, nobody):
        assert_error(api("get", path.format(**targets), user), 403, "forbidden")
    assert_error(api("get", path.format(**targets)), 401, "unauthenticated")


@pytest.mark.parametrize("path", READS)
def test_reviewers_and_admins_read(api, reviewer, admin_user, targets, path):
    for user in (reviewer, admin_user):
        assert api("get", path.format(**targets), user).status_code == 200


@pytest.mark.parametrize("path", WRITES)
def test_only_admins_start_runs(api, reviewer, annotator, nobody, policy, targets, path):
    for user in (reviewer, annotator, nobody):
        response = api("post", path.format(**targets), user, json=_start_body(policy))
        assert_error(response, 403, "forbidden")
    assert_error(api("post", path.format(**targets), json=_start_body(policy)), 401)
    assert EvalRun.objects.count() == 1  # only the fixture's


def test_a_forbidden_request_is_403_even_when_its_body_is_also_wrong(api, reviewer):
    response = api(
        "post", "/evals/runs", reviewer, json={"checkpoint_id": 999999, "suite": "perplexity"}
    )
    assert_error(response, 403, "forbidden")
    assert not EvalRun.objects.exists()
