"""A real broker outage while work is created: the Celery app is pointed at a Redis of this
test's own, which is stopped while an admin asks for a snapshot through the API and started again
afterwards. The request succeeds, the row waits in the outbox, the scheduled sweep sends it once
Redis answers, and a real worker builds it. No fake broker and no mocks."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import kombu.pools
import pytest
from celery.contrib.testing.worker import start_worker
from django.test import Client
from django.utils import timezone

from config import devservices
from config.celery import CeleryQueue, app
from core.tokens import token_create
from feedback.models import DatasetSnapshot
from jobs.models import Status
from jobs.services import RESEND_AFTER_SECONDS, work_sweep
from tests.factories import ProjectFactory
from tests.modeling.helpers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


class OwnBroker:
    def __init__(self, workdir: Path) -> None:
        self.url = f"redis://127.0.0.1:{devservices._free_port()}/0"
        self.workdir = workdir
        self.server = None

    def start(self) -> None:
        options = ("--save", "", "--appendonly", "no")
        self.server = devservices.start_redis(self.url, self.workdir, *options, temporary=False)

    def stop(self) -> None:
        if self.server:
            devservices.stop_servers([self.server])
            self.server = None


def _use_broker(url: str) -> None:
    """The broker and the result backend on `url`: one Redis, as in production."""
    app.conf.broker_url = url
    app.conf.result_backend = url
    app._local.__dict__.pop("backend", None)  # the app's backend is made once per thread
    # Celery's connection pool is kombu's process-wide one, keyed by broker address: closing only
    # the app's would leave a closed pool registered for the address that is restored afterwards
    # ("Acquire on closed pool" in every later test). Reset the registry, then drop the app's refs.
    kombu.pools.reset()
    app._pool = None
    app.amqp._producer_pool = None


@pytest.fixture
def own_broker(tmp_path) -> Iterator[OwnBroker]:
    broker = OwnBroker(tmp_path)
    broker.start()
    previous = app.conf.broker_url
    assert app.conf.result_backend == previous  # _use_broker restores both to it
    _use_broker(broker.url)
    try:
        yield broker
    finally:
        broker.stop()
        _use_broker(previous)


def test_a_snapshot_asked_for_while_redis_is_down_is_built_once_it_is_back(
    own_broker, admin_user, tmp_path, settings
):
    settings.MEDIA_ROOT = tmp_path / "media"
    project = ProjectFactory()
    _, key = token_create(user=admin_user, name="ci")
    api = Client(headers={"Authorization": f"Bearer {key}"})
    own_broker.stop()

    started = time.monotonic()
    response = api.post(
        f"/api/projects/{project.pk}/snapshots",
        {"kind": "prompts", "name": "during the outage"},
        content_type="application/json",
    )
    assert response.status_code == 202, response.content[:500]  # not a 500, nothing lost
    # Nor a wait: the send gives up at once (it waited 19 s on the result backend's retries).
    assert time.monotonic() - started < 5
    snapshot = DatasetSnapshot.objects.get()
    assert snapshot.status == Status.QUEUED and snapshot.enqueued_at is None

    own_broker.start()  # the same address: Redis is back
    # The sweep resends it. Before the worker starts: the sweep's clock is moved on, and a row
    # the worker claimed during the sweep would look silent to it.
    work_sweep(now=timezone.now() + timedelta(seconds=RESEND_AFTER_SECONDS + 1))
    with start_worker(
        app, pool="solo", queues=[CeleryQueue.DEFAULT.value], perform_ping_check=False
    ):
        wait_for(
            lambda: DatasetSnapshot.objects.get(pk=snapshot.pk).is_finished,
            timeout=60,
            what="the snapshot to be built",
        )
    snapshot.refresh_from_db()
    assert snapshot.status == Status.SUCCEEDED and snapshot.enqueued_at is not None
    assert DatasetSnapshot.objects.count() == 1
