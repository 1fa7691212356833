"""What outlives its user unless something ends it: a stream slot taken by a stream that never
started, and the hub of a broker that was replaced."""

import asyncio

from django.test import override_settings

from ..broker import get_broker
from ..broker.slots import LEASE_SECONDS, MemoryStreamSlots
from ..core.event import make_draft
from ..delivery.hub import get_hub


def test_a_slot_that_no_stream_held_expires_and_a_held_one_lasts() -> None:
    """The view takes a slot before its stream starts; a client that leaves meanwhile must not
    count against its user's limit for ever (in one process as with Redis)."""
    now = 1000.0
    slots = MemoryStreamSlots(clock=lambda: now)
    held, never_held = slots.acquire("alice", 2), slots.acquire("alice", 2)
    assert held is not None and never_held is not None
    assert slots.acquire("alice", 2) is None  # at the limit

    async def scenario() -> tuple[bool, bool]:
        nonlocal now
        async with slots.hold(held):
            now += LEASE_SECONDS + 1
            freed = slots.acquire("alice", 2) is not None  # the slot never held is gone
            still_full = slots.acquire("alice", 2) is None  # the held one still counts
        return freed, still_full

    assert asyncio.run(scenario()) == (True, True)


def test_a_hub_replaced_for_another_broker_stops_delivering() -> None:
    """A new broker configuration (here, a test's settings) gets a new hub; the old one's feed is
    closed rather than left subscribed for the process's life."""

    async def scenario() -> list[object] | None:
        with override_settings(REDIS_URL="", EVENTS_HISTORY_LENGTH=100):
            old_broker = get_broker()
            subscriber = await get_hub().join({"broadcast"}, capacity=10)
        with override_settings(REDIS_URL="", EVENTS_HISTORY_LENGTH=101):
            get_hub()
        for _ in range(3):  # the old hub closes in a task of its own
            await asyncio.sleep(0)
        old_broker.publish(make_draft("note", 1, max_payload_bytes=1000))
        return await subscriber.next_batch(within=0.2)

    assert asyncio.run(scenario()) is None
