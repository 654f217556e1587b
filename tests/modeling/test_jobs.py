"""Launching, cancelling, re-running and reaping jobs, and the model registry: the services and
the management commands, against the real database and the real Redis queue (no worker here,
so every message a test sends stays countable in the `gpu` queue)."""

from __future__ import annotations

import json
from datetime import timedelta
from pathlib import Path

import pytest
from django.core.exceptions import PermissionDenied, ValidationError
from django.core.management import CommandError, call_command
from django.utils import timezone

from jobs.models import Status
from jobs.services import work_sweep
from modeling import selectors, services
from modeling.ml import load_causal_lm
from modeling.models import Checkpoint, CheckpointKind, CheckpointSource, JobStatus, TrainingJob
from modeling.services.checkpoints import safetensors_parameter_count
from tests.modeling.helpers import queued_messages

pytestmark = [pytest.mark.django_db, pytest.mark.usefixtures("empty_gpu_queue")]


def launch(**overrides):
    return services.job_launch(**{"config": {"max_steps": 2}, **overrides})


# --- launching -------------------------------------------------------------------------------


def test_launch_queues_one_message_on_the_gpu_queue_after_commit(
    admin_user, base_checkpoint, make_snapshot, django_capture_on_commit_callbacks
):
    snapshot = make_snapshot("sft")
    with django_capture_on_commit_callbacks(execute=False) as callbacks:
        job = launch(kind="sft", parent=base_checkpoint, snapshot=snapshot, launched_by=admin_user)
        assert queued_messages() == 0  # nothing leaves before the row is committed
    assert len(callbacks) == 1
    callbacks[0]()
    assert queued_messages() == 1
    job.refresh_from_db()
    assert job.status == JobStatus.QUEUED
    assert job.attempt == 1
    assert job.config["max_steps"] == 2
    assert job.config["learning_rate"] == 2e-5  # defaults filled in and stored
    assert job.time_limit_seconds == 24 * 3600


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"learning_rat": 0.1}, "learning_rat: unknown setting for sft"),
        ({"max_steps": 0}, "max_steps: Input should be greater than or equal to 1"),
        ({"batch_size": "lots"}, "batch_size: Input should be a valid integer"),
        ([1, 2], "The config must be a JSON object."),
    ],
)
def test_invalid_config_is_refused_and_nothing_is_queued(
    admin_user, base_checkpoint, make_snapshot, django_capture_on_commit_callbacks, config, message
):
    snapshot = make_snapshot("sft")
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(ValidationError) as exc:
        services.job_launch(
            kind="sft",
            parent=base_checkpoint,
            snapshot=snapshot,
            config=config,
            launched_by=admin_user,
        )
    assert any(message in m for m in exc.value.message_dict["config"])
    assert callbacks == []
    assert not TrainingJob.objects.exists()
    assert queued_messages() == 0


def test_group_size_that_does_not_divide_the_batch_is_a_config_error(
    admin_user, base_checkpoint, reward_checkpoint, make_snapshot
):
    with pytest.raises(ValidationError) as exc:
        launch(
            kind="grpo",
            parent=base_checkpoint,
            snapshot=make_snapshot("prompts"),
            reward_model=reward_checkpoint,
            config={"batch_size": 3, "num_generations": 2},
            launched_by=admin_user,
        )
    assert "must be a multiple of num_generations" in " ".join(exc.value.message_dict["config"])


def test_missing_snapshot_is_refused(admin_user, base_checkpoint):
    with pytest.raises(ValidationError) as exc:
        launch(kind="sft", parent=base_checkpoint, snapshot=None, launched_by=admin_user)
    assert exc.value.message_dict["snapshot"] == ["Choose a dataset snapshot."]
    assert queued_messages() == 0


def test_sft_data_cannot_train_dpo(admin_user, base_checkpoint, make_snapshot):
    snapshot = make_snapshot("sft")
    with pytest.raises(ValidationError) as exc:
        launch(kind="dpo", parent=base_checkpoint, snapshot=snapshot, launched_by=admin_user)
    assert exc.value.message_dict["snapshot"] == [
        "A dpo job trains on a preference snapshot; 'sft round 1' is a sft snapshot."
    ]
    assert not TrainingJob.objects.exists()
    assert queued_messages() == 0


def test_snapshot_that_is_not_ready_is_refused(admin_user, base_checkpoint, make_snapshot):
    snapshot = make_snapshot("sft")
    snapshot.status = Status.QUEUED
    snapshot.save()
    with pytest.raises(ValidationError) as exc:
        launch(kind="sft", parent=base_checkpoint, snapshot=snapshot, launched_by=admin_user)
    assert "is queued, not ready" in exc.value.message_dict["snapshot"][0]


def test_online_kinds_need_a_reward_model_and_others_refuse_one(
    admin_user, base_checkpoint, reward_checkpoint, make_snapshot
):
    prompts = make_snapshot("prompts")
    with pytest.raises(ValidationError) as exc:
        launch(kind="ppo", parent=base_checkpoint, snapshot=prompts, launched_by=admin_user)
    assert "needs a reward model" in exc.value.message_dict["reward_model"][0]
    with pytest.raises(ValidationError) as exc:
        launch(
            kind="rloo",
            parent=base_checkpoint,
            snapshot=prompts,
            reward_model=base_checkpoint,  # a policy, not a reward model
            launched_by=admin_user,
        )
    assert exc.value.message_dict["reward_model"] == ["'tiny' is a policy model."]
    with pytest.raises(ValidationError) as exc:
        launch(
            kind="sft",
            parent=base_checkpoint,
            snapshot=make_snapshot("sft"),
            reward_model=reward_checkpoint,
            launched_by=admin_user,
        )
    assert exc.value.message_dict["reward_model"] == ["A sft job does not use a reward model."]


def test_every_problem_is_reported_at_once(admin_user, reward_checkpoint):
    with pytest.raises(ValidationError) as exc:
        services.job_launch(
            kind="dpo",
            parent=reward_checkpoint,
            snapshot=None,
            config={"beta": -1},
            time_limit_seconds=5,
            launched_by=admin_user,
        )
    assert set(exc.value.message_dict) == {"parent", "snapshot", "config", "time_limit_seconds"}


@pytest.mark.parametrize("who", ["annotator", "reviewer", "nobody"])
def test_only_admins_launch_and_a_refusal_queues_nothing(
    request, who, base_checkpoint, make_snapshot, django_capture_on_commit_callbacks
):
    user = request.getfixturevalue(who)
    snapshot = make_snapshot("sft")
    with django_capture_on_commit_callbacks() as callbacks, pytest.raises(PermissionDenied):
        launch(kind="sft", parent=base_checkpoint, snapshot=snapshot, launched_by=user)
    assert callbacks == []
    assert not TrainingJob.objects.exists()
    assert queued_messages() == 0


# --- cancel, re-run, stale ------------------------------------------------------------------


@pytest.fixture
def queued_job(admin_user, base_checkpoint, make_snapshot):
    return services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={"max_steps": 2},
        launched_by=admin_user,
        enqueue=False,
    )


def test_cancelling_a_queued_job_is_immediate_and_its_message_then_trains_nothing(
    queued_job, admin_user
):
    services.job_cancel(job=queued_job, cancelled_by=admin_user)
    queued_job.refresh_from_db()
    assert queued_job.status == JobStatus.CANCELLED
    assert queued_job.finished_at is not None

    ran = services.run_training_job(job=queued_job)  # the message arriving late

    assert ran.status == JobStatus.CANCELLED
    assert ran.started_at is None
    assert not Checkpoint.objects.filter(job=queued_job).exists()


def test_cancelling_a_running_job_only_asks_it_to_stop(queued_job, admin_user):
    TrainingJob.objects.filter(pk=queued_job.pk).update(status=JobStatus.RUNNING)
    job = services.job_cancel(job=queued_job, cancelled_by=admin_user)
    assert job.status == JobStatus.RUNNING
    assert job.cancel_requested


def test_cancelling_a_finished_job_is_refused(queued_job, admin_user, annotator):
    TrainingJob.objects.filter(pk=queued_job.pk).update(status=JobStatus.SUCCEEDED)
    with pytest.raises(ValidationError, match="already finished"):
        services.job_cancel(job=queued_job, cancelled_by=admin_user)
    with pytest.raises(PermissionDenied):
        services.job_cancel(job=queued_job, cancelled_by=annotator)


def test_stale_running_job_fails_with_the_time_of_its_last_heartbeat(queued_job, settings):
    now = timezone.now()
    beat = now - timedelta(seconds=settings.VEREDICTO_JOB_STALE_SECONDS + 1)
    TrainingJob.objects.filter(pk=queued_job.pk).update(
        status=JobStatus.RUNNING, started_at=beat, heartbeat_at=beat
    )
    fresh = TrainingJob.objects.create(
        kind="sft",
        parent=queued_job.parent,
        snapshot=queued_job.snapshot,
        config=queued_job.config,
        time_limit_seconds=60,
        status=JobStatus.RUNNING,
        heartbeat_at=now,
    )

    assert work_sweep(now=now) == {"modeling.TrainingJob": 1}

    queued_job.refresh_from_db()
    assert queued_job.status == JobStatus.FAILED
    assert queued_job.error == (
        f"worker stopped responding (no heartbeat since {beat.isoformat(timespec='seconds')})"
    )
    assert queued_job.finished_at == now
    fresh.refresh_from_db()
    assert fresh.status == JobStatus.RUNNING
    assert work_sweep(now=now) == {}


def test_rerun_makes_one_new_attempt_of_a_failed_job(queued_job, admin_user):
    with pytest.raises(ValidationError, match="Only failed or cancelled jobs"):
        services.job_rerun(job=queued_job, launched_by=admin_user)
    TrainingJob.objects.filter(pk=queued_job.pk).update(status=JobStatus.FAILED, error="boom")

    rerun = services.job_rerun(job=queued_job, launched_by=admin_user)
    again = services.job_rerun(job=queued_job, launched_by=admin_user)  # a double click

    assert again.pk == rerun.pk
    assert rerun.attempt == 2
    assert rerun.previous_attempt_id == queued_job.pk
    assert rerun.status == JobStatus.QUEUED
    assert (rerun.kind, rerun.parent, rerun.snapshot, rerun.config) == (
        queued_job.kind,
        queued_job.parent,
        queued_job.snapshot,
        queued_job.config,
    )
    assert TrainingJob.objects.count() == 2


# --- the registry ----------------------------------------------------------------------------


def test_registering_a_directory_reads_its_facts_without_loading_it(admin_user, tiny_model_dir):
    checkpoint = services.checkpoint_register(
        name="tiny", storage_path=tiny_model_dir, registered_by=admin_user
    )
    card = json.loads((checkpoint.directory() / "veredicto.json").read_text())
    assert checkpoint.parameter_count == card["parameter_count"]
    assert checkpoint.size_bytes > 1_000_000
    assert checkpoint.kind == CheckpointKind.POLICY
    assert checkpoint.is_base and not checkpoint.is_adapter
    assert checkpoint.display_name == "tiny"


def test_safetensors_headers_give_the_parameter_count(tiny_model_dir):
    model = load_causal_lm(tiny_model_dir)
    # parameters() yields a tied embedding once, as save_pretrained stores it.
    expected = sum(p.numel() for p in model.parameters())
    assert safetensors_parameter_count(Path(tiny_model_dir)) == expected


def test_registration_refuses_what_transformers_could_not_load(admin_user, tmp_path, annotator):
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValidationError) as exc:
        services.checkpoint_register(name="x", storage_path=str(tmp_path / "empty"))
    assert "has no config.json or adapter_config.json" in exc.value.message_dict["storage_path"][0]
    with pytest.raises(ValidationError) as exc:
        services.checkpoint_register(name="x", storage_path="not a/hub id!", hub=True)
    assert "is not a hub id" in exc.value.message_dict["storage_path"][0]
    with pytest.raises(PermissionDenied):
        services.checkpoint_register(name="x", storage_path=str(tmp_path), registered_by=annotator)


def test_a_hub_id_is_registered_without_any_network(admin_user):
    checkpoint = services.checkpoint_register(
        name="qwen", storage_path="Qwen/Qwen2.5-0.5B-Instruct", hub=True
    )
    assert checkpoint.source == CheckpointSource.HUB
    assert checkpoint.load_path() == "Qwen/Qwen2.5-0.5B-Instruct"
    assert checkpoint.parameter_count is None


def test_register_model_command(tiny_model_dir, capsys):
    call_command("register_model", tiny_model_dir, "--name", "tiny", "--kind", "policy")
    assert "Registered tiny" in capsys.readouterr().out
    call_command("register_model", tiny_model_dir, "--name", "tiny", "--if-missing")
    assert Checkpoint.objects.count() == 1
    with pytest.raises(CommandError, match="A checkpoint named 'tiny' exists"):
        call_command("register_model", tiny_model_dir, "--name", "tiny")


@pytest.mark.django_db(transaction=True)
def test_register_model_can_leave_its_evaluations_for_the_sweep(
    tiny_model_dir, capsys, caplog, settings
):
    """`make run` registers the tiny model before Redis is up: with --no-send its evaluations
    are queued without a send (no "could not reach the task queue" warnings) and the sweep
    sends them once the broker answers."""
    from evals.models import EvalRun

    settings.VEREDICTO_EVALUATE_REGISTERED = True
    call_command("register_model", tiny_model_dir, "--name", "tiny", "--no-send")
    assert "Its automatic evaluations start once a worker runs." in capsys.readouterr().out
    runs = EvalRun.objects.filter(checkpoint__name="tiny")
    assert runs.exists() and not runs.exclude(status=Status.QUEUED, enqueued_at=None).exists()
    assert queued_messages() == 0
    assert not [r for r in caplog.records if r.levelname == "WARNING"]

    later = timezone.now() + timedelta(seconds=60)
    work_sweep(now=later)  # the broker (the test Redis) answers: each run is sent, once
    assert queued_messages() == runs.count()
    assert not runs.filter(enqueued_at=None).exists()


def test_launch_job_command_uses_the_same_service(
    base_checkpoint, make_snapshot, capsys, django_capture_on_commit_callbacks
):
    snapshot = make_snapshot("sft")
    with django_capture_on_commit_callbacks(execute=True):
        call_command(
            "launch_job",
            "--kind=sft",
            "--parent=tiny",
            f"--snapshot={snapshot.pk}",
            '--config={"max_steps": 2}',
        )
    job = TrainingJob.objects.get()
    assert f"Queued job #{job.pk}" in capsys.readouterr().out
    assert job.parent == base_checkpoint
    assert queued_messages() == 1
    with pytest.raises(CommandError, match="no dataset snapshot #999999"):
        call_command("launch_job", "--kind=sft", "--parent=tiny", "--snapshot=999999")
    with pytest.raises(CommandError, match="trains on a preference snapshot"):
        call_command("launch_job", "--kind=dpo", f"--parent={base_checkpoint.pk}",
                     f"--snapshot={snapshot.pk}")  # fmt: skip
    with pytest.raises(CommandError, match="unknown setting"):
        call_command("launch_job", "--kind=sft", "--parent=tiny", f"--snapshot={snapshot.pk}",
                     '--config={"epoch": 1}')  # fmt: skip
    assert queued_messages() == 1


def test_lineage_reads_from_the_base_to_the_checkpoint(base_checkpoint, make_snapshot, queued_job):
    sft = Checkpoint.objects.create(
        name="tiny-sft-1",
        kind=CheckpointKind.POLICY,
        storage_path="/nowhere",
        base_model=base_checkpoint,
        parent=base_checkpoint,
        job=queued_job,
        snapshot=queued_job.snapshot,
    )
    dpo = Checkpoint.objects.create(
        name="tiny-dpo-2",
        kind=CheckpointKind.POLICY,
        storage_path="/nowhere",
        base_model=base_checkpoint,
        parent=sft,
    )
    chain = selectors.checkpoint_lineage(checkpoint=dpo)
    assert [step.checkpoint for step in chain] == [base_checkpoint, sft, dpo]
    assert chain[0].job is None
    assert chain[1].job == queued_job and chain[1].snapshot == queued_job.snapshot


def test_admin_registers_a_model_through_the_service(admin_client, tiny_model_dir, tmp_path):
    form = {"name": "tiny", "kind": "policy", "storage_path": tiny_model_dir, "notes": "demo"}
    response = admin_client.post("/admin/modeling/checkpoint/add/", form)
    assert response.status_code == 302
    checkpoint = Checkpoint.objects.get(name="tiny")
    assert checkpoint.parameter_count and checkpoint.size_bytes
    assert (
        admin_client.get(f"/admin/modeling/checkpoint/{checkpoint.pk}/change/").status_code == 200
    )

    (tmp_path / "empty").mkdir()
    form = {**form, "name": "broken", "storage_path": str(tmp_path / "empty")}
    response = admin_client.post("/admin/modeling/checkpoint/add/", form)
    assert response.status_code == 200
    assert "has no config.json or adapter_config.json" in response.content.decode()
    assert not Checkpoint.objects.filter(name="broken").exists()


def test_grpo_may_score_with_reward_functions_alone(admin_user, base_checkpoint, make_snapshot):
    job = launch(
        kind="grpo",
        parent=base_checkpoint,
        snapshot=make_snapshot("prompts"),
        config={"max_steps": 2, "reward_functions": ["toy_task", "format"]},
        launched_by=admin_user,
    )
    assert job.reward_model is None
    assert job.config["reward_functions"] == ["toy_task", "format"]


def test_an_unknown_reward_function_is_refused_with_the_registered_names(
    admin_user, base_checkpoint, make_snapshot
):
    with pytest.raises(ValidationError) as exc:
        launch(
            kind="rloo",
            parent=base_checkpoint,
            snapshot=make_snapshot("prompts"),
            config={"reward_functions": ["toy_tsak"]},
            launched_by=admin_user,
        )
    message = exc.value.message_dict["config"][0]
    assert "unknown reward function(s) ['toy_tsak']" in message
    assert "exact_match" in message and "toy_task" in message


def test_reward_weights_need_one_weight_per_reward_including_the_model(
    admin_user, base_checkpoint, reward_checkpoint, make_snapshot
):
    prompts = make_snapshot("prompts")
    config = {"reward_functions": ["toy_task"], "reward_weights": [1.0]}
    with pytest.raises(ValidationError) as exc:
        launch(
            kind="grpo",
            parent=base_checkpoint,
            snapshot=prompts,
            reward_model=reward_checkpoint,
            config=config,
            launched_by=admin_user,
        )
    assert "1 weights for the reward model and 1 reward function(s)" in str(exc.value)
    job = launch(
        kind="grpo",
        parent=base_checkpoint,
        snapshot=prompts,
        reward_model=reward_checkpoint,
        config={**config, "reward_weights": [0.5, 1.0]},
        launched_by=admin_user,
    )
    assert job.config["reward_weights"] == [0.5, 1.0]
