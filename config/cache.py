"""Django's Redis cache, keeping one redis-py client per connection pool and failing soft.

Django 5.2's RedisCacheClient builds a new `redis.Redis` for every cache call, and building one
fills its table of ~150 response callbacks: a cost paid for the session and each rendered
markdown read on every annotation request (bench/annotation_load.py). A client is thread-safe
(it borrows a pooled connection per command), so one per pool is enough.

The cache only ever holds what can be recomputed, so an unreachable Redis must cost a page
nothing but speed: a connection or timeout error is logged and the call answers like a miss (a
read gives the default, a write is dropped). After a failure Redis is not asked again for
`retry_after` seconds, so a dead or unroutable server costs one short timeout per process per
interval rather than one per call; the first call after that interval finds Redis again.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from typing import Any, TypeVar

from django.core.cache.backends import redis as django_redis
from redis.exceptions import ConnectionError as RedisConnectionError
from redis.exceptions import TimeoutError as RedisTimeoutError

logger = logging.getLogger(__name__)

T = TypeVar("T")
# What an outage raises; any other error (a bad key, a full Redis) is a bug worth seeing.
OUTAGE_ERRORS = (RedisConnectionError, RedisTimeoutError, OSError)


class ReusingRedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[int, Any] = {}

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        pool = self._get_connection_pool(write)
        client = self._clients.get(id(pool))
        if client is None:
            client = self._clients[id(pool)] = self._client(connection_pool=pool)
        return client


class FailSoftRedisCacheClient(ReusingRedisCacheClient):
    def __init__(self, *args: Any, retry_after: float = 1.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._retry_after = retry_after
        self._down_until = 0.0  # time.monotonic() before which Redis is not asked

    def _soft(self, call: Callable[..., T], fallback: T, *args: Any) -> T:
        if time.monotonic() < self._down_until:
            return fallback
        try:
            return call(*args)
        except OUTAGE_ERRORS as exc:
            self._down_until = time.monotonic() + self._retry_after
            logger.warning(
                "cache unavailable, serving without it for %ss: %s", self._retry_after, exc
            )
            return fallback

    def get(self, key: Any, default: Any) -> Any:
        return self._soft(super().get, default, key, default)

    def get_many(self, keys: list[Any]) -> dict[Any, Any]:
        return self._soft(super().get_many, {}, keys)

    def has_key(self, key: Any) -> bool:
        return self._soft(super().has_key, False, key)

    def add(self, key: Any, value: Any, timeout: Any) -> bool:
        return self._soft(super().add, False, key, value, timeout)

    def set(self, key: Any, value: Any, timeout: Any) -> None:
        self._soft(super().set, None, key, value, timeout)

    def set_many(self, data: dict[Any, Any], timeout: Any) -> None:
        self._soft(super().set_many, None, data, timeout)

    def touch(self, key: Any, timeout: Any) -> bool:
        return self._soft(super().touch, False, key, timeout)

    def delete(self, key: Any) -> bool:
        return self._soft(super().delete, False, key)

    def delete_many(self, keys: list[Any]) -> None:
        self._soft(super().delete_many, None, keys)

    def clear(self) -> bool:
        return self._soft(super().clear, False)

    # incr/decr keep raising: there is no value to make up for a counter.


class RedisCache(django_redis.RedisCache):
    def __init__(self, server: Any, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = FailSoftRedisCacheClient
