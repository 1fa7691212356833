"""``EVENTS_PUBLISH_REPLICAS`` on a real Redis Cluster (three masters, a replica each): a publish
is acknowledged once the replica of its partition's master holds it, through a reshard that
moved the partition (the publisher's slot map is stale then), and refused when that replica
does not confirm."""

import asyncio
import os
import signal
from collections.abc import Iterator

import pytest
from django.test import override_settings

from tests.cluster import RedisClusterDeployment, RedisClusterNode, key_slot, redis_cluster
from tests.services import wait_until

from .. import apublish, publish
from ..broker.base import Once
from ..core.positions import partition_of
from ..exceptions import BrokerUnavailable

PREFIX = "cluster-replicas"
PARTITIONS = 16


@pytest.fixture(scope="module")
def deployment(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterDeployment]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as deployment:
        yield deployment


def space(topic: str) -> str:
    """The hash tag of ``topic``'s partition: its keys are ``<space>:history`` and so on."""
    return "{" + f"{PREFIX}.{partition_of(f'topic.{topic}', PARTITIONS)}" + "}"


def topics_by_master(deployment: RedisClusterDeployment) -> list[tuple[RedisClusterNode, str]]:
    """Each master that serves a partition, with a topic of one of its partitions (a reshard can
    leave a master none). Where the slots are is read once."""
    slots = {
        entry.port: entry.slots
        for entry in deployment.topology()
        if entry.is_master and not entry.failing
    }
    topics: dict[int, str] = {}
    for number in range(50 * PARTITIONS):  # far more topics than it takes to reach every partition
        slot = key_slot(space(topic := f"t{number}"))
        owner = next(port for port, served in slots.items() if slot in served)
        topics.setdefault(owner, topic)
    return [(deployment.node(port), topic) for port, topic in topics.items()]


def on_the_replica(
    deployment: RedisClusterDeployment, topic: str, event_id: str | None
) -> list[object]:
    """The event's history entry as the replica of its partition's master holds it."""
    (replica,) = deployment.replicas_of(deployment.owner_of_key(space(topic)))
    with replica.client() as client:
        client.readonly()
        return list(client.xrange(f"{space(topic)}:history", event_id, event_id))


def replicated(deployment: RedisClusterDeployment) -> override_settings:
    return override_settings(
        REDIS_URL=deployment.url,
        EVENTS_REDIS_PREFIX=PREFIX,
        EVENTS_PARTITIONS=PARTITIONS,
        EVENTS_PUBLISH_REPLICAS=1,
        EVENTS_PUBLISH_REPLICA_TIMEOUT_MILLISECONDS=300,
    )


def test_a_publish_is_acknowledged_once_the_replica_of_its_master_holds_it(
    deployment: RedisClusterDeployment,
) -> None:
    with replicated(deployment):
        # On every master: WAIT reaches the master that ran the script, not any node.
        topics = topics_by_master(deployment)
        assert len(topics) == 3, "each master serves a partition before the reshard"
        for master, topic in topics:
            event = publish("note", 1, topic=topic, key=f"key-{topic}")
            assert on_the_replica(deployment, topic, event.id)
            async_event = asyncio.run(apublish("note", 2, topic=topic))
            assert on_the_replica(deployment, topic, async_event.id)
            (replica,) = deployment.replicas_of(master)
            with replica.client() as client:
                client.readonly()
                idempotency = f"{space(topic)}:idempotency:{Once(f'key-{topic}', 1).digest}"
                assert client.exists(idempotency)

        # The partition moves to another master; the publisher still has the old slot map.
        (source, topic), (target, _) = topics[:2]
        slot = key_slot(space(topic))
        owned = sorted(deployment.slots_of(source))
        deployment.reshard(owned.index(slot) + 1, source, target)
        assert deployment.owner_of_key(space(topic)).port == target.port
        event = publish("note", 3, topic=topic)
        assert on_the_replica(deployment, topic, event.id)
        event = asyncio.run(apublish("note", 4, topic=topic))
        assert on_the_replica(deployment, topic, event.id)

        # The replica of one master stops: its partitions refuse, the others go on.
        # (Where things are is read before: a stopped node answers no one.)
        stopped, other = topics_by_master(deployment)[:2]
        (stopped_master, stopped_topic), (other_master, other_topic) = stopped, other
        (replica,) = deployment.replicas_of(stopped_master)
        (other_replica,) = deployment.replicas_of(other_master)
        os.kill(replica.pid, signal.SIGSTOP)
        try:
            with pytest.raises(BrokerUnavailable, match="0 of 1 Redis replicas confirmed"):
                publish("note", 5, topic=stopped_topic)
            with pytest.raises(BrokerUnavailable, match="0 of 1 Redis replicas confirmed"):
                asyncio.run(apublish("note", 6, topic=stopped_topic))
            event = publish("note", 7, topic=other_topic)
            with other_replica.client() as client:
                client.readonly()
                assert client.xrange(f"{space(other_topic)}:history", event.id, event.id)
        finally:
            os.kill(replica.pid, signal.SIGCONT)


def test_a_publish_to_a_slot_being_migrated_waits_for_the_replica_of_the_master_holding_it(
    deployment: RedisClusterDeployment,
) -> None:
    """Mid-migration, the old master sends a publish whose keys have moved to the new master
    (ASK): the event must be on the new master's replica."""
    wait_until(deployment.healthy, 30)  # the replica stopped above is back
    (source, topic), *_ = topics_by_master(deployment)
    target = next(master for master in deployment.masters() if master != source)
    slot = str(key_slot(space(topic)))
    with replicated(deployment):
        publish("note", 1, topic=topic)  # the partition's history exists
        target.command("cluster", "setslot", slot, "importing", source.node_id)
        source.command("cluster", "setslot", slot, "migrating", target.node_id)
        try:
            with source.client() as client:
                keys = client.execute_command("CLUSTER", "GETKEYSINSLOT", slot, 100)
                assert keys
                client.migrate("127.0.0.1", target.port, keys, 0, 5000)
            event = publish("note", 2, topic=topic)
            async_event = asyncio.run(apublish("note", 3, topic=topic))
        finally:
            for master in deployment.masters():
                master.command("cluster", "setslot", slot, "node", target.node_id)
        (replica,) = deployment.replicas_of(target)
        with replica.client() as client:
            client.readonly()
            for event_id in (event.id, async_event.id):
                assert client.xrange(f"{space(topic)}:history", event_id, event_id)
