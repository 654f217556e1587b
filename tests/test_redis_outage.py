"""A Redis outage must not take the browser app down.

Each test gets a Redis of its own (the same binary `make test` uses), points the cache at it, and
stops the real process mid-test: sign-in, pages and submissions keep working from the database,
stay fast, and the cache is used again once Redis is back. No fake Redis and no mocks.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from django.conf import settings
from django.core.cache import cache
from django.test import Client

from config import devservices
from feedback import markdown
from feedback.models import Assignment, PairwiseJudgement, TaskKind
from tests.factories import make_item

pytestmark = pytest.mark.django_db

HX = {"HX-Request": "true"}
# A request whose every cache call meets a refused connection takes milliseconds; this bound
# leaves room for a loaded test machine, and is far below a single default connect timeout.
FAST_SECONDS = 1.0


@dataclass
class OwnRedis:
    url: str
    workdir: Path
    server: devservices.Server | None = None

    def start(self) -> None:
        options = ("--save", "", "--appendonly", "no")
        self.server = devservices.start_redis(self.url, self.workdir, *options, temporary=False)

    def stop(self) -> None:
        if self.server:
            devservices.stop_servers([self.server])
            self.server = None


@pytest.fixture
def own_redis(tmp_path, settings) -> Iterator[OwnRedis]:
    redis = OwnRedis(f"redis://127.0.0.1:{devservices._free_port()}/0", tmp_path)
    redis.start()
    settings.CACHES = {"default": {**settings.CACHES["default"], "LOCATION": redis.url}}
    markdown.cache_clear()
    try:
        yield redis
    finally:
        redis.stop()
        markdown.cache_clear()


def timed(call, *args, **kwargs):
    started = time.perf_counter()
    response = call(*args, **kwargs)
    return response, time.perf_counter() - started


def test_annotators_sign_in_and_submit_while_redis_is_down(own_redis, annotator, pairwise_item):
    second = make_item(pairwise_item.project, TaskKind.PAIRWISE)
    client = Client()
    assert client.get("/accounts/login/").status_code == 200  # a running server, warmed up
    own_redis.stop()

    response, login_seconds = timed(
        client.post, "/accounts/login/", {"username": "ann", "password": "pw"}
    )
    assert response.status_code == 302, response.content[:300]
    response, home_seconds = timed(client.get, "/")
    assert response.status_code == 200 and b"Start working" in response.content

    response = client.get(f"/projects/{pairwise_item.project_id}/work/")
    assert response.status_code == 302
    response, task_seconds = timed(client.get, response["Location"])
    assert response.status_code == 200
    first = Assignment.objects.get(annotator=annotator, item=pairwise_item)
    assert markdown.rendered(first.item.prompt.messages[0]["content"]) in response.content.decode()

    response, submit_seconds = timed(
        client.post,
        f"/tasks/{first.pk}/submit/",
        {"side": "left", "strength": "slight"},
        headers=HX,
    )
    assert response.status_code == 200 and response["HX-Push-Url"]
    nxt = Assignment.objects.get(annotator=annotator, item=second)
    response = client.post(f"/tasks/{nxt.pk}/submit/", {"side": "tie"})  # without JavaScript
    assert response.status_code == 302
    assert PairwiseJudgement.objects.filter(annotator=annotator).count() == 2

    took = {"login": login_seconds, "home": home_seconds, "task": task_seconds,
            "submit": submit_seconds}  # fmt: skip
    print("with Redis down:", {name: f"{seconds * 1000:.0f} ms" for name, seconds in took.items()})
    assert max(took.values()) < FAST_SECONDS, took


def test_a_hung_redis_costs_one_short_timeout_not_one_per_call(own_redis, annotator, pairwise_item):
    client = Client()
    client.force_login(annotator)
    task = client.get(f"/projects/{pairwise_item.project_id}/work/")["Location"]
    os.kill(own_redis.server.proc.pid, signal.SIGSTOP)  # accepts connections, never answers
    try:
        markdown.cache_clear()
        response, first_seconds = timed(client.get, task)
        markdown.cache_clear()
        response, then_seconds = timed(client.get, task)
    finally:
        os.kill(own_redis.server.proc.pid, signal.SIGCONT)
    assert response.status_code == 200
    print(f"with Redis hung: {first_seconds * 1000:.0f} ms, then {then_seconds * 1000:.0f} ms")
    timeout = settings.CACHES["default"]["OPTIONS"]["socket_timeout"]
    assert first_seconds < timeout + FAST_SECONDS  # one timeout, not one per cache call
    assert then_seconds < timeout  # Redis is skipped for a while after a failure


def test_a_session_made_during_the_outage_survives_redis_coming_back(own_redis, annotator):
    own_redis.stop()
    client = Client()
    assert client.post("/accounts/login/", {"username": "ann", "password": "pw"}).status_code == 302
    own_redis.start()
    assert client.get("/").status_code == 200
    assert client.get("/history/").status_code == 200


def test_signing_out_during_the_outage_is_not_undone_when_redis_returns(own_redis, annotator):
    client = Client()
    assert client.post("/accounts/login/", {"username": "ann", "password": "pw"}).status_code == 302
    assert client.get("/").status_code == 200
    stolen = client.cookies[settings.SESSION_COOKIE_NAME].value
    own_redis.stop()
    assert client.post("/accounts/logout/").status_code in (200, 302)
    own_redis.start()
    thief = Client()
    thief.cookies[settings.SESSION_COOKIE_NAME] = stolen
    assert thief.get("/").status_code == 302  # to the login page


def test_the_cache_works_again_by_itself_once_redis_returns(own_redis):
    own_redis.stop()
    cache.set("probe", "down")
    assert cache.get("probe", "missing") == "missing"
    assert cache.get_many(["probe"]) == {}

    own_redis.start()
    deadline = time.monotonic() + 10
    while cache.get("probe") != "up" and time.monotonic() < deadline:
        cache.set("probe", "up")
        time.sleep(0.1)
    assert cache.get("probe") == "up"
    markdown.prefetch(["**back**"])
    assert any(key.startswith("md:") for key in _keys(own_redis))


def _keys(own_redis: OwnRedis) -> list[str]:
    import redis

    with redis.Redis.from_url(own_redis.url) as client:
        return [key.decode().split(":", 2)[-1] for key in client.keys("*")]
