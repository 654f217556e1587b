"""GPU work. Routed to the `gpu` queue (config/celery.py); each task takes an id, re-reads the
row, claims it and hands it to the deployment's backend (jobs.backends): the worker steers, the
training runs in its own process(es) and never in the worker.

Messages are acknowledged late, so a worker killed mid-job leaves its message for redelivery;
the job's claim makes that redelivery a no-op, and the scheduled sweep (jobs.tasks.sweep) fails
the job instead of leaving it `running` forever.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from jobs.backends import launch
from jobs.models import HARD_LIMIT_GRACE_SECONDS, BackgroundWork
from jobs.services import work_claim
from jobs.tasks import worker_name
from modeling import services
from modeling.models import AssistRun, PlaygroundTurn, TrainingJob

logger = logging.getLogger(__name__)

# Only a database that is briefly unreachable is worth retrying: before the claim nothing has
# happened yet, and after it the claim turns the retry into a no-op. Training errors are final
# and written to the row.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    bind=True,
    acks_late=True,
    # Defaults for messages sent without limits; job_launch sends the job's own.
    soft_time_limit=settings.VEREDICTO_JOB_TIME_LIMIT_SECONDS,
    time_limit=settings.VEREDICTO_JOB_TIME_LIMIT_SECONDS + HARD_LIMIT_GRACE_SECONDS,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=5,
)
def train_job(self, job_id: int) -> str:
    job = TrainingJob.objects.filter(pk=job_id).first()
    if job is None:
        logger.warning("Training job %s does not exist; dropping the message", job_id)
        return "missing"
    host = worker_name(self.request.hostname)
    backend = settings.VEREDICTO_JOB_BACKEND
    if not services.training_job_claim(job=job, worker_host=host, backend=backend):
        return TrainingJob.objects.get(pk=job_id).status
    # This worker only steers: the training runs in its own process group (or Ray job).
    return launch(TrainingJob.objects.get(pk=job_id)).status


@shared_task(
    bind=True,
    acks_late=True,
    soft_time_limit=PlaygroundTurn.time_limit_seconds,
    time_limit=PlaygroundTurn.time_limit_seconds + HARD_LIMIT_GRACE_SECONDS,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=5,
)
def playground_reply(self, turn_id: int) -> str:
    """One reply of the checkpoint page's playground (modeling.services.playground)."""
    return _claim_and_launch(PlaygroundTurn, turn_id, self.request.hostname)


@shared_task(
    bind=True,
    acks_late=True,
    soft_time_limit=AssistRun.time_limit_seconds,
    time_limit=AssistRun.time_limit_seconds + HARD_LIMIT_GRACE_SECONDS,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=5,
)
def assist_run(self, run_id: int) -> str:
    """Drafts or AI pre-votes for a project (modeling.services.assist)."""
    return _claim_and_launch(AssistRun, run_id, self.request.hostname)


def _claim_and_launch(model: type[BackgroundWork], pk: int, hostname: str) -> str:
    """Claim the row and hand it to the backend; a redelivered message finds nothing to claim."""
    if not model.objects.filter(pk=pk).exists():
        return "missing"
    host = worker_name(hostname)
    backend = settings.VEREDICTO_JOB_BACKEND
    if not work_claim(model, pk=pk, worker_host=host, backend=backend):
        return model.objects.get(pk=pk).status
    # As for training: the model is loaded in the launched process, never in this worker.
    return launch(model.objects.get(pk=pk)).status
