"""Django's Redis cache (``CACHES`` in settings when ``REDIS_URL`` is set), with one Redis client for
reads and one for writes, not one per operation.

Django's ``RedisCacheClient`` builds a new ``redis.Redis`` (on a shared connection pool) for every
``get`` and ``set``, and building one (its table of response callbacks) costs more CPU than the
command itself: two per stream accepted, for the rate limit's counter. A ``redis.Redis`` is
thread-safe, so one of each does. (With several servers in ``LOCATION``, reads then stay on one
replica; this project configures one, ``REDIS_URL``.)
"""

from typing import Any

from django.core.cache.backends import redis as django_redis


class ReusedClientRedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._clients: dict[bool, Any] = {}  # by write

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        client = self._clients.get(write)
        if client is None:  # a race builds two, and keeps one: harmless
            client = self._clients[write] = super().get_client(key, write=write)
        return client


class RedisCache(django_redis.RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        self._class = ReusedClientRedisCacheClient
