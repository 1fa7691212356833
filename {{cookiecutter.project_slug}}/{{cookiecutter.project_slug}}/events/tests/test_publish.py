"""The Python publish API and the hub, inside one process, on both brokers."""

import asyncio
import socket

import pytest
from django.test import override_settings

from ..broker import get_broker
from ..broker.base import AccessChange, Feed
from ..core.event import Event
from ..delivery.hub import Hub, Subscriber
from ..delivery.position import Reset
from ..exceptions import BrokerUnavailable
from ..publish import apublish, publish


def test_sync_publish_from_a_worker_thread_reaches_an_in_process_stream() -> None:
    async def scenario() -> list[str]:
        hub = Hub(get_broker())
        subscriber = await hub.join({"broadcast", "user.7"}, capacity=10)
        # As from a sync view: publish() runs in a thread, the hub lives on the event loop.
        await asyncio.to_thread(publish, "note", {"n": 1}, user=7)
        await asyncio.to_thread(publish, "note", {"n": 2}, user=8)
        await asyncio.to_thread(publish, "note", {"n": 3})
        batch = await subscriber.next_batch(within=5)
        await hub.leave(subscriber)
        # Anything but an event shows as itself, and fails the comparison.
        return [item.data if isinstance(item, Event) else repr(item) for item in batch or []]

    with override_settings(REDIS_URL=""):
        assert asyncio.run(scenario()) == ['{"n":1}', '{"n":3}']


def test_apublish_stores_events_in_redis_history(redis_url: str) -> None:
    async def scenario() -> tuple[str | None, list[str | None]]:
        first = await apublish("note", 1, topic="news")
        second = await apublish("note", 2)
        history = get_broker().history_after(0, first.id)
        return second.id, [event.id async for _, page in history for event in page]

    with override_settings(REDIS_URL=redis_url, EVENTS_REDIS_PREFIX="test-apublish"):
        second_id, ids_after_first = asyncio.run(scenario())
    assert ids_after_first == [second_id]


def test_publishing_to_an_unreachable_redis_raises_a_clear_error() -> None:
    with socket.socket() as unused:
        unused.bind(("127.0.0.1", 0))
        url = f"redis://127.0.0.1:{unused.getsockname()[1]}/0"
    with override_settings(REDIS_URL=url):
        with pytest.raises(BrokerUnavailable, match="Redis is unavailable"):
            publish("note", 1)
        with pytest.raises(BrokerUnavailable, match="Redis is unavailable"):
            asyncio.run(apublish("note", 1))


class RecordingFeed(Feed):
    """Records subscription changes (the real feeds are tested over HTTP)."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, str]] = []

    async def subscribe(self, channel: str) -> None:
        await asyncio.sleep(0.01)  # let concurrent joins overlap
        self.calls.append(("subscribe", channel))

    async def unsubscribe(self, channel: str) -> None:
        self.calls.append(("unsubscribe", channel))

    def problem(self) -> None:
        return None

    async def aclose(self) -> None:
        pass


class RecordingBroker:
    partitions = 1

    def __init__(self) -> None:
        self.feed = RecordingFeed()

    def open_feed(self, sink: object) -> Feed:
        return self.feed


def test_channels_are_subscribed_once_and_released_by_the_last_subscriber() -> None:
    async def scenario() -> list[tuple[str, str]]:
        broker = RecordingBroker()
        hub = Hub(broker)  # type: ignore[arg-type]
        first, second = await asyncio.gather(
            hub.join({"broadcast", "topic.a"}, capacity=10),
            hub.join({"broadcast", "topic.b"}, capacity=10),
        )
        await hub.leave(first)
        assert hub.channel_count == 2
        await hub.leave(second)
        assert (hub.channel_count, hub.subscriber_count) == (0, 0)
        return broker.feed.calls

    calls = asyncio.run(scenario())
    assert sorted(calls) == sorted(
        [
            ("subscribe", "broadcast"),
            ("subscribe", "topic.a"),
            ("subscribe", "topic.b"),
            ("unsubscribe", "topic.a"),
            ("unsubscribe", "broadcast"),
            ("unsubscribe", "topic.b"),
        ]
    )


def test_a_subscriber_that_falls_behind_is_marked_and_its_buffer_freed() -> None:
    async def scenario() -> tuple[bool, list[Event | Reset] | None]:
        subscriber = Subscriber(frozenset({"broadcast"}), capacity=3)
        for _ in range(4):
            subscriber.offer(Reset("1-0"))
        return subscriber.overflowed, await subscriber.next_batch(within=1)

    assert asyncio.run(scenario()) == (True, [])


def test_a_subscriber_is_also_bounded_by_the_bytes_waiting_for_it() -> None:
    async def scenario() -> tuple[bool, bool]:
        subscriber = Subscriber(frozenset({"broadcast"}), capacity=1000, max_bytes=70)
        small = Reset("1-0")  # 31 bytes on the wire
        subscriber.offer(small)
        subscriber.offer(small)
        within_limit = subscriber.overflowed
        subscriber.offer(small)
        return within_limit, subscriber.overflowed

    assert asyncio.run(scenario()) == (False, True)


class RecordingSink:
    def __init__(self) -> None:
        self.events: list[str | None] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event.id)

    def lost_events(self, partition: int, reset_point: str) -> None:
        raise AssertionError("no reset expected")

    def access_changed(self, change: AccessChange) -> None:
        raise AssertionError("no access change expected")

    def access_may_have_changed(self) -> None:
        raise AssertionError("no access change expected")


def test_a_feed_whose_reader_stopped_says_so_and_restarts_when_next_needed(redis_url: str) -> None:
    """The supervisor catches every error; should its task end all the same (a BaseException,
    a cancellation from elsewhere), readiness reports it and the next subscription restarts it."""

    async def scenario() -> tuple[str | None, str | None, list[str | None], str]:
        broker = get_broker()
        sink = RecordingSink()
        feed = broker.open_feed(sink)
        await feed.subscribe("broadcast")
        feed._supervisor.cancel()  # type: ignore[attr-defined]  # as if it had died
        await asyncio.sleep(0.05)
        stopped = feed.problem()
        await feed.subscribe("broadcast")  # restarts the reader, which resubscribes
        running = feed.problem()
        event = await apublish("note", 1)
        for _ in range(100):
            if sink.events:
                break
            await asyncio.sleep(0.05)
        await feed.aclose()
        return stopped, running, sink.events, event.id or ""

    with override_settings(REDIS_URL=redis_url, EVENTS_REDIS_PREFIX="test-feed-restart"):
        stopped, running, delivered, published = asyncio.run(scenario())
    assert stopped == "Redis feed stopped"
    assert running is None
    assert delivered == [published]
