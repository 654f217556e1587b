"""The Celery queues (config/celery.py routes to them): `default` for CPU work, `gpu` for work
that needs an accelerator (training, evaluation, generation), one worker per GPU host."""

from enum import StrEnum


class CeleryQueue(StrEnum):
    DEFAULT = "default"
    GPU = "gpu"
