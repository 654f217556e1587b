"""The Celery app. Workers: `celery -A config worker -Q default` (CPU) and, one per GPU,
`celery -A config worker -Q gpu --concurrency 1 --prefetch-multiplier 1`; one `celery -A config
beat` per deployment for the scheduled sweep."""

import os

from celery import Celery
from django.conf import settings
from kombu import Queue

from jobs.queues import CeleryQueue

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")


app = Celery("veredicto")
app.config_from_object("django.conf:settings", namespace="CELERY")
app.conf.task_default_queue = CeleryQueue.DEFAULT.value
app.conf.task_queues = [Queue(q.value) for q in CeleryQueue]
# Training, generation and evaluation need an accelerator: they only ever run on `gpu` workers.
app.conf.task_routes = {
    "modeling.tasks.*": {"queue": CeleryQueue.GPU.value},
    "evals.tasks.*": {"queue": CeleryQueue.GPU.value},
    "loop.tasks.*": {"queue": CeleryQueue.GPU.value},
}
app.autodiscover_tasks()
# Celery beat (`celery -A config beat`; `make run` starts it beside the worker) fails background
# work whose worker died or overran, so no page view has to notice (jobs.tasks.sweep).
app.conf.beat_schedule = {
    "jobs-sweep": {
        "task": "jobs.tasks.sweep",
        "schedule": settings.VEREDICTO_JOB_SWEEP_SECONDS,
        "options": {"queue": CeleryQueue.DEFAULT.value, "expires": 60},
    },
    # Uploads previewed and never imported (feedback.services.imports.uploads).
    "uploads-sweep": {
        "task": "feedback.tasks.sweep_uploads",
        "schedule": 3600,
        "options": {"queue": CeleryQueue.DEFAULT.value, "expires": 600},
    },
    # Search vectors an import left for later, when its own send was lost
    # (feedback.services.search): two index lookups when there are none. A send that waited
    # over 10 s in the queue is dropped: the worker was busy (with the import, say), and the
    # import's own send, or the next beat, does the work; kept, it would be one more 10-s turn
    # of indexing ahead of whatever was queued behind it.
    "search-index": {
        "task": "feedback.tasks.index_search",
        "schedule": 60,
        "options": {"queue": CeleryQueue.DEFAULT.value, "expires": 10},
    },
}


@app.task(name="config.ping")
def ping() -> str:
    """Round trip through the broker; used by health checks and tests."""
    return "pong"
