"""The local backend: the work runs as a child process group of the Celery worker.

The worker process itself never imports torch or touches a GPU: it starts the entry point in a
new session (its own process group), then watches the row and the group until the group ends.

- Cancel (the row's stop flag) sends SIGTERM to the whole group, SIGKILL after
  VEREDICTO_JOB_KILL_GRACE_SECONDS. The hard time limit does the same.
- If the row ends while the group runs (the work wrote its own outcome and is finishing up, or
  the sweep decided first), the group gets VEREDICTO_JOB_EXIT_GRACE_SECONDS to exit, then is
  stopped: the row is no longer its own.
- If the worker dies, its children follow: the direct child has PR_SET_PDEATHSIG=SIGKILL, and
  every process of the entry point exits when the worker's pid, or its own parent, disappears
  (torchrun starts ranks in sessions of their own, out of the group's reach).
- When the group has ended, nothing of it is left: the group gets a final SIGKILL.
"""

from __future__ import annotations

import contextlib
import ctypes
import logging
import os
import signal
import subprocess
import tempfile
import time
from collections import deque
from pathlib import Path

from django.conf import settings
from django.db import connection

from jobs.backends import Outcome, entry_command, stop_reason
from jobs.models import BackgroundWork

logger = logging.getLogger(__name__)

POLL_SECONDS = 0.5
PR_SET_PDEATHSIG = 1


def _die_with_parent() -> None:
    # Runs in the child between fork and exec: if the worker is killed, so is the launcher.
    with contextlib.suppress(OSError, AttributeError):
        ctypes.CDLL("libc.so.6", use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)


def child_environment() -> dict[str, str]:
    """The worker's environment plus what the child must share with it exactly: the database
    this process uses (tests rename it), where files go, and the worker's pid to watch."""
    env = dict(os.environ)
    env["VEREDICTO_DATABASE_NAME"] = str(connection.settings_dict["NAME"])
    env["MEDIA_ROOT"] = str(settings.MEDIA_ROOT)
    env["VEREDICTO_MODELS_DIR"] = str(settings.VEREDICTO_MODELS_DIR)
    env["VEREDICTO_JOB_HEARTBEAT_SECONDS"] = str(settings.VEREDICTO_JOB_HEARTBEAT_SECONDS)
    env["VEREDICTO_JOB_PROGRESS_SECONDS"] = str(settings.VEREDICTO_JOB_PROGRESS_SECONDS)
    env["VEREDICTO_SUPERVISOR_PID"] = str(os.getpid())
    env.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")
    env["PYTHONPATH"] = os.pathsep.join(
        [str(settings.BASE_DIR), *filter(None, [env.get("PYTHONPATH")])]
    )
    return env


def descendants(pid: int) -> set[int]:
    """Every live process below `pid`, found through /proc. torchrun (under accelerate) starts
    each rank in a session of its own, so the launcher's process group does not reach them."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            with contextlib.suppress(OSError, ValueError, IndexError):
                stat = (entry / "stat").read_text()
                parent = int(stat[stat.rindex(")") + 2 :].split()[1])
                children.setdefault(parent, []).append(int(entry.name))
    found, todo = set(), [pid]
    while todo:
        for child in children.get(todo.pop(), []):
            if child not in found:
                found.add(child)
                todo.append(child)
    return found


def signal_group(pgid: int, signum: int) -> None:
    """The launcher's process group and everything below it, ranks in their own sessions too."""
    for pid in descendants(pgid):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, signum)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, signum)


def run_locally(row: BackgroundWork) -> Outcome:
    model = type(row)
    with tempfile.TemporaryDirectory(prefix="veredicto-run-") as scratch:
        log = Path(scratch) / "output.log"
        with log.open("wb") as output:
            child = subprocess.Popen(
                entry_command(row),
                cwd=settings.BASE_DIR,
                env=child_environment(),
                stdin=subprocess.DEVNULL,
                stdout=output,
                stderr=subprocess.STDOUT,
                start_new_session=True,
                preexec_fn=_die_with_parent,
            )
        logger.info("%s: started process group %s: %s", row, child.pid, child.args)
        model.objects.filter(pk=row.pk).update(launch_id=str(child.pid))  # its process group
        try:
            return _supervise(row, child, log)
        finally:
            # Ranks outliving the launcher, or a launcher we stopped: nothing may keep a device.
            signal_group(child.pid, signal.SIGKILL)
            child.wait()


def _supervise(row: BackgroundWork, child: subprocess.Popen, log: Path) -> Outcome:
    deadline = time.monotonic() + row.time_limit_seconds
    stopping_since: float | None = None
    ended_since: float | None = None
    why_stopping = ""
    while (code := child.poll()) is None:
        time.sleep(POLL_SECONDS)
        if stopping_since is None:
            why_stopping, ended_since = stop_reason(row, deadline, ended_since)
            if why_stopping:
                logger.warning("%s: stopping its process group (%s)", row, why_stopping)
                signal_group(child.pid, signal.SIGTERM)
                stopping_since = time.monotonic()
        elif time.monotonic() - stopping_since > settings.VEREDICTO_JOB_KILL_GRACE_SECONDS:
            signal_group(child.pid, signal.SIGKILL)
    if why_stopping == "cancelled":
        return Outcome(ok=False, cancelled=True)
    if why_stopping == "time limit":
        return Outcome(ok=False, reason=f"time limit of {row.time_limit_seconds} s exceeded")
    if why_stopping == "taken over":
        return Outcome(ok=True)
    if code == 0:
        return Outcome(ok=True)
    return Outcome(ok=False, reason=f"{_exit_description(code)}: {last_lines(log)}")


def _exit_description(code: int) -> str:
    if code < 0:
        return f"the process was killed by {signal.Signals(-code).name}"
    return f"the process exited with status {code}"


def last_lines(log: Path, count: int = 5, width: int = 2000) -> str:
    """The end of what the process printed: usually the exception that ended it."""
    try:
        with log.open("r", errors="replace") as lines:
            tail = deque((line.rstrip() for line in lines if line.strip()), maxlen=count)
    except OSError:
        return ""
    return " | ".join(tail)[-width:]
