"""Every job kind trains for real: the tiny model, a few steps of the real TRL trainer on a
snapshot built from real judgements, and a checkpoint that reloads, differs from its parent and
names its lineage. `run_training_job` is called directly here (test_tasks.py drives it through a
real worker)."""

from __future__ import annotations

import json

import pytest
import torch
from django.core.management import call_command

from modeling import selectors, services
from modeling.ml import load_causal_lm, load_reward_model
from modeling.models import Checkpoint, CheckpointKind, JobStatus, TrainingJob

pytestmark = pytest.mark.django_db

# The smallest settings that still take real optimizer steps; learning rates are raised so a
# couple of steps move the weights visibly in float32.
KINDS = {
    "sft": ("sft", {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}),
    "reward": ("preference", {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}),
    "dpo": ("preference", {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}),
    "ppo": ("prompts", {"max_steps": 1, "batch_size": 2, "num_ppo_epochs": 1,
                        "max_completion_length": 8, "learning_rate": 1e-3}),
    "rloo": ("prompts", {"max_steps": 1, "batch_size": 2, "num_generations": 2,
                         "max_completion_length": 8, "learning_rate": 1e-3}),
    "grpo": ("prompts", {"max_steps": 1, "batch_size": 2, "num_generations": 2,
                         "max_completion_length": 8, "learning_rate": 1e-3}),
}  # fmt: skip


def weights(checkpoint: Checkpoint, kind: str) -> dict[str, torch.Tensor]:
    load = load_reward_model if kind == CheckpointKind.REWARD else load_causal_lm
    return {name: p.detach().clone() for name, p in load(checkpoint.load_path()).named_parameters()}


def changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> list[str]:
    """Parameters present in both with the same shape whose values moved."""
    return [
        name
        for name, value in after.items()
        if name in before
        and before[name].shape == value.shape
        and not torch.equal(before[name], value)
    ]


@pytest.mark.parametrize("kind", list(KINDS))
def test_each_kind_trains_a_checkpoint_that_reloads_with_lineage(
    kind, admin_user, base_checkpoint, reward_checkpoint, make_snapshot
):
    snapshot_kind, config = KINDS[kind]
    snapshot = make_snapshot(snapshot_kind)
    job = services.job_launch(
        kind=kind,
        parent=base_checkpoint,
        snapshot=snapshot,
        reward_model=reward_checkpoint if kind in ("ppo", "rloo", "grpo") else None,
        config=config,
        launched_by=admin_user,
        enqueue=False,
    )

    job = services.run_training_job(job=job)

    assert job.status == JobStatus.SUCCEEDED, job.error + "\n" + job.log_tail
    assert job.step == job.total_steps == config["max_steps"]
    assert job.metric_history and job.metric_history[-1]["step"] == job.step
    assert job.finished_at and job.heartbeat_at and job.worker_host
    checkpoint = job.result
    assert (checkpoint.parent, checkpoint.job, checkpoint.snapshot) == (
        base_checkpoint,
        job,
        snapshot,
    )
    assert checkpoint.base_model == base_checkpoint
    assert checkpoint.kind == (CheckpointKind.REWARD if kind == "reward" else CheckpointKind.POLICY)
    assert checkpoint.parameter_count > 1_000_000
    assert checkpoint.size_bytes > 1_000_000
    assert checkpoint.created_by == admin_user
    assert [step.checkpoint for step in selectors.checkpoint_lineage(checkpoint=checkpoint)] == [
        base_checkpoint,
        checkpoint,
    ]
    before = weights(base_checkpoint, checkpoint.kind)
    after = weights(checkpoint, checkpoint.kind)  # reloads from disk
    assert changed(before, after), "training left every shared parameter untouched"


def test_lora_job_registers_an_adapter_on_its_base(admin_user, base_checkpoint, make_snapshot):
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={**KINDS["sft"][1], "lora": True, "lora_rank": 4},
        launched_by=admin_user,
        enqueue=False,
    )
    job = services.run_training_job(job=job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    checkpoint = job.result
    assert checkpoint.is_adapter
    assert changed(weights(base_checkpoint, "policy"), weights(checkpoint, "policy"))


def test_a_failing_trainer_fails_the_job_with_its_reason(
    admin_user, base_checkpoint, make_snapshot
):
    snapshot = make_snapshot("sft")
    (snapshot.path() / "train.jsonl").write_text('{"messages": [{"role": "robot"}]}\n')
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=snapshot,
        config=KINDS["sft"][1],
        launched_by=admin_user,
        enqueue=False,
    )
    job = services.run_training_job(job=job)
    assert job.status == JobStatus.FAILED
    assert job.error  # the exception's own words
    assert "Traceback" in job.log_tail
    assert job.result is None
    assert not Checkpoint.objects.filter(job=job).exists()


def test_a_rerun_resumes_from_the_last_trainer_checkpoint_of_the_cancelled_attempt(
    admin_user, base_checkpoint, make_snapshot, monkeypatch
):
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={**KINDS["sft"][1], "max_steps": 3, "save_steps": 1},
        launched_by=admin_user,
        enqueue=False,
    )

    class CancelAfterFirstStep(services.JobReporter):
        """Presses Cancel (the flag on the row) as soon as a step is done, deterministically."""

        def should_stop(self) -> bool:
            if self.step >= 1:
                TrainingJob.objects.filter(pk=self.job_id).update(cancel_requested=True)
            return super().should_stop()

    with monkeypatch.context() as patch:
        patch.setattr(services.runner, "JobReporter", CancelAfterFirstStep)
        first = services.run_training_job(job=job)
    assert first.status == JobStatus.CANCELLED, first.error
    assert first.step == 1
    assert first.result is None

    rerun = services.run_training_job(job=services.job_rerun(job=first, launched_by=admin_user))

    assert rerun.status == JobStatus.SUCCEEDED, rerun.error
    assert rerun.attempt == 2
    assert rerun.resumed_from.endswith(f"{first.pk}-1/checkpoint-1")
    assert "resuming from checkpoint-1" in rerun.log_tail
    assert rerun.step == 3
    assert rerun.result.parent == base_checkpoint


def test_launch_job_can_train_in_this_process(base_checkpoint, make_snapshot, capsys):
    snapshot = make_snapshot("sft")
    call_command(
        "launch_job",
        "--kind=sft",
        "--parent=tiny",
        f"--snapshot={snapshot.pk}",
        f"--config={json.dumps(KINDS['sft'][1])}",
        "--run-here",
    )
    job = TrainingJob.objects.get()
    assert f"succeeded: checkpoint {job.result.name}" in capsys.readouterr().out
    assert job.launched_by is None  # the operator at the shell


def test_a_succeeded_job_schedules_the_default_evaluations_of_its_checkpoint(
    admin_user, base_checkpoint, make_snapshot, django_capture_on_commit_callbacks
):
    from evals.models import EvalRun

    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config=KINDS["sft"][1],
        launched_by=admin_user,
        enqueue=False,
    )
    with django_capture_on_commit_callbacks(execute=True):
        job = services.run_training_job(job=job)
    assert job.status == JobStatus.SUCCEEDED, job.error
    runs = EvalRun.objects.filter(checkpoint=job.result, triggered_by_job=job)
    assert {run.suite for run in runs} >= {"perplexity", "multiple_choice", "generative"}
