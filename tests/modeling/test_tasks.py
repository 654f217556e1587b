"""Jobs through real Celery workers on the test Redis: an in-process worker thread for the happy
path, cancel and duplicate delivery, and a `celery worker` subprocess that is SIGKILLed mid-job.

These tests commit (transaction=True) because the worker reads the rows from its own
connection."""

from __future__ import annotations

import logging
import threading
import time
from datetime import timedelta

import pytest
from celery.contrib.testing.worker import start_worker
from django.db import connection
from django.utils import timezone

from config.celery import CeleryQueue, app
from modeling import services
from modeling.models import Checkpoint, JobStatus, TrainingJob
from modeling.tasks import train_job
from tests.modeling.helpers import (
    queued_tasks,
    wait_for,
    wait_until_finished,
)

pytestmark = pytest.mark.django_db(transaction=True)

FEW_STEPS = {"max_steps": 2, "batch_size": 2, "learning_rate": 1e-3}
# Long enough that the job is certainly still running when the test acts on it.
MANY_STEPS = {"max_steps": 5000, "batch_size": 2, "learning_rate": 1e-3}


def launch_sft(admin_user, parent, snapshot, config) -> TrainingJob:
    # No surrounding transaction here: the message is sent as job_launch commits.
    return services.job_launch(
        kind="sft", parent=parent, snapshot=snapshot, config=config, launched_by=admin_user
    )


def test_a_launched_job_trains_on_a_real_worker(
    gpu_worker, admin_user, base_checkpoint, make_snapshot
):
    job = launch_sft(admin_user, base_checkpoint, make_snapshot("sft"), FEW_STEPS)

    job = wait_until_finished(job)

    assert job.status == JobStatus.SUCCEEDED, job.error
    assert job.worker_host == gpu_worker.hostname
    assert job.result.parent == base_checkpoint
    # The training message was consumed; what may wait on the queue now is the new
    # checkpoint's evaluations, which every succeeded job schedules.
    assert "modeling.tasks.train_job" not in queued_tasks()
    # Scheduled by an on-commit hook just after the job is seen succeeded.
    wait_for(lambda: job.result.eval_runs.exists(), timeout=30, what="default evaluations")


def test_cancel_during_training_ends_cancelled_and_registers_nothing(
    gpu_worker, admin_user, base_checkpoint, make_snapshot
):
    job = launch_sft(admin_user, base_checkpoint, make_snapshot("sft"), MANY_STEPS)
    wait_for(
        lambda: TrainingJob.objects.filter(pk=job.pk, step__gte=1).exists(),
        what="the first step",
    )

    services.job_cancel(job=job, cancelled_by=admin_user)
    asked = time.monotonic()
    job = wait_until_finished(job, timeout=60)
    stopped_after = time.monotonic() - asked

    assert job.status == JobStatus.CANCELLED
    assert 1 <= job.step < MANY_STEPS["max_steps"]
    assert job.result is None
    assert not Checkpoint.objects.filter(job=job).exists()
    # The trainer asks should_stop() at least every couple of seconds; tiny steps are fast.
    assert stopped_after < 15, f"took {stopped_after:.1f} s to stop"


def test_a_message_delivered_twice_trains_once(
    gpu_worker, admin_user, base_checkpoint, make_snapshot
):
    job = launch_sft(admin_user, base_checkpoint, make_snapshot("sft"), FEW_STEPS)
    redelivered = train_job.delay(job.pk)  # what Redis does after a visibility timeout

    assert redelivered.get(timeout=180) == JobStatus.SUCCEEDED  # it found the work done
    job = wait_until_finished(job)
    assert job.status == JobStatus.SUCCEEDED
    assert Checkpoint.objects.filter(job=job).count() == 1
    assert Checkpoint.objects.count() == 2  # the base and one trained checkpoint


def test_two_workers_racing_for_one_job_train_it_once(
    admin_user, base_checkpoint, make_snapshot, caplog
):
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config=FEW_STEPS,
        launched_by=admin_user,
        enqueue=False,
    )
    caplog.set_level(logging.INFO, logger="jobs.services")
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def worker(name: str) -> None:
        try:
            start.wait()
            outcomes.append(services.run_training_job(job=job, worker_host=name).worker_host)
        finally:
            connection.close()

    threads = [threading.Thread(target=worker, args=(f"racer{i}",)) for i in range(2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=180)

    job.refresh_from_db()
    assert job.status == JobStatus.SUCCEEDED
    assert Checkpoint.objects.filter(job=job).count() == 1
    assert outcomes == [job.worker_host, job.worker_host]  # both report the one claim
    skips = [r for r in caplog.records if "was not queued any more" in r.getMessage()]
    assert len(skips) == 1


def test_a_worker_starting_under_a_name_fails_the_jobs_it_left_running(
    admin_user, base_checkpoint, make_snapshot, empty_gpu_queue
):
    snapshot = make_snapshot("sft")
    before = timezone.now() - timedelta(minutes=1)

    def running_on(host: str) -> TrainingJob:
        return TrainingJob.objects.create(
            kind="sft",
            parent=base_checkpoint,
            snapshot=snapshot,
            config={},
            time_limit_seconds=600,
            status=JobStatus.RUNNING,
            worker_host=host,
            started_at=before,
            heartbeat_at=timezone.now(),  # fresh: only the restart can tell it is dead
        )

    orphan, elsewhere = running_on("gpu0@box-a"), running_on("gpu1@box-a")

    with start_worker(
        app, hostname="gpu0@box-a", queues=[CeleryQueue.GPU.value], perform_ping_check=False
    ):
        pass

    orphan.refresh_from_db()
    elsewhere.refresh_from_db()
    assert orphan.status == JobStatus.FAILED
    assert orphan.error.startswith("worker gpu0@box-a restarted during the run")
    assert elsewhere.status == JobStatus.RUNNING
