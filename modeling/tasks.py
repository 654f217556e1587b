"""GPU work. Routed to the `gpu` queue (config/celery.py); each task takes ids, re-reads the rows
and calls a plain service function that tests can call directly.

Messages are acknowledged late, so a worker killed mid-job leaves its message for redelivery;
the job's claim makes that redelivery a no-op, and the heartbeat check fails the job instead of
leaving it `running` forever.
"""

from __future__ import annotations

import logging

from celery import shared_task
from celery.signals import worker_init
from django.conf import settings
from django.db import InterfaceError, OperationalError

from feedback.models import Project
from modeling import services
from modeling.models import Checkpoint, TrainingJob
from modeling.services.heartbeat import fail_left_running, worker_name

logger = logging.getLogger(__name__)

# Only a database that is briefly unreachable is worth retrying: before the claim nothing has
# happened yet, and after it the claim turns the retry into a no-op. Training errors are final
# and written to the row.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
GENERATION_TIME_LIMIT = 2 * 3600


@shared_task(
    bind=True,
    acks_late=True,
    # Defaults for messages sent without limits; job_launch sends the job's own.
    soft_time_limit=settings.VEREDICTO_JOB_TIME_LIMIT_SECONDS,
    time_limit=settings.VEREDICTO_JOB_TIME_LIMIT_SECONDS + services.jobs.HARD_LIMIT_GRACE_SECONDS,
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
    return services.run_training_job(job, worker_host=host).status


@shared_task(
    acks_late=True,
    soft_time_limit=GENERATION_TIME_LIMIT,
    time_limit=GENERATION_TIME_LIMIT + 300,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=5,
)
def generate_comparisons(
    checkpoint_id: int,
    project_id: int,
    reference_checkpoint_id: int | None,
    n_prompts: int,
    *,
    batch: str,
    max_new_tokens: int = 128,
    temperature: float = 0.8,
    top_p: float = 0.95,
    seed: int = 0,
) -> dict:
    checkpoint = Checkpoint.objects.select_related("parent").get(pk=checkpoint_id)
    reference = (
        Checkpoint.objects.get(pk=reference_checkpoint_id) if reference_checkpoint_id else None
    )
    outcome = services.comparisons_generate(
        checkpoint=checkpoint,
        project=Project.objects.get(pk=project_id),
        reference=reference or checkpoint.parent,
        n_prompts=n_prompts,
        batch=batch,
        sampling=services.SamplingParams(
            max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p, seed=seed
        ),
    )
    return vars(outcome)


@worker_init.connect
def fail_jobs_left_running(sender, **kwargs) -> None:
    fail_left_running(
        sender,
        lambda host, started: services.jobs_fail_orphaned(worker_host=host, started_before=started),
        "training jobs",
    )
