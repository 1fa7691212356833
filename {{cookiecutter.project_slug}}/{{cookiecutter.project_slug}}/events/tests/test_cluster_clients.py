"""The clients of a ``redis+cluster://`` URL, with a real Redis Cluster (three masters, a replica
each, a password): each command reaches the master of its key's slot, whichever it is."""

import asyncio
from collections.abc import Callable, Iterator

import pytest
import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from tests.cluster import RedisClusterDeployment, redis_cluster
from tests.services import free_port

from ..broker.rates import OverRate, Rate, RateCheck
from ..broker.redis.cache import RedisCache
from ..broker.redis.connection import RedisConnection
from ..broker.redis.slots import RedisStreamSlots
from ..broker.redis.urls import check_redis_url

PASSWORD = "cluster-secret"


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterDeployment]:
    with redis_cluster(tmp_path_factory.mktemp("cluster"), password=PASSWORD) as deployment:
        yield deployment


def _connection(url: str, partitions: int = 1) -> RedisConnection:
    return RedisConnection(
        url,
        prefix="cluster-clients",
        history_length=100,
        max_payload_bytes=1000,
        health_check_seconds=5,
        signing_keys=("key",),
        partitions=partitions,
    )


def _one_key_per_master(
    deployment: RedisClusterDeployment,
    prefix: str,
    stored_as: Callable[[str], str] = lambda key: key,
) -> dict[int, str]:
    """A key for each master, by its port; ``stored_as`` is the key Redis gets for one."""
    masters = {master.port for master in deployment.masters()}
    keys: dict[int, str] = {}
    number = 0
    while set(keys) != masters:
        key = f"{prefix}:{number}"
        keys.setdefault(deployment.owner_of_key(stored_as(key)).port, key)
        number += 1
    return keys


def test_the_url_is_accepted(deployment: RedisClusterDeployment) -> None:
    check_redis_url(deployment.url)


def test_the_sync_client_reaches_every_master(deployment: RedisClusterDeployment) -> None:
    connection = _connection(deployment.url)
    client = connection.sync_client
    assert isinstance(client, RedisCluster)
    keys = _one_key_per_master(deployment, "sync")
    try:
        for port, key in keys.items():
            client.set(key, str(port))
        assert [client.get(key) for key in keys.values()] == [str(port).encode() for port in keys]
        # Each on its slot's master, not copied around by the client.
        for port, key in keys.items():
            assert deployment.node(port).client().get(key) == str(port)
    finally:
        client.delete(*keys.values())
        client.close()


def test_the_async_client_reaches_every_master(deployment: RedisClusterDeployment) -> None:
    connection = _connection(deployment.url)
    keys = _one_key_per_master(deployment, "async")

    async def scenario() -> list[object]:
        client = connection.async_client()
        assert isinstance(client, AsyncRedisCluster)
        assert connection.async_client() is client  # one per event loop
        try:
            for port, key in keys.items():
                await client.set(key, str(port))
            return [await client.get(key) for key in keys.values()]
        finally:
            await client.delete(*keys.values())
            await client.aclose()

    assert asyncio.run(scenario()) == [str(port).encode() for port in keys]


def test_the_cache_reads_and_writes_many_keys_across_masters(
    deployment: RedisClusterDeployment,
) -> None:
    cache = RedisCache(deployment.url, {"OPTIONS": {"socket_timeout": 2}})
    keys = list(_one_key_per_master(deployment, "cache", cache.make_key).values())
    try:
        cache.set_many({key: [key] for key in keys}, timeout=60)
        assert cache.get_many([*keys, "missing"]) == {key: [key] for key in keys}
        assert cache.get(keys[0]) == [keys[0]]
    finally:
        cache.delete_many(keys)
    assert cache.get_many(keys) == {}


def test_a_cluster_not_answering_fails_its_commands_not_the_broker() -> None:
    """The sync client connects as it is built: it is built on first use, so that the broker
    (which registers its scripts first) can be built while Redis is down, as with one server."""
    connection = _connection(f"redis+cluster://:{PASSWORD}@127.0.0.1:{free_port()}")
    script = connection.script("return 1")
    with pytest.raises(redis.ConnectionError) as raised:
        script()
    assert PASSWORD not in str(raised.value)


def test_a_streams_admission_counts_its_rate_and_its_slot_on_a_cluster(
    deployment: RedisClusterDeployment,
) -> None:
    """The user's rate and open-streams keys hash to different slots: one script cannot take
    both there (it answered every stream 500 with a rate set)."""
    slots = RedisStreamSlots(_connection(deployment.url))
    rate = RateCheck("streams-of-erin", Rate(3, 60))
    assert slots.acquire("erin", 2, rate) is not None
    assert slots.acquire("erin", 2, rate) is not None
    assert slots.acquire("erin", 2, rate) is None  # two open: the limit
    with pytest.raises(OverRate):  # the fourth stream in the minute: the rate
        slots.acquire("erin", 2, rate)


def test_channels_subscribed_at_once_are_each_confirmed(deployment: RedisClusterDeployment) -> None:
    """The streams a process opens together subscribe their channels together: each master's
    connection is made once, however many channels ask for it at the same moment. (A second
    connection made meanwhile took the place of the first; the channels sent on the first were
    never confirmed, and their streams ended "broker unavailable" ten seconds later.)"""
    connection = _connection(deployment.url, partitions=16)
    channels = [connection.pubsub_channel(f"topic.at-once-{number}") for number in range(60)]

    async def scenario() -> tuple[set[str], set[str]]:
        pubsub = connection.pubsub()
        try:
            await pubsub.connect()
            await asyncio.gather(*(pubsub.subscribe(channel) for channel in channels))
            confirmed: set[str] = set()
            async with asyncio.timeout(10):
                while len(confirmed) < len(channels):
                    message = await pubsub.get_message(timeout=1)
                    if message is not None and message["type"] == "subscribe":
                        confirmed.add(message["channel"].decode())
            client = connection.async_client()
            assert isinstance(client, AsyncRedisCluster)
            nodes = {client.get_node_from_key(channel) for channel in channels}
            return confirmed, {node.name for node in nodes if node is not None}
        finally:
            await pubsub.aclose()

    confirmed, masters = asyncio.run(scenario())
    assert confirmed == set(channels)
    assert len(masters) == 3  # several at once on each master


def test_a_dropped_shard_connection_is_reported_not_silently_replaced(
    deployment: RedisClusterDeployment,
) -> None:
    """The feed catches up from history only when it hears that its connection dropped. redis-py's
    PubSub, left to itself, reconnects and subscribes again without a word: what was published
    meanwhile would never reach the clients, and no one would know."""
    connection = _connection(deployment.url, partitions=16)
    channel = connection.pubsub_channel("topic.dropped")
    master = deployment.owner_of_key(channel)

    async def scenario() -> BaseException | None:
        pubsub = connection.pubsub()
        try:
            await pubsub.connect()
            await pubsub.subscribe(channel)
            async with asyncio.timeout(10):
                while (message := await pubsub.get_message(timeout=1)) is None:
                    pass
            assert message["type"] == "subscribe"
            master.client().client_kill_filter(_type="pubsub")
            try:
                async with asyncio.timeout(10):
                    while True:
                        await pubsub.get_message(timeout=1)
            except redis.ConnectionError as error:
                return error
            except TimeoutError:
                return None
        finally:
            await pubsub.aclose()

    assert isinstance(asyncio.run(scenario()), redis.ConnectionError)
