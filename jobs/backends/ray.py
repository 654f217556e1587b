"""The Ray backend: the work runs as a Ray job on an existing cluster (VEREDICTO_RAY_ADDRESS,
e.g. http://head:8265), submitted through Ray's job submission API. Ray places it; the models
live on storage every host reads (VEREDICTO_MODELS_DIR, MEDIA_ROOT).

The entry point is the local backend's (`python -m jobs.entrypoint …`, under `accelerate launch`
for several devices, with that many GPUs asked of Ray). It writes progress, log lines and the
heartbeat to the database itself. The Celery task submits, polls, stops the Ray job on cancel or
at the time limit, and maps Ray's terminal states onto the row: SUCCEEDED → the entry point's own
outcome, STOPPED → cancelled, FAILED → failed with the end of the job's log.
"""

from __future__ import annotations

import logging
import shlex
import sys
import time
import uuid

from django.conf import settings

from jobs.backends import Outcome, entry_command, stop_reason
from jobs.backends.local import child_environment
from jobs.models import BackgroundWork

logger = logging.getLogger(__name__)

POLL_SECONDS = 1.0
# What a Ray job needs of the worker's environment; nothing host-specific (PATH, HOME) travels.
FORWARDED_PREFIXES = ("VEREDICTO_", "DJANGO_", "HF_", "TRANSFORMERS_", "CUDA_")
FORWARDED = {
    "DATABASE_URL", "TEST_DATABASE_URL", "REDIS_URL", "TEST_REDIS_URL", "SECRET_KEY",
    "SECRET_KEY_FILE", "DEBUG", "MEDIA_ROOT", "PYTHONPATH", "OMP_NUM_THREADS",
}  # fmt: skip


def _client():
    from ray.job_submission import JobSubmissionClient  # only Ray deployments install ray

    return JobSubmissionClient(settings.VEREDICTO_RAY_ADDRESS)


def ray_environment() -> dict[str, str]:
    env = child_environment()
    env.pop("VEREDICTO_SUPERVISOR_PID")  # the job outlives this worker: it settles itself
    return {
        key: value
        for key, value in env.items()
        if key in FORWARDED or key.startswith(FORWARDED_PREFIXES)
    }


def _submit(client, *, attempts: int = 30, **job) -> None:
    """Submit, waiting out a head that is up but whose job agent is not yet ("No available
    agent to submit job, please try again later"), as right after a cluster (re)starts."""
    for attempt in range(attempts):
        try:
            client.submit_job(**job)
            return
        except RuntimeError as exc:
            if "try again later" not in str(exc) or attempt == attempts - 1:
                raise
            time.sleep(1)


def run_on_ray(row: BackgroundWork) -> Outcome:
    model = type(row)
    client = _client()
    # Hosts run the same image: the worker's interpreter path is theirs too, unless configured.
    command = entry_command(row, python=settings.VEREDICTO_RAY_PYTHON or sys.executable)
    devices = row.launch_processes() if row.launch_accelerate_config() else 0
    submission_id = f"veredicto-{row._meta.model_name}-{row.pk}-{uuid.uuid4().hex[:8]}"
    _submit(
        client,
        entrypoint=shlex.join(command),
        submission_id=submission_id,
        runtime_env={"env_vars": ray_environment()},
        entrypoint_num_gpus=devices or None,
        metadata={"veredicto": row._meta.label, "id": str(row.pk)},
    )
    model.objects.filter(pk=row.pk).update(launch_id=submission_id)
    logger.info("%s: submitted Ray job %s", row, submission_id)
    deadline = time.monotonic() + row.time_limit_seconds
    why_stopping = ""
    ended_since: float | None = None
    while True:
        status = str(client.get_job_status(submission_id))
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        time.sleep(POLL_SECONDS)
        if why_stopping:
            continue
        why_stopping, ended_since = stop_reason(row, deadline, ended_since)
        if why_stopping:
            logger.warning("%s: stopping Ray job %s (%s)", row, submission_id, why_stopping)
            client.stop_job(submission_id)
    if why_stopping == "cancelled":
        return Outcome(ok=False, cancelled=True)
    if why_stopping == "time limit":
        return Outcome(ok=False, reason=f"time limit of {row.time_limit_seconds} s exceeded")
    if status == "SUCCEEDED" or why_stopping == "taken over":
        return Outcome(ok=True)
    if status == "STOPPED":
        return Outcome(ok=False, reason=f"Ray job {submission_id} was stopped outside Veredicto")
    logs = client.get_job_logs(submission_id).strip().splitlines()
    tail = " | ".join(line for line in logs[-5:] if line.strip())[-2000:]
    return Outcome(ok=False, reason=f"Ray job {submission_id} failed: {tail}")
