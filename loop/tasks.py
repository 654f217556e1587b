"""GPU work of the loop, routed to the `gpu` queue (config/celery.py): a thin task that takes a
batch id and calls the service, which claims the row first (a redelivered message does nothing).
"""

from __future__ import annotations

from celery import shared_task
from django.db import InterfaceError, OperationalError

from jobs.tasks import worker_name
from loop.comparisons import comparison_batch_run
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
    batch = ComparisonBatch.objects.filter(pk=batch_id).first()
    if batch is None:
        return "missing"
    return comparison_batch_run(batch, worker_host=worker_name()).status
