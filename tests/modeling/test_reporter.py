"""JobReporter (the trainers' ProgressReporter) and the heartbeat thread, against the real
database: throttled progress writes, thinned history, cancel and lost-claim answers."""

from __future__ import annotations

import itertools
import math
import time

import pytest
from django.utils import timezone

from jobs.services import Heartbeat
from modeling import services
from modeling.models import JobStatus, TrainingJob
from modeling.services.runner import HISTORY_POINTS, JobReporter
from tests.modeling.helpers import wait_for

pytestmark = pytest.mark.django_db


@pytest.fixture
def running_job(admin_user, base_checkpoint, make_snapshot):
    job = services.job_launch(
        kind="sft",
        parent=base_checkpoint,
        snapshot=make_snapshot("sft"),
        config={"max_steps": 10},
        launched_by=admin_user,
        enqueue=False,
    )
    TrainingJob.objects.filter(pk=job.pk).update(
        status=JobStatus.RUNNING, started_at=timezone.now(), heartbeat_at=timezone.now()
    )
    job.refresh_from_db()
    return job


def row(job) -> TrainingJob:
    return TrainingJob.objects.get(pk=job.pk)


def test_progress_is_written_at_most_every_interval_and_always_at_the_end(running_job):
    reporter = JobReporter(running_job, every=3600, deadline=None)
    reporter.report(step=1, total_steps=3, metrics={"loss": 2.0}, log_line="step 1/3")
    reporter.report(step=2, total_steps=3, metrics={"loss": 1.5}, log_line="step 2/3")
    assert (row(running_job).step, row(running_job).log_tail) == (1, "step 1/3")

    reporter.report(step=3, total_steps=3, metrics={"loss": 1.0}, log_line="step 3/3")

    job = row(running_job)
    assert (job.step, job.total_steps, job.metrics) == (3, 3, {"loss": 1.0})
    assert job.metric_history == [
        {"step": 1, "loss": 2.0},
        {"step": 2, "loss": 1.5},
        {"step": 3, "loss": 1.0},
    ]
    assert job.log_tail == "step 1/3\nstep 2/3\nstep 3/3"


def test_a_repeated_final_step_is_one_point(running_job):
    reporter = JobReporter(running_job, every=0, deadline=None)
    reporter.report(step=3, total_steps=3, metrics={"loss": 1.0})
    reporter.report(step=3, total_steps=3, metrics={"loss": 1.0, "eval_loss": 1.2})
    assert row(running_job).metric_history == [{"step": 3, "loss": 1.0, "eval_loss": 1.2}]


def test_a_long_history_is_thinned_evenly(running_job):
    reporter = JobReporter(running_job, every=3600, deadline=None)
    for step in range(1, 5001):
        reporter.report(step=step, total_steps=5000, metrics={"loss": 1 / step})
    history = row(running_job).metric_history
    steps = [point["step"] for point in history]
    assert len(history) <= HISTORY_POINTS
    assert steps[0] == 1
    assert len({b - a for a, b in itertools.pairwise(steps)}) == 1  # even spacing
    assert steps[-1] > 4900


def test_values_json_cannot_hold_are_dropped_not_fatal(running_job):
    reporter = JobReporter(running_job, every=0, deadline=None)
    reporter.report(
        step=1, total_steps=2, metrics={"loss": math.nan, "reward": math.inf, "kl": 0.5, "ok": True}
    )
    assert row(running_job).metrics == {"kl": 0.5}


def test_should_stop_answers_from_the_cancel_flag(running_job):
    reporter = JobReporter(running_job, every=0, deadline=None)
    assert not reporter.should_stop()
    TrainingJob.objects.filter(pk=running_job.pk).update(cancel_requested=True)
    assert reporter.should_stop()
    assert reporter.cancelled and not reporter.lost


def test_a_job_failed_by_someone_else_stops_and_is_left_alone(running_job):
    reporter = JobReporter(running_job, every=0, deadline=None)
    TrainingJob.objects.filter(pk=running_job.pk).update(
        status=JobStatus.FAILED, error="worker stopped responding"
    )
    assert reporter.should_stop()
    assert reporter.lost
    reporter.report(step=5, total_steps=10, metrics={"loss": 1.0})
    job = row(running_job)
    assert (job.status, job.step, job.error) == (JobStatus.FAILED, 0, "worker stopped responding")


def test_the_time_limit_stops_training(running_job):
    reporter = JobReporter(running_job, every=3600, deadline=time.monotonic() - 1)
    assert reporter.should_stop()
    assert reporter.timed_out


@pytest.mark.django_db(transaction=True)  # the heartbeat thread reads committed rows only
def test_the_heartbeat_thread_beats_while_a_step_is_slow_and_stops_after(running_job):
    first = row(running_job).heartbeat_at
    with Heartbeat(TrainingJob, running_job.pk, interval=0.1) as heartbeat:
        # One slow training step, no progress reports: the thread beats regardless.
        wait_for(lambda: row(running_job).heartbeat_at > first, timeout=10, what="a beat")
    beat = row(running_job).heartbeat_at
    assert not heartbeat._thread.is_alive()
    time.sleep(0.3)
    assert row(running_job).heartbeat_at == beat
