"""Training, evaluation and generation run as their own process trees (jobs/backends/local.py)
through a real Celery worker: the worker steers, never trains.

Everything commits (transaction=True): the launched processes read the rows over their own
connections, from the same test database (VEREDICTO_DATABASE_NAME)."""

from __future__ import annotations

import math
import os
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
from django.conf import settings
from django.core.management import call_command
from django.core.management.base import CommandError

from evals.services import eval_run_request
from feedback.services import snapshot_create
from jobs.backends.local import descendants
from jobs.models import Status, Worker
from jobs.services import work_sweep
from modeling import services
from modeling.ml import load_causal_lm
from modeling.models import Checkpoint, TrainingJob
from tests.jobs.processes import alive, group_members, maps_mention, resident_kib
from tests.modeling.helpers import (
    HEARTBEAT_SECONDS,
    STALE_SECONDS,
    queued_messages,
    wait_for,
    wait_until_finished,
)

pytestmark = pytest.mark.django_db(transaction=True)

# One process: micro-batches of 2, two accumulated per update (effective batch 4). Two processes
# of one micro-batch each make the same updates from the same batches (modeling/ml/distributed).
SFT = {"max_steps": 4, "batch_size": 2, "gradient_accumulation_steps": 2, "learning_rate": 1e-3}
DPO = {**SFT, "learning_rate": 1e-4}
DDP = {"distributed": {"strategy": "ddp", "processes": 2}}
FOREVER = {"max_steps": 5000, "batch_size": 2, "learning_rate": 1e-3}


@pytest.fixture
def two_devices(settings):
    settings.VEREDICTO_WORKER_DEVICES = 2  # announced when the test worker starts


def launch(admin_user, kind, parent, snapshot, config, *, enqueue: bool = True) -> TrainingJob:
    return services.job_launch(
        kind=kind,
        parent=parent,
        snapshot=snapshot,
        config=config,
        launched_by=admin_user,
        enqueue=enqueue,
    )


def losses(job: TrainingJob) -> dict[int, float]:
    return {int(point["step"]): point["loss"] for point in job.metric_history if "loss" in point}


@pytest.mark.parametrize("kind, config", [("sft", SFT), ("dpo", DPO)])
def test_two_processes_train_like_one_with_the_same_effective_batch(
    two_devices, gpu_worker, admin_user, base_checkpoint, labelled_project, kind, config
):
    # Nothing held out: 8 rows make 4 whole micro-batches per epoch. (With an uneven last one,
    # accelerate's even_batches pads a process's share with rows from the start, and the two
    # runs would see different data from then on.)
    snapshot = snapshot_create(
        project=labelled_project,
        kind="sft" if kind == "sft" else "preference",
        name=f"{kind} without test split",
        created_by=admin_user,
        policy={"test_fraction": 0},
    )
    assert snapshot.row_counts["train"] == 8
    one = wait_until_finished(launch(admin_user, kind, base_checkpoint, snapshot, config))
    two = wait_until_finished(
        launch(admin_user, kind, base_checkpoint, snapshot, {**config, **DDP})
    )

    for job in (one, two):
        assert job.status == Status.SUCCEEDED, job.error + job.log_tail[-2000:]
        assert job.backend == "local" and job.launch_id
        load_causal_lm(job.result.load_path())  # the checkpoint reloads
    assert "over 2 processes" in two.log_tail
    assert two.step == one.step == 4
    # Same batches, same updates: the curves agree up to the order of floating-point sums
    # (gloo's all-reduce against accumulation in one process), far below any real difference
    # (a wrong batch split or a missed rescale moves them by percents).
    # Progress reports are throttled, so compare the steps both reported (the last always is).
    steps = sorted(losses(one).keys() & losses(two).keys())
    assert 4 in steps, (losses(one), losses(two))
    for step in steps:
        a, b = losses(one)[step], losses(two)[step]
        assert math.isclose(a, b, rel_tol=2e-3), (step, losses(one), losses(two))


def test_a_job_asking_for_more_devices_than_any_worker_owns_is_refused_and_not_queued(
    admin_user, base_checkpoint, make_snapshot, empty_gpu_queue
):
    Worker.objects.create(name="gpu0@small", queues=["gpu"], devices=1)
    config = {**SFT, "distributed": {"strategy": "ddp", "processes": 4}}
    with pytest.raises(Exception, match="No GPU worker owns 4 devices") as refused:
        launch(admin_user, "sft", base_checkpoint, make_snapshot("sft"), config)
    assert "gpu0@small, owns 1" in str(refused.value)
    assert not TrainingJob.objects.exists() and queued_messages() == 0


def test_cancel_stops_every_process_of_the_job_and_registers_nothing(
    two_devices, gpu_worker, admin_user, base_checkpoint, make_snapshot
):
    job = launch(admin_user, "sft", base_checkpoint, make_snapshot("sft"), {**FOREVER, **DDP})
    wait_for(
        lambda: TrainingJob.objects.filter(pk=job.pk, step__gte=1).exists(),
        timeout=180,
        what="training to start",
    )
    job.refresh_from_db()
    # The launcher's group and the ranks torchrun starts in sessions of their own.
    launcher = int(job.launch_id)
    processes = group_members(launcher) | descendants(launcher)
    assert len(processes) >= 3  # the launcher and two ranks, at least

    services.job_cancel(job=job, cancelled_by=admin_user)
    job = wait_until_finished(job, timeout=60)

    assert job.status == Status.CANCELLED
    wait_for(lambda: not any(alive(pid) for pid in processes), timeout=5, what="group gone")
    assert not Checkpoint.objects.filter(job=job).exists()


def _subprocess_worker(tmp_path: Path, name: str) -> subprocess.Popen:
    from tests.jobs.test_worker_faults import _environment

    env = {**_environment(), "VEREDICTO_FAULT_DRILL_PAUSE_SECONDS": "0"}
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu",
               "--pool", "solo", "-n", name, "--without-mingle", "--without-gossip",
               "--without-heartbeat", "-l", "INFO"]  # fmt: skip
    with (tmp_path / "worker.log").open("wb") as log:
        return subprocess.Popen(
            command,
            env=env,
            cwd=settings.BASE_DIR,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )


def test_a_killed_worker_takes_its_trainer_with_it_and_the_job_fails_within_the_window(
    admin_user, base_checkpoint, make_snapshot, empty_gpu_queue, tmp_path
):
    worker = _subprocess_worker(tmp_path, f"steer-{uuid.uuid4().hex[:6]}@localhost")
    try:
        job = launch(admin_user, "sft", base_checkpoint, make_snapshot("sft"), FOREVER)
        wait_for(
            lambda: (
                TrainingJob.objects.filter(pk=job.pk, step__gte=1).exists()
                or worker.poll() is not None
            ),
            timeout=180,
            what="training to start",
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        job.refresh_from_db()
        trainers = group_members(int(job.launch_id)) | descendants(int(job.launch_id))
        assert trainers and worker.pid not in trainers
        os.kill(worker.pid, signal.SIGKILL)  # the worker alone, not the trainer's group
        worker.wait(timeout=10)
        killed_at = time.monotonic()

        wait_for(lambda: not any(alive(p) for p in trainers), timeout=10, what="trainers gone")
        # The scheduled sweep (beat runs it; here the test does) notices the silence.
        wait_for(
            lambda: work_sweep() or TrainingJob.objects.get(pk=job.pk).status == Status.FAILED,
            timeout=STALE_SECONDS + 10,
            what="the sweep",
        )
        noticed_after = time.monotonic() - killed_at
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
    job.refresh_from_db()
    assert job.status == Status.FAILED
    assert job.error.startswith("worker stopped responding")
    assert noticed_after <= STALE_SECONDS + 4 * HEARTBEAT_SECONDS + 2


def test_the_worker_never_loads_torch_and_its_memory_returns_to_idle(
    admin_user, base_checkpoint, make_snapshot, empty_gpu_queue, tmp_path
):
    worker = _subprocess_worker(tmp_path, f"lean-{uuid.uuid4().hex[:6]}@localhost")
    try:
        wait_for(
            lambda: "ready" in (tmp_path / "worker.log").read_text() or worker.poll() is not None,
            timeout=60,
            what="the worker to start",
        )
        time.sleep(1)
        idle = resident_kib(worker.pid)
        job = wait_until_finished(
            launch(admin_user, "sft", base_checkpoint, make_snapshot("sft"), SFT), timeout=240
        )
        assert job.status == Status.SUCCEEDED, job.error
        after = resident_kib(worker.pid)
        assert not maps_mention(worker.pid, "libtorch")
    finally:
        os.killpg(worker.pid, signal.SIGKILL)
    assert after <= idle * 1.10, f"idle {idle} KiB, after the job {after} KiB"


def test_evaluation_and_generation_run_in_their_own_processes(
    gpu_worker, admin_user, base_checkpoint
):
    run = eval_run_request(checkpoint=base_checkpoint, suite="perplexity", requested_by=admin_user)
    wait_for(lambda: type(run).objects.get(pk=run.pk).is_finished, timeout=180, what="the run")
    run.refresh_from_db()
    assert run.status == Status.SUCCEEDED, run.error
    assert run.backend == "local" and run.launch_id and run.results.exists()


@pytest.fixture
def corrupt_parent(db, tiny_model_dir, tmp_path):
    """A registered model whose config was damaged after registration: training it fails in
    the launched process."""
    copy = Path(shutil.copytree(tiny_model_dir, tmp_path / "damaged"))
    checkpoint = services.checkpoint_register(name="damaged", storage_path=str(copy))
    (copy / "config.json").write_text("{not json")
    return checkpoint


def test_a_failing_trainer_writes_its_own_reason(
    gpu_worker, admin_user, corrupt_parent, make_snapshot
):
    job = wait_until_finished(launch(admin_user, "sft", corrupt_parent, make_snapshot("sft"), SFT))
    assert job.status == Status.FAILED
    assert "config.json" in job.error


def test_a_trainer_that_dies_is_failed_by_its_worker_with_how_it_died(
    gpu_worker, admin_user, base_checkpoint, make_snapshot
):
    job = launch(admin_user, "sft", base_checkpoint, make_snapshot("sft"), FOREVER)
    wait_for(
        lambda: TrainingJob.objects.filter(pk=job.pk, step__gte=1).exists(),
        timeout=180,
        what="training to start",
    )
    job.refresh_from_db()
    os.kill(int(job.launch_id), signal.SIGKILL)  # the trainer, as the OOM killer would
    job = wait_until_finished(job, timeout=30)
    assert job.status == Status.FAILED
    assert job.error.startswith("the process was killed by SIGKILL")


def test_launch_job_wait_follows_the_job_and_its_exit_status_says_how_it_ended(
    gpu_worker, admin_user, base_checkpoint, corrupt_parent, make_snapshot, capsys
):
    snapshot = make_snapshot("sft")
    call_command(
        "launch_job", "--kind", "sft", "--parent", str(base_checkpoint.pk), "--snapshot",
        str(snapshot.pk), "--config", '{"max_steps": 2, "batch_size": 2}', "--wait",
    )  # fmt: skip
    assert "succeeded: checkpoint" in capsys.readouterr().out
    with pytest.raises(CommandError, match=r"Job #\d+ failed: .*config.json"):
        call_command(
            "launch_job", "--kind", "sft", "--parent", str(corrupt_parent.pk), "--snapshot",
            str(snapshot.pk), "--config", '{"max_steps": 2, "batch_size": 2}', "--wait",
        )  # fmt: skip


def test_an_lm_eval_run_spreads_over_two_processes_and_scores_like_one(
    two_devices, gpu_worker, admin_user, base_checkpoint
):
    def scored(params: dict) -> dict[str, float]:
        run = eval_run_request(
            checkpoint=base_checkpoint,
            suite="lm_eval",
            task="veredicto_facts_mc",
            params={"limit": 12, "batch_size": 4, **params},
            requested_by=admin_user,
        )
        wait_for(lambda: type(run).objects.get(pk=run.pk).is_finished, timeout=300, what="run")
        run.refresh_from_db()
        assert run.status == Status.SUCCEEDED, run.error
        return {r.metric: r.value for r in run.results.all()}

    one, two = scored({}), scored({"processes": 2})
    assert one.keys() == two.keys() == {"acc", "acc_norm"}
    # Each process scores its share of the items; rank 0 gathers them: the same numbers.
    assert two == pytest.approx(one, abs=1e-9)


def test_the_time_limit_stops_the_whole_process_group(
    gpu_worker, admin_user, base_checkpoint, make_snapshot, settings
):
    from modeling.tasks import train_job

    settings.VEREDICTO_JOB_KILL_GRACE_SECONDS = 2
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config=FOREVER,
        launched_by=admin_user,
        enqueue=False,
    )
    # Launch refuses limits under a minute; the row's own limit is what the worker enforces.
    TrainingJob.objects.filter(pk=job.pk).update(time_limit_seconds=20)
    train_job.delay(job.pk)
    wait_for(
        lambda: TrainingJob.objects.filter(pk=job.pk).exclude(launch_id="").exists(),
        timeout=60,
        what="the launch",
    )
    launcher = int(TrainingJob.objects.get(pk=job.pk).launch_id)
    processes = group_members(launcher) | descendants(launcher) | {launcher}

    job = wait_until_finished(job, timeout=90)

    assert job.status == Status.FAILED
    assert job.error == "time limit of 20 s exceeded"
    assert not any(alive(pid) for pid in processes)
    assert not Checkpoint.objects.filter(job=job).exists()


# What a child does after writing its own outcome: announce the checkpoint (evaluations are
# created and their messages sent), then exit. Here it takes a few poll intervals.
FINISHES_THEN_WORKS = """
import os, sys, time
import django
django.setup()
from jobs.models import Status
from modeling.models import TrainingJob
TrainingJob.objects.filter(pk=int(sys.argv[1])).update(status=Status.SUCCEEDED)
time.sleep(2)
open(sys.argv[2], "w").write("announced")
"""


def test_a_child_that_ended_its_own_row_is_left_to_finish_what_follows(
    admin_user, base_checkpoint, make_snapshot, tmp_path, monkeypatch
):
    """A trainer marks its job succeeded, then announces the new checkpoint (which schedules
    the evaluations) before it exits. The worker must not kill it in between: that lost the
    evaluations' messages, and they stayed queued for ever (CI failure, stop 20)."""
    from jobs.backends import local

    job = launch(admin_user, "sft", base_checkpoint, make_snapshot("sft"), SFT, enqueue=False)
    assert services.training_job_claim(job=job)
    marker = tmp_path / "announced"
    monkeypatch.setattr(
        local,
        "entry_command",
        lambda row: [sys.executable, "-c", FINISHES_THEN_WORKS, str(row.pk), str(marker)],
    )

    outcome = local.run_locally(TrainingJob.objects.get(pk=job.pk))

    assert outcome.ok
    assert marker.read_text() == "announced"
