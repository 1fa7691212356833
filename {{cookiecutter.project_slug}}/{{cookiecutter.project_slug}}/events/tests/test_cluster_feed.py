"""A process's feed on a real Redis Cluster whose master is replaced while the feed's connection to
it stays open and silent (the master froze, or a network cut it off: no error comes, only a ping
unanswered, much later). Its replica takes over; what the new master publishes meanwhile must
still reach the channels the feed read on the old one."""

import asyncio
import os
import signal
import time
from pathlib import Path

from django.test import override_settings

from tests.cluster import RedisClusterDeployment, RedisClusterNode, key_slot, redis_cluster
from tests.crowd import wait_for

from .. import publish
from ..broker import get_broker
from ..broker.base import AccessChange, Feed
from ..core.event import Event
from ..core.positions import partition_of
from ..exceptions import BrokerUnavailable

PREFIX = "cluster-feed"
PARTITIONS = 16


class Sink:
    """What the feed hands its process: the ids of the events, and any reset."""

    def __init__(self) -> None:
        self.events: list[str | None] = []
        self.resets: list[int] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event.id)

    def lost_events(self, partition: int, reset_point: str) -> None:
        self.resets.append(partition)

    def access_changed(self, change: AccessChange) -> None:
        pass

    def access_may_have_changed(self) -> None:
        pass


def two_topics_of_one_partition() -> tuple[str, str]:
    by_partition: dict[int, str] = {}
    number = 0
    while True:
        topic = f"t{number}"
        partition = partition_of(f"topic.{topic}", PARTITIONS)
        if partition in by_partition:
            return by_partition[partition], topic
        by_partition[partition] = topic
        number += 1


def publish_until_acknowledged(topic: str, data: int) -> str:
    """Until the publisher's client has found the new master (a command to the frozen one times
    out first)."""
    deadline = time.monotonic() + 30
    while True:
        try:
            event_id = publish("n", data, topic=topic).id
            assert event_id is not None
            return event_id
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.1)


def took_over(deployment: RedisClusterDeployment, replica: RedisClusterNode, space: str) -> bool:
    """Whether ``replica`` says it serves the slot of ``space`` (the frozen master cannot say)."""
    slot = key_slot(space)
    return any(
        slot in entry.slots and entry.port == replica.port
        for entry in deployment.topology(seen_from=replica)
    )


async def subscribe_until_subscribed(feed: Feed, channel: str) -> None:
    """As streams do, by coming back: the process's clients time out on the frozen master before
    they look the slot up again."""
    deadline = time.monotonic() + 30
    while True:
        try:
            await feed.subscribe(channel)
            return
        except BrokerUnavailable:
            if time.monotonic() > deadline:
                raise


def test_a_channel_read_on_a_master_replaced_silently_misses_nothing(tmp_path: Path) -> None:
    """A stream joins a channel of the same partition once the replica has taken over: the feed
    subscribes it on the new master. Without more, that confirmation would move the partition's
    watermark past what the new master published meanwhile, which the first channel, still on the
    frozen master, never got: its clients would never get it either."""
    first, second = two_topics_of_one_partition()
    space = "{" + f"{PREFIX}.{partition_of(f'topic.{first}', PARTITIONS)}" + "}"
    settings = override_settings(
        EVENTS_REDIS_PREFIX=PREFIX,
        EVENTS_PARTITIONS=PARTITIONS,
        # The frozen master's silence goes unnoticed for the whole test.
        EVENTS_REDIS_HEALTH_CHECK_SECONDS=60,
    )
    with (
        redis_cluster(tmp_path) as deployment,
        settings,
        override_settings(REDIS_URL=deployment.url),
    ):
        delivered, published, resets = asyncio.run(scenario(deployment, space, first, second))
    assert resets == []
    assert delivered == published


async def scenario(
    deployment: RedisClusterDeployment, space: str, first: str, second: str
) -> tuple[list[str | None], list[str], list[int]]:
    sink = Sink()
    feed = get_broker().open_feed(sink)
    published: list[str] = []
    try:
        await feed.subscribe(f"topic.{first}")
        published.append(await asyncio.to_thread(publish_until_acknowledged, first, 1))
        old = deployment.owner_of_key(space)
        (replica,) = deployment.replicas_of(old)
        os.kill(old.pid, signal.SIGSTOP)
        try:
            replica.command("cluster", "failover", "takeover")
            assert await wait_for(lambda: took_over(deployment, replica, space), 10, blocking=True)
            # Published while the feed reads the first channel on the frozen master.
            published.append(await asyncio.to_thread(publish_until_acknowledged, first, 2))
            await subscribe_until_subscribed(feed, f"topic.{second}")
            published.append(await asyncio.to_thread(publish_until_acknowledged, first, 3))
        finally:
            os.kill(old.pid, signal.SIGCONT)
        # Back, the old master learns it is a replica now and ends the subscriptions of its
        # slots: the feed reconnects and catches up, whatever happened before.
        await wait_for(lambda: len(sink.events) >= len(published), 20)
    finally:
        await feed.aclose()
    return sink.events, published, sink.resets
