"""Fault drills: a real `celery worker` process is SIGKILLed while it runs one of each kind of
background work (training, evaluation, comparison generation, a playground reply, import,
snapshot), with a real `celery beat` scheduling the sweep. Nobody opens a page: every row must
end `failed` with a reason within the heartbeat window, and a redelivered message must not run
the work again.

The worker pauses right after each claim (VEREDICTO_FAULT_DRILL_PAUSE_SECONDS, allowed only
under DEBUG or tests) with its heartbeat beating, so "killed mid-run" holds for work of any size.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path
from urllib.parse import quote

import pytest
import redis
from celery.contrib.testing.worker import start_worker
from django.conf import settings
from django.db import connection

from config.celery import CeleryQueue, app
from evals.models import EvalResult, EvalRun
from evals.services import eval_run_request
from evals.tasks import run_eval
from feedback import tasks as feedback_tasks
from feedback.models import DataImport, DatasetSnapshot, Prompt
from feedback.services import snapshot_request
from feedback.services.imports import ImportOptions, data_import_create
from jobs.models import Status
from loop.comparisons import SamplingParams, comparisons_request
from loop.models import ComparisonBatch
from loop.tasks import generate_comparisons
from modeling import services as modeling_services
from modeling.models import PlaygroundTurn, TrainingJob
from modeling.tasks import playground_reply, train_job
from tests.factories import ProjectFactory
from tests.modeling.helpers import HEARTBEAT_SECONDS, STALE_SECONDS, wait_for

pytestmark = pytest.mark.django_db(transaction=True)

SWEEP_SECONDS = 0.5
MANY_STEPS = {"max_steps": 5000, "batch_size": 2, "learning_rate": 1e-3}


def _database_url() -> str:
    # The suite's PostgreSQL (this drill is not in the SQLite run: see the Makefile).
    db = connection.settings_dict
    credentials = f"{quote(db['USER'])}:{quote(db['PASSWORD'])}"
    return f"postgres://{credentials}@{db['HOST']}:{db['PORT']}/{db['NAME']}"


def _environment() -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.test_settings",
        "TEST_DATABASE_URL": _database_url(),
        "TEST_REDIS_URL": settings.CELERY_BROKER_URL,
        "MEDIA_ROOT": str(settings.MEDIA_ROOT),
        "VEREDICTO_JOB_HEARTBEAT_SECONDS": str(HEARTBEAT_SECONDS),
        "VEREDICTO_JOB_STALE_SECONDS": str(STALE_SECONDS),
        "VEREDICTO_JOB_SWEEP_SECONDS": str(SWEEP_SECONDS),
        "VEREDICTO_FAULT_DRILL_PAUSE_SECONDS": "120",
    }


def _start(command: list[str], log: Path) -> subprocess.Popen:
    with log.open("wb") as output:
        return subprocess.Popen(
            [sys.executable, "-m", "celery", "-A", "config", *command],
            env=_environment(),
            cwd=Path(settings.BASE_DIR),
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: one killpg takes all of it
        )


def _stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait(timeout=30)


@pytest.fixture
def queues_clean():
    def purge() -> None:
        with app.connection_for_write() as conn:
            for queue in CeleryQueue:
                conn.default_channel.queue_purge(queue.value)
        # Messages the killed worker held would come back after the visibility timeout (12 h).
        redis.Redis.from_url(settings.CELERY_BROKER_URL).delete("unacked", "unacked_index")

    purge()
    yield
    purge()


def _queue_one_of_each(admin_user, base_checkpoint, make_snapshot, labelled_project, tmp_path):
    """Rows of the six kinds, each queued as the app queues it."""
    other = modeling_services.checkpoint_register(
        name="tiny-again", storage_path=base_checkpoint.storage_path
    )
    job = modeling_services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config=MANY_STEPS,
        launched_by=admin_user,
    )
    run = eval_run_request(checkpoint=base_checkpoint, suite="perplexity", requested_by=admin_user)
    batch = comparisons_request(
        checkpoint=base_checkpoint,
        project=labelled_project,
        reference=other,
        n_prompts=3,
        sampling=SamplingParams(max_new_tokens=8),
        requested_by=admin_user,
    )
    turn = modeling_services.playground_turn_request(
        checkpoint=base_checkpoint,
        prompt="What is 2 plus 2?",
        sampling=SamplingParams(max_new_tokens=8),
        requested_by=admin_user,
    )
    target = ProjectFactory(name="Import target")
    upload = Path(settings.MEDIA_ROOT) / "uploads" / "drill.jsonl"
    upload.parent.mkdir(parents=True, exist_ok=True)
    upload.write_text("".join(json.dumps({"prompt": f"Question {i}?"}) + "\n" for i in range(5)))
    data_import = data_import_create(
        project=target,
        path=upload,
        original_name="drill.jsonl",
        options=ImportOptions(),
        user=admin_user,
    )
    feedback_tasks.run_import.delay(data_import.pk)
    snapshot = snapshot_request(
        project=labelled_project, kind="preference", name="drill", created_by=admin_user
    )
    feedback_tasks.build_snapshot.delay(snapshot.pk)
    return {
        "training job": (TrainingJob, job.pk, train_job),
        "evaluation run": (EvalRun, run.pk, run_eval),
        "comparison batch": (ComparisonBatch, batch.pk, generate_comparisons),
        "playground turn": (PlaygroundTurn, turn.pk, playground_reply),
        "import": (DataImport, data_import.pk, feedback_tasks.run_import),
        "snapshot": (DatasetSnapshot, snapshot.pk, feedback_tasks.build_snapshot),
    }, target


def _status(model, pk) -> str:
    return model.objects.values_list("status", flat=True).get(pk=pk)


def test_a_killed_worker_leaves_every_kind_of_work_failed_and_a_redelivery_runs_nothing(
    queues_clean,
    admin_user,
    base_checkpoint,
    make_snapshot,
    labelled_project,
    tmp_path,
):
    work, import_target = _queue_one_of_each(
        admin_user, base_checkpoint, make_snapshot, labelled_project, tmp_path
    )
    name = f"drill-{uuid.uuid4().hex[:8]}@localhost"
    beat = _start(
        ["beat", "-s", str(tmp_path / "beat-schedule"), "--pidfile=", "-l", "INFO"],
        tmp_path / "beat.log",
    )
    worker = _start(
        ["worker", "-Q", "default,gpu", "--pool", "threads", "--concurrency", "7", "-n", name,
         "--without-mingle", "--without-gossip", "--without-heartbeat", "-l", "INFO"],
        tmp_path / "worker.log",
    )  # fmt: skip
    try:
        wait_for(
            lambda: (
                all(_status(m, pk) == Status.RUNNING for m, pk, _ in work.values())
                or worker.poll() is not None
            ),
            timeout=120,
            what="the worker to claim one of each kind",
        )
        assert worker.poll() is None, (tmp_path / "worker.log").read_text()[-3000:]
        _stop(worker)
        killed_at = time.monotonic()

        # Only beat's schedule decides now, run by another worker: no page is read.
        with start_worker(
            app,
            pool="solo",
            queues=[CeleryQueue.DEFAULT.value],
            perform_ping_check=False,
            shutdown_timeout=30,
        ):
            wait_for(
                lambda: all(_status(m, pk) == Status.FAILED for m, pk, _ in work.values()),
                timeout=STALE_SECONDS + 30,
                what="the sweep to fail every row",
            )
            noticed_after = time.monotonic() - killed_at
    finally:
        _stop(worker)
        _stop(beat)

    for kind, (model, pk, _) in work.items():
        row = model.objects.get(pk=pk)
        assert row.error.startswith("worker stopped responding (no heartbeat since "), kind
        assert row.worker_host == name and row.finished_at is not None, kind
    window = STALE_SECONDS + SWEEP_SECONDS + 2 * HEARTBEAT_SECONDS + 3
    assert noticed_after <= window, f"{noticed_after:.1f} s > {window:.1f} s"

    # The same messages again, as Redis would redeliver them: each finds nothing to claim.
    with start_worker(
        app,
        pool="solo",
        queues=[CeleryQueue.DEFAULT.value, CeleryQueue.GPU.value],
        perform_ping_check=False,
        shutdown_timeout=30,
    ):
        for kind, (_, pk, task) in work.items():
            assert task.delay(pk).get(timeout=60) == Status.FAILED, kind
    job = TrainingJob.objects.get(pk=work["training job"][1])
    assert job.result is None and job.step == 0
    assert not EvalResult.objects.filter(run_id=work["evaluation run"][1]).exists()
    batch = ComparisonBatch.objects.get(pk=work["comparison batch"][1])
    assert batch.outcome == {}
    assert PlaygroundTurn.objects.get(pk=work["playground turn"][1]).reply == ""
    assert not Prompt.objects.filter(project=import_target).exists()
    snapshot = DatasetSnapshot.objects.get(pk=work["snapshot"][1])
    assert snapshot.directory == "" and not snapshot.content_hash
