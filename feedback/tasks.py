"""Background work for the annotation app: thin tasks that take an id and call a service."""

from celery import shared_task

from feedback import services
from feedback.models import DataImport, DatasetSnapshot


@shared_task(name="feedback.tasks.build_snapshot", acks_late=True, soft_time_limit=3600)
def build_snapshot(snapshot_id: int) -> str:
    snapshot = DatasetSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        return "missing"
    return services.snapshot_build(snapshot).status


@shared_task(name="feedback.tasks.run_import", acks_late=True, soft_time_limit=4 * 3600)
def run_import(import_id: int) -> str:
    data_import = DataImport.objects.filter(pk=import_id).first()
    if data_import is None:
        return "missing"
    services.imports.data_import_run(data_import)
    return "done"
