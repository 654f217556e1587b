"""Jobs through real Celery workers on the test Redis: an in-process worker thread for the happy
path, cancel and duplicate delivery, and a `celery worker` subprocess that is SIGKILLed mid-job.

These tests commit (transaction=True) because the worker reads the rows from its own
connection."""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import threading
import time
import uuid
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.db import connection
from django.utils import timezone

from config.celery import CeleryQueue, app
from feedback.models import Completion, CompletionSource, Item, Prompt, Split, TaskKind
from modeling import services
from modeling.models import Checkpoint, JobStatus, TrainingJob
from modeling.tasks import generate_comparisons, train_job
from tests.modeling.helpers import (
    HEARTBEAT_SECONDS,
    STALE_SECONDS,
    job_status,
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
    caplog.set_level(logging.INFO, logger="modeling.services.runner")
    start = threading.Barrier(2)
    outcomes: list[str] = []

    def worker(name: str) -> None:
        try:
            start.wait()
            outcomes.append(services.run_training_job(job, worker_host=name).worker_host)
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
    assert orphan.error.startswith("worker gpu0@box-a restarted while the job was running")
    assert elsewhere.status == JobStatus.RUNNING


def _database_url() -> str:
    db = connection.settings_dict
    if db["ENGINE"].endswith("sqlite3"):
        return f"sqlite:///{db['NAME']}"
    credentials = f"{quote(db['USER'])}:{quote(db['PASSWORD'])}"
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def test_a_killed_worker_process_leaves_its_job_failed_within_the_heartbeat_window(
    admin_client, admin_user, base_checkpoint, make_snapshot, empty_gpu_queue, tmp_path
):
    job = launch_sft(admin_user, base_checkpoint, make_snapshot("sft"), MANY_STEPS)
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "TEST_DATABASE_URL": _database_url(),
        "TEST_REDIS_URL": settings.CELERY_BROKER_URL,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "VEREDICTO_JOB_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "VEREDICTO_JOB_PROGRESS_SECONDS": "0.2",
    }
    log = tmp_path / "worker.log"
    name = f"killed-{uuid.uuid4().hex[:8]}@localhost"
    # Left `running` by an earlier process under the same name: the new one fails it at start.
    orphan = TrainingJob.objects.create(
        kind="sft",
        parent=base_checkpoint,
        snapshot=job.snapshot,
        config={},
        time_limit_seconds=600,
        status=JobStatus.RUNNING,
        worker_host=name,
        started_at=timezone.now() - timedelta(hours=1),
        heartbeat_at=timezone.now(),
    )
    command = [sys.executable, "-m", "celery", "-A", "config", "worker", "-Q", "gpu",
               "--pool", "solo", "-n", name, "--without-mingle", "--without-gossip",
               "--without-heartbeat", "-l", "INFO"]  # fmt: skip
    with log.open("wb") as output:
        worker = subprocess.Popen(
            command,
            env=env,
            cwd=Path(settings.BASE_DIR),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for(
            lambda: (
                TrainingJob.objects.filter(pk=job.pk, step__gte=1).exists()
                or worker.poll() is not None
            ),
            timeout=120,
            what="the subprocess worker to start training",
        )
        assert worker.poll() is None, log.read_text()[-3000:]
        assert job_status(job) == JobStatus.RUNNING
        assert job_status(orphan) == JobStatus.FAILED
        os.killpg(worker.pid, signal.SIGKILL)
        worker.wait(timeout=30)
        killed_at = time.monotonic()

        # The job page is what notices: each read fails jobs silent past the window.
        def failed_on_page() -> bool:
            admin_client.get(f"/jobs/{job.pk}/")
            return job_status(job) == JobStatus.FAILED

        wait_for(failed_on_page, timeout=STALE_SECONDS + 10, what="the stale check")
        noticed_after = time.monotonic() - killed_at
    finally:
        if worker.poll() is None:
            os.killpg(worker.pid, signal.SIGKILL)
        # The unacknowledged message would come back after the visibility timeout (12 h):
        # drop it so that a long-lived test Redis stays clean.
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("unacked", "unacked_index")

    job.refresh_from_db()
    assert job.error.startswith("worker stopped responding (no heartbeat since ")
    assert job.worker_host == name
    assert noticed_after <= STALE_SECONDS + 2 * HEARTBEAT_SECONDS + 2
    assert job.result is None


def test_generated_comparisons_become_pairwise_tasks_once(
    gpu_worker, admin_user, base_checkpoint, make_snapshot, labelled_project
):
    sft = services.run_training_job(
        services.job_launch(
            kind="sft",
            parent=base_checkpoint,
            snapshot=make_snapshot("sft"),
            config=FEW_STEPS,
            launched_by=admin_user,
            enqueue=False,
        )
    ).result
    items_before = Item.objects.filter(kind=TaskKind.PAIRWISE).count()
    # The oldest prompt is held out: the next round is trained on, so it must not get items.
    held_out = labelled_project.prompts.order_by("id").first()
    Prompt.objects.filter(pk=held_out.pk).update(split=Split.TEST)
    message = (sft.pk, labelled_project.pk, None, 3)
    options = {"batch": "b1", "max_new_tokens": 12, "temperature": 1.0, "seed": 1}

    outcome = generate_comparisons.delay(*message, **options).get(timeout=180)
    again = generate_comparisons.delay(*message, **options).get(timeout=180)  # redelivered

    assert outcome["items"] + outcome["skipped_empty"] + outcome["skipped_identical"] == 3
    assert outcome["items"] >= 1
    assert again["items"] == 0
    new_items = Item.objects.filter(kind=TaskKind.PAIRWISE).order_by("id")[items_before:]
    assert len(new_items) == outcome["items"]
    for item in new_items:
        first, second = item.ordered_completions()
        assert first.source == second.source == CompletionSource.CHECKPOINT
        assert (first.model_name, second.model_name) == (sft.display_name, "tiny")
        assert first.generation_params["checkpoint_id"] == sft.pk
        assert second.generation_params["checkpoint_id"] == base_checkpoint.pk
        assert first.generation_params["batch"] == "b1"
    assert Completion.objects.filter(generation_params__batch="b1").count() == 2 * len(new_items)
    assert held_out.pk not in {item.prompt_id for item in new_items}
    assert not Completion.objects.filter(prompt=held_out, generation_params__batch="b1").exists()
