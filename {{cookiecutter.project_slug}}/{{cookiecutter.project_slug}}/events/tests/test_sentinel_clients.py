"""The clients of a Sentinel master find it again on every reconnect, however the connection comes
back: with a real master, replica and three Sentinels (the failover itself: tests/test_sentinel.py).
"""

import asyncio
from collections.abc import Iterator, Sequence

import pytest
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.retry import Retry

from tests.services import SentinelDeployment, free_port, redis_sentinels

from ..broker.redis.sentinel import async_master_client, master_client
from ..broker.redis.urls import parse_sentinel_url


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SentinelDeployment]:
    with redis_sentinels(tmp_path_factory.mktemp("sentinel")) as deployment:
        yield deployment


def test_a_dropped_connection_written_to_asks_the_sentinels_again(
    deployment: SentinelDeployment,
) -> None:
    """redis-py's own Sentinel connection reconnects to the address it had when a command is
    sent on it after it was dropped (redis/redis-py#3874): after a failover, the old master's.
    Here its address is made stale by hand; the reconnect must look the master up."""
    client = master_client(parse_sentinel_url(deployment.url), retry=Retry(NoBackoff(), 0))
    connection = client.connection_pool.get_connection()
    try:
        connection.disconnect()
        connection.port = free_port()  # where the master was: nothing answers there now
        connection.send_command("PING")
        assert connection.read_response() == b"PONG"
        assert connection.port == deployment.master.port
    finally:
        client.connection_pool.release(connection)
        client.close()


def test_the_async_client_does_the_same(deployment: SentinelDeployment) -> None:
    async def scenario() -> tuple[object, int]:
        client = async_master_client(
            parse_sentinel_url(deployment.url),
            max_connections=2,
            timeout=5,
            retry=AsyncRetry(NoBackoff(), 0),
        )
        connection = await client.connection_pool.get_connection()
        try:
            await connection.disconnect()
            connection.port = free_port()
            await connection.send_command("PING")
            return await connection.read_response(), connection.port
        finally:
            await client.connection_pool.release(connection)
            await client.aclose()

    assert asyncio.run(scenario()) == (b"PONG", deployment.master.port)


def test_the_async_pool_waits_for_a_free_connection(deployment: SentinelDeployment) -> None:
    """Like the plain URL's pool: a caller beyond its size waits, rather than failing."""

    async def scenario() -> tuple[Sequence[object], float]:
        client = async_master_client(
            parse_sentinel_url(deployment.url), max_connections=1, timeout=5
        )
        loop = asyncio.get_running_loop()
        started = loop.time()
        try:
            # Each holds the one connection for 0.2 s, waiting on an empty list.
            replies = await asyncio.gather(*(client.blpop(["nothing"], 0.2) for _ in range(2)))
        finally:
            await client.aclose()
        return replies, loop.time() - started

    replies, elapsed = asyncio.run(scenario())
    assert replies == [None, None]
    assert elapsed >= 0.4  # one after the other
