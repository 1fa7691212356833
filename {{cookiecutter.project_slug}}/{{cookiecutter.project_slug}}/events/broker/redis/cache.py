"""Django's Redis cache (``CACHES`` in settings when ``REDIS_URL`` is set), with one Redis client for
reads and one for writes, not one per operation; for a ``redis+sentinel://`` URL, clients of the
master that Redis Sentinel names (``sentinel.py``); for a ``redis+cluster://`` URL, a client of the
cluster (``cluster.py``).

Django's ``RedisCacheClient`` builds a new ``redis.Redis`` (on a shared connection pool) for every
``get`` and ``set``, and building one (its table of response callbacks) costs more CPU than the
command itself. A ``redis.Redis`` is
thread-safe, so one of each does. (With several servers in ``LOCATION``, reads then stay on one
replica; this project configures one, ``REDIS_URL``.)

In a cluster, the keys of one ``get_many`` or ``set_many`` may live on different masters, and
Redis refuses a command (MGET, MSET) whose keys are in different slots: those two go key by key,
grouped by node, and are not atomic (they could not be across masters).
"""

from collections.abc import Iterable, Mapping
from datetime import timedelta
from typing import Any

from django.core.cache.backends import redis as django_redis

from .cluster import cluster_client
from .sentinel import master_client
from .urls import is_cluster_url, is_sentinel_url, parse_cluster_url, parse_sentinel_url


class ReusedClientRedisCacheClient(django_redis.RedisCacheClient):
    def __init__(self, servers: list[str], *args: Any, **kwargs: Any) -> None:
        super().__init__(servers, *args, **kwargs)
        self._clients: dict[bool, Any] = {}  # by write
        url = servers[0]
        self._sentinel = parse_sentinel_url(url) if is_sentinel_url(url) else None
        self._cluster = parse_cluster_url(url) if is_cluster_url(url) else None

    def get_client(self, key: Any = None, *, write: bool = False) -> Any:
        client = self._clients.get(write)
        if client is None:  # a race builds two, and keeps one: harmless
            client = self._clients[write] = self._new_client(key, write)
        return client

    def _new_client(self, key: Any, write: bool) -> Any:
        if self._sentinel is None and self._cluster is None:
            return super().get_client(key, write=write)
        # Reads and writes both go to the master (of the key's slot, in a cluster), as both go
        # to the one server of a plain URL (a replica's counters lag behind): one client, one
        # pool. Its connections take what Django's pools would (OPTIONS and the parser; not in
        # Django's stubs).
        options: dict[str, Any] = self._pool_options  # type: ignore[attr-defined]
        client = self._clients.get(not write)
        if client is not None:
            return client
        if self._cluster is not None:
            # The cluster client takes no parser (it would drop it without a word).
            options = {name: value for name, value in options.items() if name != "parser_class"}
            return cluster_client(self._cluster, **options)
        assert self._sentinel is not None
        return master_client(self._sentinel, **options)

    def get_many(self, keys: Iterable[Any]) -> dict[Any, Any]:
        if self._cluster is None:
            return super().get_many(keys)
        keys = list(keys)
        values = self.get_client(None).mget_nonatomic(keys)
        loads = self._serializer.loads  # type: ignore[attr-defined]
        return {
            key: loads(value) for key, value in zip(keys, values, strict=True) if value is not None
        }

    def set_many(self, data: Mapping[Any, Any], timeout: int | timedelta | None) -> None:
        if self._cluster is None:
            # None is "no expiry", which Django passes though its stubs leave it out.
            return super().set_many(data, timeout)  # type: ignore[arg-type]
        pipeline = self.get_client(None, write=True).pipeline()
        for key, value in data.items():
            pipeline.set(key, self._serializer.dumps(value), ex=timeout)  # type: ignore[attr-defined]
        pipeline.execute()
        return None


class RedisCache(django_redis.RedisCache):
    def __init__(self, server: str, params: dict[str, Any]) -> None:
        super().__init__(server, params)
        if is_sentinel_url(server) or is_cluster_url(server):
            # Not split at its commas, which separate the sentinels, or the cluster's nodes.
            self._servers = [server]
        self._class = ReusedClientRedisCacheClient
