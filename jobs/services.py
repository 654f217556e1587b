"""The background-work lifecycle (jobs.models) as plain functions over any `BackgroundWork` model.

A worker runs a row like this (modeling.services.runner, evals.services.worker, …):

    if not work_claim(Model, pk=pk, worker_host=host):
        return                       # a redelivered message: someone already has it
    with Heartbeat(Model, pk):
        ...                          # the work; progress writes may beat too
    work_finish(Model, pk=pk, status=Status.SUCCEEDED)

Every write after the claim is guarded by `status=running`: once someone else has decided the
row's fate (the sweep, a cancel), the worker's late writes change nothing. `work_sweep` runs on a
schedule (Celery beat, jobs.tasks.sweep) and fails rows whose worker went silent or overran the
hard time limit; `work_fail_orphaned` runs when a worker starts and fails what its previous
process left running.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from contextvars import ContextVar
from datetime import datetime, timedelta
from typing import Any

from django.apps import apps
from django.conf import settings
from django.core.exceptions import ValidationError
from django.db import DatabaseError, connections, transaction
from django.utils import timezone
from django.utils.module_loading import import_string

from jobs.models import BackgroundWork, Status

logger = logging.getLogger(__name__)

Model = type[BackgroundWork]

# A run is failed for overrunning only this long after its hard limit: the worker's own limit
# (Celery's time_limit, the runner's deadline) should have ended it first, with a better message.
OVERRUN_GRACE_SECONDS = 300


# --- sending the work --------------------------------------------------------------------------

# A row committed without its message waits this long before the sweep sends it: the commit's
# own send may still be on its way.
RESEND_AFTER_SECONDS = 10


def work_enqueue(row: BackgroundWork) -> None:
    """Send the row's message once the row is committed (a worker must be able to read it).
    With the broker down the row stays queued, its `enqueued_at` unset, and the sweep sends it
    when the broker is back: nothing is lost, and the request that created it still succeeds."""
    transaction.on_commit(lambda: work_send(type(row), pk=row.pk))


def celery_app():
    """The project's Celery app, named in settings as ROOT_URLCONF names the urls (jobs sits
    below config and does not import it; `celery.current_app` is whichever app was made last)."""
    return import_string(settings.VEREDICTO_CELERY_APP)


_SENDS_HELD: ContextVar[bool] = ContextVar("veredicto_sends_held", default=False)


@contextlib.contextmanager
def sends_held() -> Iterator[None]:
    """Inside, queued work's messages are not sent: the rows stay queued, for the caller to run
    in its own process (the demo loop runs its evaluations so) or for the outbox sweep."""
    token = _SENDS_HELD.set(True)
    try:
        yield
    finally:
        _SENDS_HELD.reset(token)


def work_send(model: Model, *, pk: int) -> bool:
    if _SENDS_HELD.get():
        return False
    row = model.objects.filter(pk=pk, status=Status.QUEUED).first()
    if row is None:
        return False
    if not task_send(row.task_name, args=[pk], **row.task_options()):
        # task_send has logged the broker's error: one warning per failed send.
        logger.info("%s: the sweep will resend it", row)
        return False
    model.objects.filter(pk=pk, enqueued_at__isnull=True).update(enqueued_at=timezone.now())
    return True


def task_send(name: str, *, args: list | None = None, **options: Any) -> bool:
    """Send the task `name` without waiting for its result; False (logged) when the broker is
    away, for the caller's own retry (the outbox sweep, a beat schedule) to make good."""
    app = celery_app()
    task = app.tasks.get(name)  # its apply_async honours task_always_eager (the demo)
    if task is None:
        # Task modules are autodiscovered when a worker starts; a web or command process has
        # not imported them yet. Without them the demo's eager mode is ignored (send_task always
        # goes to the broker) and, with no Redis, each send retried for 20 s.
        app.loader.import_default_modules()
        task = app.tasks.get(name)
    # Nobody waits on the task's result. Asking for one also subscribes to the result backend
    # before sending, which with Redis down retried for 20 s per send.
    options = {"ignore_result": True, **options}
    try:
        if task is not None:
            task.apply_async(args=args or [], **options)
        else:
            app.send_task(name, args=args or [], **options)
    except Exception as exc:  # kombu's OperationalError, redis-py's errors: the broker is away
        logger.warning("%s: could not reach the task queue (%s)", name, exc)
        return False
    return True


# --- the worker's side -------------------------------------------------------------------------


def default_worker_host() -> str:
    return f"{socket.gethostname()}:{os.getpid()}"


def work_claim(model: Model, *, pk: int, worker_host: str = "", **fields: Any) -> bool:
    """queued → running for exactly one caller; False when the row was not queued any more."""
    now = timezone.now()
    claimed = model.objects.filter(pk=pk, status=Status.QUEUED).update(
        status=Status.RUNNING,
        worker_host=(worker_host or default_worker_host())[:255],
        started_at=now,
        heartbeat_at=now,
        **fields,
    )
    if not claimed:
        logger.info("%s %s was not queued any more (a repeated message?)", _label(model), pk)
    return bool(claimed)


def work_finish(model: Model, *, pk: int, status: Status, error: str = "", **fields: Any) -> bool:
    """running → `status`, unless someone else already decided the row's fate."""
    return bool(
        model.objects.filter(pk=pk, status=Status.RUNNING).update(
            status=status, finished_at=timezone.now(), error=error, **fields
        )
    )


def failure_reason(exc: BaseException) -> str:
    """What a failed row says: a ValidationError's own words, anything else with its type."""
    if isinstance(exc, ValidationError):
        return "; ".join(exc.messages)
    return f"{type(exc).__name__}: {exc}"


class Heartbeat:
    """A daemon thread touching the running row's `heartbeat_at` every `interval` seconds
    (VEREDICTO_JOB_HEARTBEAT_SECONDS), so one long step never looks like a dead worker."""

    def __init__(self, model: Model, pk: int, *, interval: float | None = None):
        self.rows = model.objects.filter(pk=pk, status=Status.RUNNING)
        self.interval = interval or settings.VEREDICTO_JOB_HEARTBEAT_SECONDS
        self._stopped = threading.Event()
        name = f"heartbeat-{_label(model)}-{pk}"
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> Heartbeat:
        self._thread.start()
        if settings.VEREDICTO_FAULT_DRILL_PAUSE_SECONDS:
            # Fault drills (tests/jobs/test_worker_faults.py) kill the worker while it runs: a
            # pause right after the claim makes "while it runs" certain for work of any size.
            time.sleep(settings.VEREDICTO_FAULT_DRILL_PAUSE_SECONDS)
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._stopped.set()
        self._thread.join(timeout=self.interval + 10)

    def _run(self) -> None:
        try:
            while not self._stopped.wait(self.interval):
                try:
                    self.rows.update(heartbeat_at=timezone.now())
                except DatabaseError:
                    # A blip in the database is not a dead worker: try again next beat.
                    logger.warning("Heartbeat %s failed", self._thread.name, exc_info=True)
        finally:
            connections.close_all()  # this thread's connection only


# --- dead and overrunning workers --------------------------------------------------------------


def background_models() -> list[Model]:
    """Every installed model with this lifecycle; the apps that own them register nothing."""
    return [m for m in apps.get_models() if issubclass(m, BackgroundWork)]


def _when(moment: datetime | None) -> str:
    return moment.isoformat(timespec="seconds") if moment else "the start"


def _fail_each(model: Model, rows, *, reason: Callable[[Any], str | None], now: datetime) -> int:
    """Fail each running row for which `reason(row)` gives a reason, guarded by the heartbeat we
    read: a row that beat in between (or finished) is left alone."""
    failed = 0
    for row in rows.filter(status=Status.RUNNING):
        why = reason(row)
        if why is None:
            continue
        failed += model.objects.filter(
            pk=row.pk, status=Status.RUNNING, heartbeat_at=row.heartbeat_at
        ).update(status=Status.FAILED, finished_at=now, error=why)
    if failed:
        logger.warning("Failed %d %s: %s", failed, _label(model, plural=True), why)
    return failed


def _limit(row: BackgroundWork) -> int:
    return int(row.time_limit_seconds)


def work_sweep(*, now: datetime | None = None) -> dict[str, int]:
    """Fail running rows whose worker has been silent for VEREDICTO_JOB_STALE_SECONDS, or that
    overran their hard time limit. Returns {model label: rows failed} for the kinds it touched.
    One indexed query per kind when nothing is wrong."""
    now = now or timezone.now()
    cutoff = now - timedelta(seconds=settings.VEREDICTO_JOB_STALE_SECONDS)
    counts: dict[str, int] = {}

    def reason(row: BackgroundWork) -> str | None:
        if row.heartbeat_at is None or row.heartbeat_at < cutoff:
            return f"worker stopped responding (no heartbeat since {_when(row.heartbeat_at)})"
        deadline = timedelta(seconds=_limit(row) + OVERRUN_GRACE_SECONDS)
        if row.started_at is not None and now - row.started_at > deadline:
            return f"time limit of {_limit(row)} s exceeded"
        return None

    for model in background_models():
        _resend_undelivered(model, now=now)
        fields = ["pk", "heartbeat_at", "started_at"]
        if any(f.name == "time_limit_seconds" for f in model._meta.concrete_fields):
            fields.append("time_limit_seconds")
        running = model.objects.filter(status=Status.RUNNING).only(*fields)
        if failed := _fail_each(model, running, reason=reason, now=now):
            counts[model._meta.label] = failed
    return counts


def _resend_undelivered(model: Model, *, now: datetime) -> int:
    """The outbox: queued rows whose message the broker never accepted are sent again."""
    waiting = model.objects.filter(status=Status.QUEUED, enqueued_at__isnull=True)
    if any(f.name == "created_at" for f in model._meta.concrete_fields):
        waiting = waiting.filter(created_at__lt=now - timedelta(seconds=RESEND_AFTER_SECONDS))
    sent = sum(work_send(model, pk=pk) for pk in waiting.values_list("pk", flat=True)[:100])
    if sent:
        logger.warning("Resent %d %s the broker had missed", sent, _label(model, plural=True))
    return sent


def work_fail_orphaned(*, worker_host: str, started_before: datetime) -> dict[str, int]:
    """A worker that (re)starts is running nothing yet: rows it left `running` died with its
    previous process."""
    counts: dict[str, int] = {}
    for model in background_models():
        orphans = model.objects.filter(worker_host=worker_host, started_at__lt=started_before).only(
            "pk", "heartbeat_at", "started_at"
        )
        failed = _fail_each(
            model,
            orphans,
            reason=lambda row: (
                f"worker {worker_host} restarted during the run "
                f"(last heartbeat {_when(row.heartbeat_at)})"
            ),
            now=timezone.now(),
        )
        if failed:
            counts[model._meta.label] = failed
    return counts


def _label(model: Model, *, plural: bool = False) -> str:
    meta = model._meta
    return str(meta.verbose_name_plural if plural else meta.verbose_name)
