"""Django's Redis cache (``CACHES`` in settings when ``REDIS_URL`` is set), with one Redis client for
reads and one for writes, not one per operation; and, for a ``redis+sentinel://`` URL, clients of
the master that Redis Sentinel names (``sentinel.py``).

Django's ``RedisCacheClient`` builds a new ``redis.Redis`` (on a shared connection pool) for every
``get`` and ``set``, and building one (its table of response callbacks) costs more CPU than the
command itself. A ``redis.Redis`` is
thread-safe, so one of each does. (With several servers in ``LOCATION``, reads then stay on one
replica; this project configures one, ``REDIS_URL``.)
"""

from typing import Any

from django.core.cache.backends import redis as django_redis

from .sentinel import master_client
from .urls import is_sentinel_url, parse_sentinel_url


class ReusedClientRedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, servers: list[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(servers, *args, **kwargs)
        self._clients: dict[bool, Any] = {}  # by write
        url = servers[0]
        self._sentinel = parse_sentinel_url(url) if is_sentinel_url(url) else None

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        client = self._clients.get(write)
        if client is None:  # a race builds two, and keeps one: harmless
            client = self._clients[write] = self._new_client(key, write)
        return client

    def _new_client(self, key: Any, write: bool) -> Any:
        if self._sentinel is None:
            return super().get_client(key, write=write)
        # Reads and writes both go to the master, as both go to the one server of a plain URL
        # (a replica's counters lag behind): one client, one pool. Its connections take what
        # Django's pools would (OPTIONS and the parser; not in Django's stubs).
        options = self._pool_options  # type: ignore[attr-defined]
        return self._clients.get(not write) or master_client(self._sentinel, **options)


class RedisCache(django_redis.RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        if is_sentinel_url(server):
            self._servers = [server]  # not split at its commas, which separate the sentinels
        self._class = ReusedClientRedisCacheClient
