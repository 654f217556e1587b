"""Helpers shared by the training tests (fixtures live in conftest.py)."""

from __future__ import annotations

import json
import time
from collections.abc import Callable

import redis
from django.conf import settings

from config.celery import CeleryQueue, app
from modeling.models import JobStatus, TrainingJob

# Shrunk for tests (settings are 10 s and 60 s): the dead-worker test then takes seconds.
HEARTBEAT_SECONDS = 0.25
STALE_SECONDS = 3.0


def queued_messages(queue: str = CeleryQueue.GPU) -> int:
    """Messages waiting in a queue of the test Redis (kombu keeps one list per priority step)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return sum(client.llen(key) for key in client.scan_iter(match=f"{queue}*"))


def queued_tasks(queue: str = CeleryQueue.GPU) -> list[str]:
    """Names of the tasks waiting in a queue (kombu stores each message as JSON with headers)."""
    client = redis.Redis.from_url(settings.CELERY_BROKER_URL)
    return [
        json.loads(raw)["headers"]["task"]
        for key in client.scan_iter(match=f"{queue}*")
        for raw in client.lrange(key, 0, -1)
    ]


def purge_gpu_queue() -> None:
    with app.connection_for_write() as connection:
        connection.default_channel.queue_purge(CeleryQueue.GPU.value)


def wait_for(predicate: Callable[[], object], *, timeout: float = 120, what: str = "") -> object:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise AssertionError(f"timed out after {timeout} s waiting for {what or predicate}")


def job_status(job: TrainingJob) -> str:
    return TrainingJob.objects.values_list("status", flat=True).get(pk=job.pk)


def wait_until_finished(job: TrainingJob, timeout: float = 180) -> TrainingJob:
    finished = (JobStatus.SUCCEEDED, JobStatus.FAILED, JobStatus.CANCELLED)
    wait_for(lambda: job_status(job) in finished, timeout=timeout, what=f"{job} to finish")
    job.refresh_from_db()
    return job
