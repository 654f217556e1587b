"""Evaluation on GPU workers. Routed to the `gpu` queue (config/celery.py: `evals.tasks.*`).

The task takes a run id, claims the row (queued → running: a redelivered message finds nothing
to claim) and hands it to the deployment's backend (jobs.backends), which runs
evals.services.worker.eval_run_execute in its own process.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from evals.models import EvalRun
from jobs.backends import launch
from jobs.services import work_claim
from jobs.tasks import worker_name

logger = logging.getLogger(__name__)

# Only a database that is briefly unreachable is worth retrying: before the claim nothing has
# happened, after it the claim makes the retry a no-op. Evaluation errors are final.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)
# The hard limit kills a wedged process; the scheduled sweep then fails the run.
EVAL_SOFT_TIME_LIMIT = EvalRun.time_limit_seconds
EVAL_HARD_TIME_LIMIT = EVAL_SOFT_TIME_LIMIT + 300


@shared_task(
    bind=True,
    acks_late=True,
    soft_time_limit=EVAL_SOFT_TIME_LIMIT,
    time_limit=EVAL_HARD_TIME_LIMIT,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=5,
)
def run_eval(self, run_id: int) -> str:
    run = EvalRun.objects.filter(pk=run_id).first()
    if run is None:
        logger.warning("Eval run %s does not exist; dropping the message", run_id)
        return "missing"
    host = worker_name(self.request.hostname)
    if not work_claim(EvalRun, pk=run_id, worker_host=host, backend=settings.VEREDICTO_JOB_BACKEND):
        return EvalRun.objects.get(pk=run_id).status
    # This worker only steers: the model is loaded in the launched process, never here.
    return launch(EvalRun.objects.get(pk=run_id)).status
