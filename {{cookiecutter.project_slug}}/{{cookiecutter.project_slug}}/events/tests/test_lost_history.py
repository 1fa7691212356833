"""Events lost from history after a process received them (a failover to a replica that had not
received them yet, with ``EVENTS_PUBLISH_REPLICAS`` at 0): on a real Redis, where the loss is made
by deleting the newest entry, as the promoted replica would lack it."""

import asyncio

import redis
from django.test import override_settings

from tests.crowd import wait_for

from .. import apublish
from ..broker import get_broker
from ..broker.base import AccessChange, HistoryGap
from ..core.event import Event

PREFIX = "test-lost-history"
CHANNEL = "topic.lost"


class Sink:
    def __init__(self) -> None:
        self.events: list[str | None] = []
        self.resets: list[str] = []

    def deliver(self, event: Event) -> None:
        self.events.append(event.id)

    def lost_events(self, partition: int, reset_point: str) -> None:
        self.resets.append(reset_point)

    def access_changed(self, change: AccessChange) -> None:
        pass

    def access_may_have_changed(self) -> None:
        pass


async def read_after(event_id: str) -> list[str | None] | type[HistoryGap]:
    """What a client that resumes after ``event_id`` is sent: events, or a reset."""
    received: list[str | None] = []
    try:
        async for _, events in get_broker().history_after(0, event_id, {CHANNEL}):
            received.extend(event.id for event in events)
    except HistoryGap:
        return HistoryGap
    return received


def test_a_client_away_when_events_were_lost_is_reset_on_its_return(redis_url: str) -> None:
    """The process's feed notices the loss when it reconnects, and resets its clients. A client
    that was away then (between two connections) resumes later, from before the loss: history
    alone would hand it what came after, as if nothing had been lost."""

    async def scenario() -> tuple[object, object, object, list[str], str]:
        sink = Sink()
        feed = get_broker().open_feed(sink)
        try:
            await feed.subscribe(CHANNEL)
            seen = (await apublish("n", 0, topic="lost")).id  # the client away got this one
            lost = (await apublish("n", 1, topic="lost")).id
            assert seen is not None
            assert lost is not None
            assert await wait_for(lambda: lost in sink.events, 10)
            with redis.Redis.from_url(redis_url) as client:
                client.xdel(f"{PREFIX}:history", lost)
                client.client_kill_filter(_type="pubsub")  # the old master's connection ends
            assert await wait_for(lambda: sink.resets, 10)
            after_loss = (await apublish("n", 2, topic="lost")).id
            assert after_loss is not None
            return (
                await read_after(seen),
                await read_after(sink.resets[0]),  # where the reset clients resume from
                await read_after(after_loss),
                sink.resets,
                after_loss,
            )
        finally:
            await feed.aclose()

    with override_settings(REDIS_URL=redis_url, EVENTS_REDIS_PREFIX=PREFIX):
        away, reset, later, resets, after_loss = asyncio.run(scenario())
    assert away is HistoryGap
    assert reset == [after_loss]
    assert later == []
    assert len(resets) == 1
