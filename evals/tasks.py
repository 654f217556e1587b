"""Evaluation on GPU workers. Routed to the `gpu` queue (config/celery.py: `evals.tasks.*`).

The task takes a run id, re-reads the row and calls services.run_eval, which claims the row
(queued → running) before doing anything: a redelivered message finds nothing to claim.
"""

from __future__ import annotations

import logging

from celery import shared_task
from django.db import InterfaceError, OperationalError

from evals import services
from evals.models import EvalRun
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
    return services.run_eval(run=run, worker_host=host).status
