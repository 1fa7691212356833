"""What outlives its user, is lost before it, or piles up, unless something sees to it: stream
slots (taken by a stream that never started; lost by Redis while their streams go on), the hub of
a broker that was replaced, and rechecks of every stream."""

import asyncio

import pytest
from django.test import override_settings

from ..broker import get_broker
from ..broker.redis.connection import RedisConnection
from ..broker.redis.slots import RedisStreamSlots
from ..broker.slots import LEASE_SECONDS, MemoryStreamSlots
from ..core.event import make_draft
from ..delivery import hub as hub_module
from ..delivery.hub import Hub, get_hub


def test_a_slot_that_no_stream_held_expires_and_a_held_one_lasts() -> None:
    """The view takes a slot before its stream starts; a client that leaves meanwhile must not
    count against its user's limit for ever (in one process as with Redis)."""
    now = 1000.0
    slots = MemoryStreamSlots(clock=lambda: now)
    held, never_held = slots.acquire("alice", 2), slots.acquire("alice", 2)
    assert held is not None
    assert never_held is not None
    assert slots.acquire("alice", 2) is None  # at the limit

    async def scenario() -> tuple[bool, bool]:
        nonlocal now
        async with slots.hold(held):
            now += LEASE_SECONDS + 1
            freed = slots.acquire("alice", 2) is not None  # the slot never held is gone
            still_full = slots.acquire("alice", 2) is None  # the held one still counts
        return freed, still_full

    assert asyncio.run(scenario()) == (True, True)


def test_slots_that_redis_lost_count_again_after_the_next_renewal(redis_url: str) -> None:
    """Redis restarted without its data while two streams of a user with a limit
    of two are open (here: their key deleted): their leases are written again, and a third stream
    is refused."""
    connection = RedisConnection(
        redis_url,
        prefix="test-slots-lost",
        history_length=10,
        max_payload_bytes=1000,
        health_check_seconds=3,
        signing_keys=("key",),
    )
    slots = RedisStreamSlots(connection, renew_every=0.05)
    key = connection.key("streams", "user", "alice")

    async def scenario() -> tuple[int, bool]:
        first, second = slots.acquire("alice", 2), slots.acquire("alice", 2)
        assert first is not None
        assert second is not None
        async with slots.hold(first), slots.hold(second):
            connection.sync_client.delete(key)  # as a Redis restarted without its data
            for _ in range(200):  # a renewal every 0.05 s: at most 10 s
                if connection.sync_client.zcard(key) == 2:
                    break
                await asyncio.sleep(0.05)
            return connection.sync_client.zcard(key), slots.acquire("alice", 2) is None

    rewritten, refused = asyncio.run(scenario())
    assert rewritten == 2
    assert refused
    assert connection.sync_client.zcard(key) == 0  # given back when the streams ended


def test_a_hub_replaced_for_another_broker_stops_delivering() -> None:
    """A new broker configuration (here, a test's settings) gets a new hub; the old one's feed is
    closed rather than left subscribed for the process's life."""

    async def scenario() -> object:
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


def test_rechecks_of_every_stream_never_overlap_and_none_asked_for_is_skipped(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A flapping broker connection asks for a recheck of every stream at each reconnect: one runs
    at a time (each is a database query per stream), and a request made during one makes it run
    once more afterwards, so that no change is left unchecked."""
    running, most_at_once, runs = 0, 0, 0

    async def recheck(streams: object, change: object) -> None:
        nonlocal running, most_at_once, runs
        running, runs = running + 1, runs + 1
        most_at_once = max(most_at_once, running)
        await asyncio.sleep(0.05)
        running -= 1

    monkeypatch.setattr(hub_module, "recheck", recheck)

    async def scenario() -> None:
        hub = Hub(get_broker())
        for _ in range(5):  # five reconnects while the first recheck runs
            hub.access_may_have_changed()
            await asyncio.sleep(0.005)
        # The rechecks, to their end (a third run would have started before the second ended).
        await asyncio.gather(*(asyncio.all_tasks() - {asyncio.current_task()}))
        await hub.aclose()

    with override_settings(REDIS_URL=""):
        asyncio.run(scenario())
    assert (most_at_once, runs) == (1, 2)
