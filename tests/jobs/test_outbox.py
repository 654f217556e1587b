"""The outbox: work committed while the broker is down stays queued, and the scheduled sweep
sends its message once the broker answers again; nothing is lost, nothing runs twice."""

from __future__ import annotations

from datetime import timedelta

import pytest
from django.utils import timezone
from kombu.exceptions import OperationalError

from config.celery import app
from evals.services import eval_run_request
from feedback.services import snapshot_request
from jobs.models import Status
from jobs.services import RESEND_AFTER_SECONDS, work_enqueue, work_sweep
from loop.comparisons import comparisons_request
from modeling import services
from tests.modeling.helpers import queued_messages, queued_tasks

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def empty_default_queue():
    yield
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge("default")


@pytest.fixture
def broker_down(monkeypatch):
    """Every send refused as redis-py refuses it with Redis stopped (fault injection at the one
    place messages leave: the Celery app)."""

    def refuse(*args, **kwargs):
        raise OperationalError("Error 111 connecting to 127.0.0.1:6379. Connection refused.")

    monkeypatch.setattr(app, "send_task", refuse)
    return monkeypatch


def test_work_created_while_the_broker_is_down_is_sent_by_the_sweep_once_it_is_back(
    broker_down, admin_user, base_checkpoint, make_snapshot, labelled_project, empty_gpu_queue
):
    other = services.checkpoint_register(name="tiny-b", storage_path=base_checkpoint.storage_path)
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={"max_steps": 1},
        launched_by=admin_user,
    )  # no 500: the request that made it succeeds
    run = eval_run_request(checkpoint=base_checkpoint, suite="perplexity", requested_by=admin_user)
    batch = comparisons_request(
        checkpoint=base_checkpoint,
        project=labelled_project,
        reference=other,
        n_prompts=2,
        requested_by=admin_user,
    )
    snapshot = snapshot_request(project=labelled_project, kind="sft", name="s", created_by=None)
    work_enqueue(snapshot)  # outside a transaction: sent at once, refused at once
    rows = [job, run, batch, snapshot]
    for row in rows:
        row.refresh_from_db()
        assert row.status == Status.QUEUED and row.enqueued_at is None, row

    broker_down.undo()  # the broker answers again
    assert work_sweep() == {} and queued_messages() == 0  # too young: its own send may be late

    later = timezone.now() + timedelta(seconds=RESEND_AFTER_SECONDS + 1)
    work_sweep(now=later)
    work_sweep(now=later)  # once each: the second finds them delivered

    for row in rows:
        row.refresh_from_db()
        assert row.status == Status.QUEUED and row.enqueued_at is not None, row
    assert sorted(queued_tasks()) == [
        "evals.tasks.run_eval",
        "loop.tasks.generate_comparisons",
        "modeling.tasks.train_job",
    ]
    assert queued_tasks("default") == ["feedback.tasks.build_snapshot"]


def test_work_queued_while_sends_are_held_stays_queued_for_its_caller_to_run(
    labelled_project, empty_gpu_queue
):
    """The demo loop holds sends and runs its evaluations itself: no message leaves, the row
    stays queued and unsent (the outbox would send it later if nobody ran it)."""
    from jobs.services import sends_held

    with sends_held():
        snapshot = snapshot_request(
            project=labelled_project, kind="sft", name="held", created_by=None
        )
        work_enqueue(snapshot)
    snapshot.refresh_from_db()
    assert snapshot.status == Status.QUEUED and snapshot.enqueued_at is None
    assert queued_messages("default") == 0
    work_enqueue(snapshot)  # held no longer: sent
    snapshot.refresh_from_db()
    assert snapshot.enqueued_at is not None and queued_messages("default") == 1
