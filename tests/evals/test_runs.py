"""Evaluation runs: what a new checkpoint is scheduled for, each suite on the real tiny model,
bad inputs failing the run with their reason, claims, history, dead workers, and one run through
a real Celery worker on the test Redis.

The tiny model is loop.testing's: built once per test process by modeling.ml.build_tiny_model
(seeded, no pretraining steps: about 5 s instead of 18 s for a few steps, and every suite needs
exact arithmetic on real weights and a real tokenizer, not a good model).
"""

from __future__ import annotations

import json
import math
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.files.uploadedfile import SimpleUploadedFile
from django.utils import timezone

from config.celery import CeleryQueue, app
from evals import selectors, services
from evals.ml import load_text_set, strided_perplexity
from evals.ml.tasks import load_gen_task, shipped_tasks
from evals.models import EvalResult, EvalRun, EvalSample, RunStatus, Suite
from feedback.models import DatasetSnapshot, SnapshotKind
from jobs.models import Status
from jobs.services import work_fail_orphaned, work_sweep
from loop.testing import tiny_lm, tiny_model_dir
from modeling.models import Checkpoint, CheckpointKind, TrainingJob
from tests.factories import ProjectFactory
from tests.modeling.helpers import purge_gpu_queue, wait_for

SMALL = {"limit": 4, "batch_size": 4}
PREFERENCE_ROWS = [
    {
        "prompt": [{"role": "user", "content": f"What is {a} + {a}?"}],
        "chosen": [{"role": "assistant", "content": str(2 * a)}],
        "rejected": [{"role": "assistant", "content": str(2 * a + 1)}],
    }
    for a in (2, 3, 4)
]


@pytest.fixture(autouse=True)
def fast_heartbeat(settings, tmp_path):
    settings.MEDIA_ROOT = tmp_path / "media"
    settings.VEREDICTO_JOB_HEARTBEAT_SECONDS = 0.25
    settings.VEREDICTO_JOB_STALE_SECONDS = 3.0


def make_checkpoint(name: str, kind: str = CheckpointKind.POLICY, **fields) -> Checkpoint:
    fields.setdefault("storage_path", str(tiny_model_dir()))
    return Checkpoint.objects.create(name=name, kind=kind, **fields)


@pytest.fixture
def policy(db):
    return make_checkpoint("tiny")


@pytest.fixture
def reward(db):
    return make_checkpoint("tiny-rm", CheckpointKind.REWARD)


@pytest.fixture
def preference_snapshot(db, settings):
    project = ProjectFactory()
    snapshot = DatasetSnapshot.objects.create(
        project=project,
        name="prefs round 1",
        kind=SnapshotKind.PREFERENCE,
        status=Status.SUCCEEDED,
        directory="snapshots/prefs",
        row_counts={"train": 0, "test": len(PREFERENCE_ROWS)},
    )
    snapshot.path().mkdir(parents=True)
    (snapshot.path() / "test.jsonl").write_text(
        "".join(json.dumps(row) + "\n" for row in PREFERENCE_ROWS)
    )
    return snapshot


@pytest.fixture
def trained(policy, preference_snapshot, admin_user):
    """A checkpoint made by a (succeeded) training job, as the runner registers one."""
    job = TrainingJob.objects.create(
        kind="sft",
        status="succeeded",
        parent=policy,
        snapshot=preference_snapshot,
        config={},
        time_limit_seconds=60,
        launched_by=admin_user,
    )
    return make_checkpoint(
        "tiny-sft-1", parent=policy, base_model=policy, job=job, snapshot=preference_snapshot
    )


def queue(checkpoint: Checkpoint, suite: str, task: str = "", **fields) -> EvalRun:
    """A queued run made through the service's validation, without sending a message."""
    return services.runs._create(checkpoint=checkpoint, suite=suite, task=task, **fields)


def run_now(run: EvalRun) -> EvalRun:
    return services.run_eval(run=run, worker_host="test-worker")


# --- what a new checkpoint gets ----------------------------------------------------------------


def test_a_policy_gets_perplexity_every_shipped_mc_task_and_the_generative_task(
    trained, django_capture_on_commit_callbacks
):
    with django_capture_on_commit_callbacks() as messages:
        runs = services.schedule_default_evals(checkpoint=trained, triggered_by_job=trained.job)
    expected = {(Suite.PERPLEXITY, "heldout_prose"), (Suite.GENERATIVE, "toy_qa_gen")}
    expected |= {(Suite.MULTIPLE_CHOICE, n) for n in ("arithmetic_mc", "facts_mc", "word_order_mc")}
    assert {(run.suite, run.task) for run in runs} == expected
    assert {name for _, name in expected} - {"heldout_prose"} == set(shipped_tasks())
    assert all(run.status == RunStatus.QUEUED for run in runs)
    assert all(run.triggered_by_job == trained.job for run in runs)
    assert all(run.created_by == trained.job.launched_by for run in runs)
    assert len(messages) == len(runs)  # one Celery message per run, sent on commit


@pytest.mark.parametrize("setting", [True, False])
def test_a_registered_model_is_evaluated_like_a_trained_one(
    settings, setting, admin_user, django_capture_on_commit_callbacks
):
    """Every comparison needs its baseline: registering a base model queues its default suites
    once it is committed, attributed to whoever registered it (unless the deployment, or the
    caller, says not to)."""
    from modeling import services as modeling_services

    settings.VEREDICTO_EVALUATE_REGISTERED = setting
    with django_capture_on_commit_callbacks(execute=True):
        base = modeling_services.checkpoint_register(
            name="tiny-base", storage_path=str(tiny_model_dir()), registered_by=admin_user
        )
        assert not EvalRun.objects.exists()  # nothing before the checkpoint is committed
    runs = EvalRun.objects.filter(checkpoint=base)
    if not setting:
        assert not runs.exists()
        return
    assert {(run.suite, run.task) for run in runs} == {
        (spec["suite"], spec["task"]) for spec in services.default_suites(base)
    }
    assert all(run.created_by == admin_user and run.triggered_by_job is None for run in runs)
    assert all(run.status == RunStatus.QUEUED for run in runs)
    with django_capture_on_commit_callbacks(execute=True):
        modeling_services.checkpoint_register(
            name="not-evaluated", storage_path=str(tiny_model_dir()), evaluate=False
        )
    assert EvalRun.objects.count() == runs.count()


def test_scheduling_again_for_the_same_job_queues_nothing_new(trained):
    first = services.schedule_default_evals(checkpoint=trained, triggered_by_job=trained.job)
    again = services.schedule_default_evals(checkpoint=trained, triggered_by_job=trained.job)
    assert [run.pk for run in again] == [run.pk for run in first]
    assert EvalRun.objects.count() == len(first)
    # Without a job (an admin asking for the defaults again) a fresh set is queued.
    assert len(services.schedule_default_evals(checkpoint=trained)) == len(first)
    assert EvalRun.objects.count() == 2 * len(first)


def test_a_reward_model_gets_accuracy_on_shipped_pairs_and_on_its_snapshot_test_split(
    preference_snapshot,
):
    rm = make_checkpoint("rm-1", CheckpointKind.REWARD, snapshot=preference_snapshot)
    runs = services.schedule_default_evals(checkpoint=rm)
    assert {(run.suite, run.task, run.snapshot_id) for run in runs} == {
        (Suite.REWARD_ACCURACY, "heldout_preferences", None),
        (Suite.REWARD_ACCURACY, "snapshot-test", preference_snapshot.pk),
    }


def test_a_value_model_gets_no_default_evaluation(db):
    assert (
        services.schedule_default_evals(checkpoint=make_checkpoint("v", CheckpointKind.VALUE)) == []
    )


# --- each suite on the tiny model --------------------------------------------------------------


def test_perplexity_run_stores_word_and_byte_perplexity(policy):
    run = run_now(queue(policy, Suite.PERPLEXITY, params={"limit": 5}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.worker_host == "test-worker" and run.started_at <= run.finished_at
    values = {r.metric: r for r in run.results.all()}
    assert set(values) == {
        "word_perplexity",
        "byte_perplexity",
        "bits_per_byte",
        "token_perplexity",
    }
    assert values["bits_per_byte"].value == pytest.approx(
        math.log2(values["byte_perplexity"].value)
    )
    assert all(r.n == 5 for r in values.values())
    assert run.summary["tokens"] > 0 and run.summary["n"] == 5
    # token perplexity by the sliding window, half the model's 512 tokens by default
    model, tokenizer = tiny_lm()
    texts = load_text_set()[:5]
    expected = strided_perplexity(model, tokenizer, texts, stride=256)
    assert run.summary["stride"] == 256 and run.summary["strided_tokens"] == expected["tokens"]
    assert values["token_perplexity"].value == pytest.approx(expected["token_perplexity"], rel=1e-6)


def test_perplexity_stride_is_a_parameter_checked_against_the_model(policy):
    run = run_now(queue(policy, Suite.PERPLEXITY, params={"limit": 3, "stride": 64}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.summary["stride"] == 64
    run = run_now(queue(policy, Suite.PERPLEXITY, params={"limit": 3, "stride": 513}))
    assert run.status == RunStatus.FAILED
    assert run.error == "stride 513 is longer than the model's 512 tokens."
    with pytest.raises(ValidationError, match="stride"):
        queue(policy, Suite.PERPLEXITY, params={"stride": 0})


def test_an_uploaded_text_set_is_what_the_run_scores(policy):
    uploaded = SimpleUploadedFile(
        "prose.jsonl", b'{"text": "A dog has 4 legs."}\n{"text": "Grass is green."}\n'
    )
    path = services.eval_task_file_store(uploaded=uploaded, suite=Suite.PERPLEXITY)
    run = run_now(queue(policy, Suite.PERPLEXITY, params={"task_path": str(path)}))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.task == "prose" and run.summary["n"] == 2
    assert run.summary["bytes"] == len("A dog has 4 legs.") + len("Grass is green.")


def test_multiple_choice_run_stores_acc_with_stderr_and_interval(policy):
    run = run_now(queue(policy, Suite.MULTIPLE_CHOICE, "arithmetic_mc", params=SMALL))
    assert run.status == RunStatus.SUCCEEDED, run.error
    acc = run.results.get(metric="acc")
    assert 0 <= acc.value <= 1 and acc.n == 4
    if acc.stderr:  # all-right or all-wrong has zero spread
        assert acc.ci_low < acc.value < acc.ci_high or acc.value in (acc.ci_low, acc.ci_high)
        assert acc.ci_high - acc.ci_low == pytest.approx(
            min(1, acc.value + 1.96 * acc.stderr) - max(0, acc.value - 1.96 * acc.stderr),
            abs=1e-3,
        )
    assert run.results.filter(metric="acc_norm").exists()


def test_generative_run_keeps_what_the_model_said(policy):
    run = run_now(
        queue(policy, Suite.GENERATIVE, "toy_qa_gen", params={"limit": 3, "max_new_tokens": 4})
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    items = load_gen_task(shipped_tasks()["toy_qa_gen"]).items[:3]
    samples = list(run.samples.all())
    assert [s.prompt for s in samples] == [item.prompt for item in items]
    assert [s.target for s in samples] == [item.target for item in items]
    assert all(s.correct in (True, False) for s in samples)
    exact = run.results.get(metric="exact_match")
    assert exact.value == sum(s.correct for s in samples) / 3 and exact.n == 3


def test_a_generative_run_samples_when_given_a_temperature_and_repeats_with_its_seed(policy):
    def outputs(**sampling):
        params = {"limit": 4, "max_new_tokens": 6, **sampling}
        run = run_now(queue(policy, Suite.GENERATIVE, "toy_qa_gen", params=params))
        assert run.status == RunStatus.SUCCEEDED, run.error
        return [s.output for s in run.samples.all()]

    greedy = outputs()
    sampled = outputs(temperature=1.5, seed=7)
    assert sampled == outputs(temperature=1.5, seed=7)
    assert sampled != greedy  # a random-weight model's greedy answer is one of many
    assert outputs(temperature=1.5, top_p=1, seed=7) == sampled


@pytest.mark.parametrize(
    "params",
    [{"temperature": 0}, {"temperature": -1}, {"temperature": "hot"}, {"top_p": 1.5},
     {"seed": -1}, {"temperature": True}],
)  # fmt: skip
def test_sampling_settings_out_of_range_are_refused(policy, params):
    with pytest.raises(ValidationError, match=next(iter(params))):
        queue(policy, Suite.GENERATIVE, "toy_qa_gen", params=params)
    with pytest.raises(ValidationError, match="Unknown for perplexity"):
        queue(policy, Suite.PERPLEXITY, params=params)


def test_reward_accuracy_on_a_preference_snapshot_test_split(reward, preference_snapshot):
    run = run_now(queue(reward, Suite.REWARD_ACCURACY, snapshot=preference_snapshot))
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.task == "snapshot-test"
    accuracy = run.results.get(metric="accuracy")
    assert accuracy.n == len(PREFERENCE_ROWS) and accuracy.value in (0, 1 / 3, 2 / 3, 1)


def test_win_rate_of_a_model_against_an_identical_one_is_one_half(policy, reward):
    twin = make_checkpoint("tiny-twin")
    run = run_now(
        queue(
            policy,
            Suite.WIN_RATE,
            reference=twin,
            judge=reward,
            params={"limit": 3, "max_new_tokens": 4},
        )
    )
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.task == "toy_qa_gen"  # the shipped generative task's prompts
    # Same weights, greedy decoding: identical replies, identical rewards, three ties.
    assert run.summary == {"wins": 0, "ties": 3, "losses": 0, "n": 3, "engine": "hf"}
    win_rate = run.results.get(metric="win_rate")
    assert win_rate.value == 0.5 and win_rate.ci_low < 0.5 < win_rate.ci_high
    samples = list(run.samples.all())
    assert len(samples) == 3 and all(s.output == s.reference_output for s in samples)


def test_lm_eval_results_become_metrics_with_their_stderr():
    results = {
        "results": {
            "hellaswag": {
                "alias": "hellaswag",
                "acc,none": 0.25,
                "acc_stderr,none": 0.05,
                "acc_norm,none": 0.5,
                "acc_norm_stderr,none": "N/A",
            },
            "sub": {"exact_match,strict-match": 1.0, "sample_len": 7},
        },
        "n-samples": {"hellaswag": {"original": 100, "effective": 10}},
    }
    metrics = {m.name: m for m in services.lm_eval_metrics(results, "hellaswag")}
    assert set(metrics) == {"acc", "acc_norm", "sub/exact_match,strict-match"}
    assert metrics["acc"].stderr == 0.05 and metrics["acc"].n == 10
    assert metrics["acc"].low == pytest.approx(0.25 - 1.96 * 0.05, abs=1e-3)
    assert metrics["acc_norm"].stderr is None and metrics["acc_norm"].low is None


# --- bad input fails the run, with the reason ----------------------------------------------------

MC_CONFIG = {"config": {"name": "bad", "kind": "multiple_choice"}}
GOOD_ITEM = {"question": "2 + 2?", "choices": ["4", "5"], "answer": 0}


@pytest.mark.parametrize(
    ("bad_item", "reason"),
    [
        ({"question": "2 + 2?", "choices": ["4", "5"]}, "line 3: missing 'answer'"),
        (
            {"question": "2 + 2?", "choices": [], "answer": 0},
            "line 3: 'choices' must be a non-empty",
        ),
        (
            {"question": "2 + 2?", "choices": ["4", "5"], "answer": 2},
            "line 3: answer index 2 is out",
        ),
        (
            {"question": "2 + 2?", "choices": ["4", ""], "answer": 0},
            "every choice must be a non-empty",
        ),
    ],
    ids=["missing-answer", "empty-choices", "answer-out-of-range", "empty-choice"],
)
def test_a_bad_task_file_fails_the_run_with_the_line_and_reason(policy, tmp_path, bad_item, reason):
    path = tmp_path / "bad.jsonl"
    path.write_text("".join(json.dumps(row) + "\n" for row in (MC_CONFIG, GOOD_ITEM, bad_item)))
    run = run_now(queue(policy, Suite.MULTIPLE_CHOICE, params={"task_path": str(path)}))
    assert run.status == RunStatus.FAILED
    assert run.error.startswith("Bad task file: bad.jsonl ")
    assert reason in run.error
    assert run.finished_at is not None and not run.results.exists()


def test_a_task_file_that_is_not_json_fails_the_run(policy, tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"question": "2 + 2?", "choices": ["4"\n')
    run = run_now(queue(policy, Suite.GENERATIVE, params={"task_path": str(path)}))
    assert run.status == RunStatus.FAILED
    assert "broken.jsonl line 1: invalid JSON" in run.error


def test_a_missing_task_file_fails_the_run(policy, tmp_path):
    missing = tmp_path / "nowhere.jsonl"
    run = run_now(queue(policy, Suite.MULTIPLE_CHOICE, params={"task_path": str(missing)}))
    assert run.status == RunStatus.FAILED
    assert f"Task file {missing} does not exist" in run.error


def test_a_checkpoint_directory_that_does_not_exist_fails_the_run(db, tmp_path):
    gone = tmp_path / "deleted-checkpoint"
    checkpoint = make_checkpoint("gone", storage_path=str(gone))
    run = run_now(queue(checkpoint, Suite.MULTIPLE_CHOICE, "facts_mc"))
    assert run.status == RunStatus.FAILED
    assert f"Checkpoint gone: directory {gone} does not exist" in run.error


def test_an_empty_text_set_fails_the_run(policy, tmp_path):
    path = tmp_path / "empty.jsonl"
    path.write_text("\n")
    run = run_now(queue(policy, Suite.PERPLEXITY, params={"task_path": str(path)}))
    assert run.status == RunStatus.FAILED and run.error == "The text set is empty."


# --- requests are validated before anything is written -----------------------------------------


def test_only_admins_request_runs(policy, reviewer):
    with pytest.raises(PermissionDenied):
        services.eval_run_request(checkpoint=policy, suite=Suite.PERPLEXITY, requested_by=reviewer)
    assert not EvalRun.objects.exists()


@pytest.mark.parametrize(
    ("kwargs", "field"),
    [
        ({"suite": "nonsense"}, "suite"),
        ({"suite": Suite.REWARD_ACCURACY}, "checkpoint"),
        ({"suite": Suite.MULTIPLE_CHOICE, "task": "toy_qa_gen"}, "task"),
        (
            {"suite": Suite.MULTIPLE_CHOICE, "task": "facts_mc", "params": {"temperature": 1}},
            "params",
        ),
        ({"suite": Suite.MULTIPLE_CHOICE, "params": {"task_path": "relative.jsonl"}}, "task_path"),
        ({"suite": Suite.PERPLEXITY, "params": {"limit": 0}}, "limit"),
        ({"suite": Suite.WIN_RATE}, "judge"),
        ({"suite": Suite.LM_EVAL, "task": "../etc"}, "task"),
        ({"suite": Suite.PERPLEXITY, "reference": "self"}, "reference"),
    ],
)
def test_a_request_that_cannot_run_is_refused_and_writes_nothing(policy, admin_user, kwargs, field):
    kwargs = {k: policy if v == "self" else v for k, v in kwargs.items()}
    with pytest.raises(ValidationError) as refused:
        services.eval_run_request(checkpoint=policy, requested_by=admin_user, **kwargs)
    assert field in refused.value.message_dict
    assert not EvalRun.objects.exists()


def test_a_win_rate_defaults_to_the_parent_as_reference(trained, reward, admin_user):
    run = services.eval_run_request(
        checkpoint=trained, suite=Suite.WIN_RATE, judge=reward, requested_by=admin_user
    )
    assert run.reference == trained.parent and run.task == "toy_qa_gen"


# --- claims, history, dead workers ---------------------------------------------------------------


def test_a_run_is_evaluated_once_however_often_its_message_arrives(policy):
    run = queue(policy, Suite.MULTIPLE_CHOICE, "facts_mc", params=SMALL)
    first = run_now(run)
    results = list(EvalResult.objects.values_list("pk", flat=True))
    second = run_now(run)
    assert first.status == second.status == RunStatus.SUCCEEDED
    assert list(EvalResult.objects.values_list("pk", flat=True)) == results
    assert second.finished_at == first.finished_at


def test_running_again_adds_a_run_and_the_latest_success_is_what_counts(policy, admin_user):
    first = run_now(queue(policy, Suite.MULTIPLE_CHOICE, "facts_mc", params=SMALL))
    again = services.eval_run_rerun(run=first, requested_by=admin_user)
    assert (again.suite, again.task, again.params) == (first.suite, first.task, first.params)
    # Make the newer run's numbers distinguishable, as a retrained model's would be.
    run_now(again)
    EvalResult.objects.filter(run=again, metric="acc").update(value=0.123)
    failed = queue(policy, Suite.MULTIPLE_CHOICE, "facts_mc", params=SMALL)
    EvalRun.objects.filter(pk=failed.pk).update(status=RunStatus.FAILED)

    latest = {
        (row[1], row[2], row[3]): row for row in selectors.latest_results(checkpoints=[policy.pk])
    }
    acc = latest[(Suite.MULTIPLE_CHOICE, "facts_mc", "acc")]
    assert acc[4] == 0.123 and acc[9] == again.pk  # the newest succeeded run, not the failed one
    assert EvalResult.objects.filter(run=first).count() == 2  # history is kept, not overwritten


def test_a_run_whose_worker_went_silent_is_failed(policy):
    now = timezone.now()
    silent = queue(policy, Suite.PERPLEXITY)
    alive = queue(policy, Suite.PERPLEXITY)
    EvalRun.objects.filter(pk=silent.pk).update(
        status=RunStatus.RUNNING, heartbeat_at=now - timedelta(seconds=60)
    )
    EvalRun.objects.filter(pk=alive.pk).update(status=RunStatus.RUNNING, heartbeat_at=now)
    assert work_sweep(now=now) == {"evals.EvalRun": 1}
    silent.refresh_from_db()
    alive.refresh_from_db()
    assert silent.status == RunStatus.FAILED and "worker stopped responding" in silent.error
    assert alive.status == RunStatus.RUNNING


def test_a_restarted_worker_fails_the_runs_it_left_running(policy):
    started = timezone.now()
    orphan = queue(policy, Suite.PERPLEXITY)
    EvalRun.objects.filter(pk=orphan.pk).update(
        status=RunStatus.RUNNING, worker_host="gpu0@box", started_at=started - timedelta(minutes=5)
    )
    assert work_fail_orphaned(worker_host="gpu0@box", started_before=started) == {
        "evals.EvalRun": 1
    }
    orphan.refresh_from_db()
    assert orphan.status == RunStatus.FAILED and "gpu0@box restarted" in orphan.error


# --- through a real worker -----------------------------------------------------------------------


def test_eval_tasks_are_routed_to_the_gpu_queue():
    route = app.amqp.router.route({}, "evals.tasks.run_eval")
    assert route["queue"].name == CeleryQueue.GPU.value


@pytest.fixture
def gpu_worker(transactional_db):
    purge_gpu_queue()
    with start_worker(
        app, pool="solo", queues=[CeleryQueue.GPU.value], perform_ping_check=False
    ) as worker:
        yield worker
    purge_gpu_queue()


@pytest.mark.django_db(transaction=True)
def test_a_requested_run_is_evaluated_by_a_real_worker(gpu_worker, roles, admin_user):
    policy = make_checkpoint("tiny-e2e")
    run = services.eval_run_request(
        checkpoint=policy,
        suite=Suite.GENERATIVE,
        task="toy_qa_gen",
        params={"limit": 2, "max_new_tokens": 3},
        requested_by=admin_user,
    )
    wait_for(
        lambda: EvalRun.objects.get(pk=run.pk).status in (RunStatus.SUCCEEDED, RunStatus.FAILED),
        timeout=120,
        what="the worker to finish the run",
    )
    run.refresh_from_db()
    assert run.status == RunStatus.SUCCEEDED, run.error
    assert run.worker_host  # the worker's name
    assert EvalSample.objects.filter(run=run).count() == 2
    assert run.results.get(metric="exact_match").n == 2
