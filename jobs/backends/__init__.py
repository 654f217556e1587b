"""Where launched background work runs. Celery only steers: a worker claims a row, hands it to
the deployment's backend (VEREDICTO_JOB_BACKEND), and settles the row if the work's own process
could not.

- local (default): a child process group on this host (jobs/backends/local.py), one process, or
  N under `accelerate launch` for a multi-device job.
- ray: a Ray job on an existing cluster (jobs/backends/ray.py, VEREDICTO_RAY_ADDRESS).

Both run the same entry point, `python -m jobs.entrypoint <model> <id>` (jobs/entrypoint.py).
"""

from __future__ import annotations

import logging
import socket
import sys
import time
from dataclasses import dataclass

from celery.exceptions import SoftTimeLimitExceeded
from django.conf import settings

from jobs.models import BackgroundWork, Status
from jobs.services import failure_reason, work_finish

logger = logging.getLogger(__name__)

BACKENDS = ("local", "ray")


@dataclass(frozen=True)
class Outcome:
    """How the launched work ended, as far as the launching worker can tell."""

    ok: bool  # the process (or Ray job) ended cleanly
    reason: str = ""  # why not, in words
    cancelled: bool = False  # the user asked it to stop and it was stopped


def stop_reason(
    row: BackgroundWork, deadline: float, ended_since: float | None
) -> tuple[str, float | None]:
    """Whether to stop the work now, and since when its row has been ended. A row that is no
    longer running was usually ended by the work itself, which still has things to do after it
    (announce the checkpoint, which schedules its evaluations): it gets
    VEREDICTO_JOB_EXIT_GRACE_SECONDS to exit by itself before it is stopped as taken over."""
    current = type(row).objects.filter(pk=row.pk).first()
    if current is None or current.status != Status.RUNNING:
        ended_since = ended_since if ended_since is not None else time.monotonic()
        if time.monotonic() - ended_since > settings.VEREDICTO_JOB_EXIT_GRACE_SECONDS:
            return "taken over", ended_since  # the sweep (or a delete) decided first
        return "", ended_since
    if current.stop_requested():
        return "cancelled", None
    if time.monotonic() > deadline:
        return "time limit", None
    return "", None


def entry_command(row: BackgroundWork, *, python: str = sys.executable) -> list[str]:
    """The command that runs `row` in its own process(es): N processes under accelerate when the
    row asks for several."""
    target = ["-m", "jobs.entrypoint", row._meta.label, str(row.pk)]
    config = row.launch_accelerate_config()
    if config is None:
        return [python, *target]
    return [
        python, "-m", "accelerate.commands.launch",
        "--config_file", str(config),
        "--num_processes", str(row.launch_processes()),
        "--main_process_port", str(free_port()),
        *target,
    ]  # fmt: skip


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def launch(row: BackgroundWork) -> BackgroundWork:
    """Run a claimed row on the deployment's backend and settle it. Never raises for the work's
    own failure: the reason is written to the row."""
    model = type(row)
    try:
        if settings.VEREDICTO_JOB_BACKEND == "ray":
            from jobs.backends.ray import run_on_ray as run
        else:
            from jobs.backends.local import run_locally as run
        outcome = run(row)
    except SoftTimeLimitExceeded:
        outcome = Outcome(ok=False, reason=f"time limit of {row.time_limit_seconds} s exceeded")
    except Exception as exc:
        logger.exception("Launching %s failed", row)
        outcome = Outcome(ok=False, reason=f"could not launch: {failure_reason(exc)}")
    settle(row, outcome)
    return model.objects.get(pk=row.pk)


def settle(row: BackgroundWork, outcome: Outcome) -> None:
    """The work writes its own outcome; a row still `running` after its process ended did not
    get to (killed, crashed, cancelled mid-step), and is finished here with the reason."""
    model = type(row)
    if outcome.cancelled:
        work_finish(model, pk=row.pk, status=Status.CANCELLED)
    elif not outcome.ok:
        work_finish(model, pk=row.pk, status=Status.FAILED, error=outcome.reason)
    elif work_finish(
        model, pk=row.pk, status=Status.FAILED, error="the work ended without writing its outcome"
    ):
        logger.error("%s ended cleanly but left its row running", row)
