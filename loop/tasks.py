"""GPU work of the loop, routed to the `gpu` queue (config/celery.py): a thin task that takes a
batch id, claims the row (a redelivered message does nothing) and hands it to the backend.
"""

from __future__ import annotations

from celery import shared_task
from django.conf import settings
from django.db import InterfaceError, OperationalError

from jobs.backends import launch
from jobs.services import work_claim
from jobs.tasks import worker_name
from loop.models import ComparisonBatch

# Only a database that is briefly unreachable is worth retrying: the claim turns a retry after
# it into a no-op.
TRANSIENT_ERRORS = (OperationalError, InterfaceError)


@shared_task(
    acks_late=True,
    soft_time_limit=ComparisonBatch.time_limit_seconds,
    time_limit=ComparisonBatch.time_limit_seconds + 300,
    autoretry_for=TRANSIENT_ERRORS,
    max_retries=3,
    retry_backoff=5,
)
def generate_comparisons(batch_id: int) -> str:
    if not ComparisonBatch.objects.filter(pk=batch_id).exists():
        return "missing"
    backend = settings.VEREDICTO_JOB_BACKEND
    if not work_claim(ComparisonBatch, pk=batch_id, worker_host=worker_name(), backend=backend):
        return ComparisonBatch.objects.get(pk=batch_id).status
    # This worker only steers: both models are loaded in the launched process, never here.
    return launch(ComparisonBatch.objects.get(pk=batch_id)).status
