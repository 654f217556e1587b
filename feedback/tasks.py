"""Background work for the annotation app: thin tasks that take an id and call a service, which
claims the row first (jobs.services), so a redelivered message does nothing."""

from celery import shared_task

from feedback import services
from feedback.models import DataImport, DatasetSnapshot
from jobs.models import HARD_LIMIT_GRACE_SECONDS
from jobs.tasks import worker_name


@shared_task(
    name="feedback.tasks.build_snapshot",
    acks_late=True,
    soft_time_limit=DatasetSnapshot.time_limit_seconds,
    time_limit=DatasetSnapshot.time_limit_seconds + HARD_LIMIT_GRACE_SECONDS,
)
def build_snapshot(snapshot_id: int) -> str:
    snapshot = DatasetSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        return "missing"
    return services.snapshot_build(snapshot=snapshot, worker_host=worker_name()).status


@shared_task(
    name="feedback.tasks.run_import",
    acks_late=True,
    soft_time_limit=DataImport.time_limit_seconds,
    time_limit=DataImport.time_limit_seconds + HARD_LIMIT_GRACE_SECONDS,
)
def run_import(import_id: int) -> str:
    data_import = DataImport.objects.filter(pk=import_id).first()
    if data_import is None:
        return "missing"
    return services.imports.data_import_run(
        data_import=data_import, worker_host=worker_name()
    ).status


@shared_task(name="feedback.tasks.sweep_uploads")
def sweep_uploads() -> int:
    """Celery beat, hourly: uploads previewed and never imported, once their token expired."""
    return services.imports.uploads_sweep()


@shared_task(name="feedback.tasks.index_search", soft_time_limit=3600, time_limit=3660)
def index_search() -> int:
    """After an import commits, and from Celery beat every minute: the search vectors it left
    (feedback.services.search), a few seconds at a time. Runs of it side by side share the
    work (SKIP LOCKED)."""
    return services.search_index_step()
