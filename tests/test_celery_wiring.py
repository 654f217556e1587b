"""Celery and cache wiring against the real Redis that `make test` starts (never eager mode)."""

import pytest
from celery.contrib.testing.worker import start_worker
from django.conf import settings

from config.celery import CeleryQueue, app, ping


def test_settings_route_model_work_to_the_gpu_queue():
    assert app.conf.task_routes["modeling.tasks.*"]["queue"] == CeleryQueue.GPU
    assert app.conf.task_default_queue == CeleryQueue.DEFAULT
    assert app.conf.task_serializer == "json"
    assert app.conf.worker_prefetch_multiplier == 1
    assert app.conf.task_always_eager is False


@pytest.mark.django_db(transaction=True)
def test_a_real_worker_answers_through_redis():
    assert settings.CELERY_BROKER_URL.startswith("redis://")
    with start_worker(app, pool="solo", perform_ping_check=False, queues=[CeleryQueue.DEFAULT]):
        assert ping.delay().get(timeout=30) == "pong"


def test_the_cache_reuses_one_redis_client_and_round_trips_through_redis():
    from django.core.cache import cache

    client = cache._cache.get_client()
    assert cache._cache.get_client(write=True) is client
    cache.set("wiring-check", {"a": 1}, 30)
    assert cache.get("wiring-check") == {"a": 1}
    assert client.exists(cache.make_and_validate_key("wiring-check")) == 1


def test_every_beat_entry_names_a_registered_task():
    app.loader.import_default_modules()
    scheduled = {entry["task"] for entry in app.conf.beat_schedule.values()}
    assert "feedback.tasks.index_search" in scheduled
    assert scheduled <= set(app.tasks)
