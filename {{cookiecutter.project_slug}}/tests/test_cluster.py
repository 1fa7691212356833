"""Redis Cluster, on a real cluster of three masters and three replicas: the two facts of redis-py
and Redis that a broker on sharded Pub/Sub relies on.

An event is added to a partition's stream and published on the partition's shard channel by one
Lua script; the stream key and the channel share the partition's hash tag, so both live in one
slot, on one master, and the script declares both. An asyncio sharded subscriber hears it,
whichever master serves the partition. The subscription is a shard subscription only: the
owning master lists it in ``PUBSUB SHARDCHANNELS``, and no node has a plain channel.
"""

import asyncio
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager

import pytest
from redis.asyncio.cluster import ClusterNode, ClusterPubSub, RedisCluster

from .cluster import RedisClusterDeployment, hash_tag, key_slot, redis_cluster

pytestmark = pytest.mark.timeout(120)

# Adds the event to the partition's stream (KEYS[1]) and publishes its id and data on the
# partition's shard channel (KEYS[2]); both keys carry the partition's hash tag.
PUBLISH_SCRIPT = """
local id = redis.call('XADD', KEYS[1], '*', 'data', ARGV[1])
redis.call('SPUBLISH', KEYS[2], id .. ' ' .. ARGV[1])
return id
"""


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterDeployment]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as deployment:
        yield deployment


def partition_on_each_master(deployment: RedisClusterDeployment) -> dict[int, str]:
    """A partition's hash tag for each master (by port), from one look at the slots."""
    owners = {
        slot: entry.port
        for entry in deployment.topology()
        if entry.is_master and not entry.failing
        for slot in entry.slots
    }
    tags: dict[int, str] = {}
    number = 0
    while len(tags) < len(set(owners.values())):
        tag = hash_tag(f"partition-{number}")
        tags.setdefault(owners[key_slot(tag)], tag)
        number += 1
    return tags


def cluster_client(deployment: RedisClusterDeployment) -> RedisCluster:
    return RedisCluster(
        startup_nodes=[ClusterNode("127.0.0.1", node.port) for node in deployment.nodes],
        decode_responses=True,
    )


@asynccontextmanager
async def sharded_subscriber(
    client: RedisCluster, channels: list[str]
) -> AsyncIterator[ClusterPubSub]:
    """A pubsub holding shard subscriptions to ``channels``, confirmed by their nodes."""
    # Without the slots known, SSUBSCRIBE finds no node for a channel (SlotNotCoveredError).
    await client.initialize()
    pubsub = client.pubsub()
    try:
        await pubsub.ssubscribe(*channels)
        confirmed = await receive(pubsub, "ssubscribe", len(channels))
        assert sorted(message["channel"] for message in confirmed) == sorted(channels)
        yield pubsub
    finally:
        await pubsub.aclose()


async def receive(pubsub: ClusterPubSub, kind: str, count: int) -> list[dict]:
    """The next ``count`` messages of type ``kind``, within 10 s."""
    received: list[dict] = []
    deadline = time.monotonic() + 10
    while len(received) < count:
        assert time.monotonic() < deadline, f"{len(received)} of {count} {kind} in 10s"
        # The pubsub reads its nodes in turn, waiting up to the timeout on each.
        message = await pubsub.get_sharded_message(timeout=0.05)
        if message is not None and message["type"] == kind:
            received.append(message)
    return received


def test_events_published_by_a_script_reach_a_sharded_subscriber_on_every_master(
    cluster: RedisClusterDeployment,
) -> None:
    tags = partition_on_each_master(cluster)
    assert len(tags) == 3
    channels = {tag: f"events:{tag}:live" for tag in tags.values()}

    async def scenario() -> None:
        client = cluster_client(cluster)
        try:
            async with sharded_subscriber(client, list(channels.values())) as pubsub:
                publish = client.register_script(PUBLISH_SCRIPT)
                ids = {}
                for tag, channel in channels.items():
                    stream = f"events:{tag}:history"
                    ids[channel] = await publish(keys=[stream, channel], args=[f"to {tag}"])
                messages = await receive(pubsub, "smessage", len(channels))
                heard = {message["channel"]: message["data"] for message in messages}
                assert heard == {
                    channel: f"{ids[channel]} to {tag}" for tag, channel in channels.items()
                }
                for tag in channels:
                    history = await client.xrange(f"events:{tag}:history")
                    assert history == [(ids[f"events:{tag}:live"], {"data": f"to {tag}"})]
        finally:
            await client.aclose()

    asyncio.run(scenario())


def test_a_shard_subscription_is_listed_by_its_master_only_as_a_shard_channel(
    cluster: RedisClusterDeployment,
) -> None:
    tag = next(iter(partition_on_each_master(cluster).values()))
    channel = f"events:{tag}:live"
    owner = cluster.owner_of_key(tag)

    async def scenario() -> None:
        client = cluster_client(cluster)
        try:
            async with sharded_subscriber(client, [channel]):
                for node in cluster.nodes:
                    with node.client() as plain:
                        shard_channels = plain.execute_command("PUBSUB", "SHARDCHANNELS")
                        assert shard_channels == ([channel] if node is owner else [])
                        assert plain.execute_command("PUBSUB", "CHANNELS") == []
        finally:
            await client.aclose()

    asyncio.run(scenario())
