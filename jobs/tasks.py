"""What every worker shares: its name, the orphan sweep when it starts, and the scheduled sweep.

`sweep` runs every VEREDICTO_JOB_SWEEP_SECONDS from Celery beat (config/celery.py's
beat_schedule; `make run` starts beat beside the worker), so a dead worker's row reads `failed`
within the heartbeat window whether or not anyone opens its page.
"""

from __future__ import annotations

import logging
import os
import shutil
import subprocess

from celery import shared_task
from celery.signals import worker_init, worker_shutdown
from django.conf import settings

from core.idempotency import idempotency_keys_purge
from jobs import services
from jobs.models import Worker

logger = logging.getLogger(__name__)

# This process's worker node name (`-n gpu0@%h`), recorded at worker start. A row stores it as
# its worker host so that the restarted worker recognises its own orphans; `request.hostname`
# is not reliable for this (outside the prefork fast path it is the bare machine name).
_worker_name = ""


def worker_name(request_hostname: str | None = None) -> str:
    """The name to record as a row's worker host."""
    return _worker_name or request_hostname or ""


@worker_init.connect
def fail_work_left_running(sender, **kwargs) -> None:
    """Remember the worker's name and fail the rows its previous process left running. That
    process is gone, so waiting for the heartbeat window would only delay the news; and the
    signal comes before the worker consumes anything, so nothing it runs now is taken for an
    orphan."""
    global _worker_name
    hostname = getattr(sender, "hostname", "")
    started = getattr(sender, "startup_time", None)
    if not hostname or started is None:
        return
    _worker_name = hostname
    try:
        failed = services.work_fail_orphaned(worker_host=hostname, started_before=started)
    except Exception:
        # The worker must start anyway; the scheduled sweep catches those rows later.
        logger.warning("Could not check for work left running by %s", hostname, exc_info=True)
        return
    if failed:
        logger.warning("%s: failed what its previous process left running: %s", hostname, failed)


def owned_devices() -> int:
    """Devices this worker may use, found without importing torch: the setting, else the GPUs
    nvidia-smi lists (CUDA_VISIBLE_DEVICES narrows them), else 1 (a CPU)."""
    if settings.VEREDICTO_WORKER_DEVICES:
        return settings.VEREDICTO_WORKER_DEVICES
    visible = os.environ.get("CUDA_VISIBLE_DEVICES")
    if visible is not None:
        return max(1, len([d for d in visible.split(",") if d.strip()]))
    if shutil.which("nvidia-smi"):
        try:
            listed = subprocess.run(
                ["nvidia-smi", "-L"], capture_output=True, text=True, timeout=10, check=True
            ).stdout
        except (OSError, subprocess.SubprocessError):
            return 1
        return max(1, sum(1 for line in listed.splitlines() if line.startswith("GPU ")))
    return 1


@worker_init.connect
def announce_worker(sender, **kwargs) -> None:
    """Record which queues this worker consumes and how many devices it owns (job launch reads
    it to refuse what no worker can run)."""
    hostname = getattr(sender, "hostname", "")
    if not hostname:
        return
    try:
        queues = sorted(sender.app.amqp.queues.consume_from or sender.app.amqp.queues)
        Worker.objects.update_or_create(
            name=hostname, defaults={"queues": queues, "devices": owned_devices()}
        )
    except Exception:
        logger.warning("Could not record worker %s", hostname, exc_info=True)


@worker_shutdown.connect
def forget_worker(sender, **kwargs) -> None:
    hostname = getattr(sender, "hostname", "")
    try:
        Worker.objects.filter(name=hostname).delete()
    except Exception:
        logger.warning("Could not forget worker %s", hostname, exc_info=True)


@shared_task(name="jobs.tasks.sweep", ignore_result=True, soft_time_limit=60, time_limit=120)
def sweep() -> dict[str, int]:
    idempotency_keys_purge()  # the API's expired keys: a cheap DELETE on an indexed column
    return services.work_sweep()
