"""Background work for the annotation app: thin tasks that take an id and call a service."""

from celery import shared_task

from feedback import services
from feedback.models import DatasetSnapshot


@shared_task(name="feedback.tasks.build_snapshot", acks_late=True, soft_time_limit=3600)
def build_snapshot(snapshot_id: int) -> str:
    snapshot = DatasetSnapshot.objects.filter(pk=snapshot_id).first()
    if snapshot is None:
        return "missing"
    return services.snapshot_build(snapshot).status
