"""A heartbeat for long work on a worker (training jobs, evaluation runs)."""

from __future__ import annotations

import logging
import threading

from django.db import DatabaseError, connections
from django.db.models import QuerySet
from django.utils import timezone

logger = logging.getLogger(__name__)


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
