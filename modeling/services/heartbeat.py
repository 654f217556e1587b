"""A heartbeat for long work on a worker (training jobs, evaluation runs), and the sweep at worker
start that fails what the worker's previous process left running."""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from datetime import datetime

from django.db import DatabaseError, connections
from django.db.models import QuerySet
from django.utils import timezone

logger = logging.getLogger(__name__)

# This process's worker node name (`-n gpu0@%h`), recorded at worker start. A job or run stores
# it as its host so that the restarted worker recognises its own orphans; `request.hostname` is
# not reliable for this (outside the prefork fast path it is the bare machine name).
_worker_name = ""


def worker_name(request_hostname: str | None) -> str:
    """The name to record as a row's worker host."""
    return _worker_name or request_hostname or ""


def fail_left_running(sender, sweep: Callable[[str, datetime], int], what: str) -> None:
    """For a `worker_init` handler: remember the worker's name, and fail the rows (`what`) that
    its previous process left running, via `sweep(hostname, started_before)`. That process is
    gone, so waiting for the heartbeat window would only delay the news; and the signal comes
    before the worker consumes anything, so nothing it runs now can be taken for an orphan."""
    global _worker_name
    hostname = getattr(sender, "hostname", "")
    started = getattr(sender, "startup_time", None)
    if not hostname or started is None:
        return
    _worker_name = hostname
    try:
        failed = sweep(hostname, started)
    except Exception:
        # The worker must start anyway; the heartbeat check catches those rows later.
        logger.warning("Could not check for %s left running by %s", what, hostname, exc_info=True)
        return
    if failed:
        logger.warning("%s: failed %d %s its previous process left running", hostname, failed, what)


class RowHeartbeat:
    """A daemon thread touching `heartbeat_at` on the row(s) of `rows` every `interval` seconds,
    so one long step never looks like a dead worker. `rows` should be filtered on the running
    status: once someone else decides the row's fate, the beats stop changing it."""

    def __init__(self, rows: QuerySet, *, interval: float, name: str):
        self.rows = rows
        self.interval = interval
        self._stopped = threading.Event()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)

    def __enter__(self) -> RowHeartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc_info) -> None:
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
