"""Clients of the master that Redis Sentinel names (a ``redis+sentinel://`` URL, ``urls.py``): the
broker's sync client and async pool (``connection.py``), and the cache's client (``cache.py``).

Every new connection asks the sentinels where the master is, then connects there: after a
failover, the first connection that fails is dropped, and the next one reaches the new master.
redis-py does the asking in ``connect()``; but a dropped connection that is written to again
reconnects through ``connect_check_health()`` instead, to the address it had, which after a
failover is the old master's (redis/redis-py#3874: its retries do the same). The connections here
go through ``connect()`` whichever way they reconnect.
"""

from typing import Any

import redis
import redis.asyncio as aioredis
from redis.asyncio import sentinel as async_sentinel
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from .urls import SentinelUrl


class _MasterConnection(redis.sentinel.SentinelManagedConnection):
    def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if retry_socket_connect:  # not from connect_to(), which follows a lookup
            self.connect()  # type: ignore[no-untyped-call]
        else:
            super().connect_check_health(check_health, retry_socket_connect=False)


class _MasterSSLConnection(_MasterConnection, redis.SSLConnection):
    pass


class _AsyncMasterConnection(async_sentinel.SentinelManagedConnection):
    async def connect_check_health(
        self, check_health: bool = True, retry_socket_connect: bool = True
    ) -> None:
        if retry_socket_connect:  # not from connect_to(), which follows a lookup
            await self.connect()  # type: ignore[no-untyped-call]
        else:
            await super().connect_check_health(check_health, retry_socket_connect=False)


class _AsyncMasterSSLConnection(_AsyncMasterConnection, aioredis.SSLConnection):
    pass


class _BlockingMasterPool(async_sentinel.SentinelConnectionPool, aioredis.BlockingConnectionPool):
    """Blocking, as the pool of a plain URL is (``connection.py``): a burst of callers waits for
    a free connection rather than failing."""


def master_client(url: SentinelUrl, **options: Any) -> redis.Redis:
    """A client of the master; ``options`` are its connections' (timeouts, retry...)."""
    sentinels = redis.sentinel.Sentinel(  # type: ignore[no-untyped-call]
        url.sentinels, sentinel_kwargs=_sentinel_options(url, options, Retry(NoBackoff(), 0))
    )
    client: redis.Redis = sentinels.master_for(  # type: ignore[no-untyped-call]
        url.service,
        connection_class=_MasterSSLConnection if url.tls else _MasterConnection,
        **_master_options(url),
        **options,
    )
    return client


def async_master_client(
    url: SentinelUrl, *, max_connections: int, timeout: float, **options: Any
) -> aioredis.Redis:
    """An async client of the master, on a blocking pool of ``max_connections`` that waits
    ``timeout`` seconds for a free one. It belongs to the running event loop."""
    sentinels = async_sentinel.Sentinel(  # type: ignore[no-untyped-call]
        url.sentinels,
        sentinel_kwargs=_sentinel_options(url, options, AsyncRetry(NoBackoff(), 0)),
    )
    client: aioredis.Redis = sentinels.master_for(
        url.service,
        connection_pool_class=_BlockingMasterPool,
        connection_class=_AsyncMasterSSLConnection if url.tls else _AsyncMasterConnection,
        max_connections=max_connections,
        timeout=timeout,
        **_master_options(url),
        **options,
    )
    return client


def _master_options(url: SentinelUrl) -> dict[str, Any]:
    return {"db": url.db, "username": url.username, "password": url.password}


def _sentinel_options(url: SentinelUrl, options: dict[str, Any], retry: Any) -> dict[str, Any]:
    # The master's timeouts, and no retries: a sentinel that does not answer is skipped for the
    # next, and the lookup fails fast when none does (redis-py's default would retry each one
    # three times, with backoff, on every new connection).
    return {
        **{name: value for name, value in options.items() if name.startswith("socket_")},
        "retry": retry,
        "ssl": url.tls,
    }
