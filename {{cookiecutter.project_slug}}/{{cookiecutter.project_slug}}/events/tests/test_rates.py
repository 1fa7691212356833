"""Rate limits admit exactly their limit however many hits arrive at once, in one process and
over every process sharing a Redis; a window that passes admits again. A stream's admission
counts its rate and takes its slot in one step."""

import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor

import pytest

from ..broker.rates import MemoryRateLimits, OverRate, Rate, RateCheck, RateLimits
from ..broker.redis.connection import RedisConnection
from ..broker.redis.rates import RedisRateLimits
from ..broker.redis.slots import RedisStreamSlots
from ..broker.slots import MemoryStreamSlots, StreamSlots


def redis_limits(redis_url: str, prefix: str) -> RedisRateLimits:
    connection = RedisConnection(
        redis_url,
        prefix=prefix,
        history_length=10,
        max_payload_bytes=1000,
        health_check_seconds=3,
        signing_keys=("key",),
    )
    return RedisRateLimits(connection)


def hit_together(limits: Sequence[RateLimits], hits: int, rate: Rate) -> list[float]:
    """``hits`` hits of one key from 50 threads released at once, spread over ``limits`` (one
    per process, as with several servers); the waits they were answered."""
    start = threading.Barrier(50)

    def one(n: int) -> float:
        if n < 50:
            start.wait()
        return limits[n % len(limits)].hit("user-1", rate)

    with ThreadPoolExecutor(50) as pool:
        return list(pool.map(one, range(hits)))


@pytest.fixture(params=["memory", "redis"])
def make_limits(request: pytest.FixtureRequest) -> Callable[[str], RateLimits]:
    if request.param == "memory":
        return lambda prefix: MemoryRateLimits()
    redis_url: str = request.getfixturevalue("redis_url")
    return lambda prefix: redis_limits(redis_url, prefix)


def test_a_burst_gets_exactly_the_limit(make_limits: Callable[[str], RateLimits]) -> None:
    waits = hit_together([make_limits("test-rates-burst")], hits=200, rate=Rate(60, 60))
    assert sum(wait == 0 for wait in waits) == 60
    refused = [wait for wait in waits if wait]
    assert all(0 < wait <= 60 for wait in refused)


def test_processes_sharing_a_redis_count_together(redis_url: str) -> None:
    processes = [redis_limits(redis_url, "test-rates-shared") for _ in range(3)]
    waits = hit_together(processes, hits=300, rate=Rate(100, 60))
    assert sum(wait == 0 for wait in waits) == 100
    # Another key (another user, or another action) counts apart.
    assert processes[0].hit("user-2", Rate(100, 60)) == 0


def test_hits_leave_the_window() -> None:
    now = 1000.0
    limits = MemoryRateLimits(clock=lambda: now)
    rate = Rate(2, 60)
    assert [limits.hit("k", rate) for _ in range(3)] == [0, 0, 60]
    now += 30
    assert limits.hit("k", rate) == 30  # the oldest hit leaves the window in 30 s
    now += 30
    assert limits.hit("k", rate) == 0


def test_a_rate_of_zero_refuses_everything(make_limits: Callable[[str], RateLimits]) -> None:
    assert make_limits("test-rates-zero").hit("k", Rate(0, 60)) == 60


def test_a_redis_that_does_not_answer_fails_open(caplog: pytest.LogCaptureFixture) -> None:
    """A rate limit must not take the API down: the hit is admitted, not counted, and logged."""
    limits = redis_limits("redis://127.0.0.1:1/0", "test-rates-down")
    assert limits.hit("k", Rate(1, 60)) == 0
    assert limits.hit("k", Rate(1, 60)) == 0
    assert "Rate limit k not checked" in caplog.text


@pytest.fixture(params=["memory", "redis"])
def make_slots(request: pytest.FixtureRequest) -> Callable[[str], StreamSlots]:
    if request.param == "memory":
        return lambda prefix: MemoryStreamSlots()
    redis_url: str = request.getfixturevalue("redis_url")
    return lambda prefix: RedisStreamSlots(redis_limits(redis_url, prefix)._connection)


def test_a_stream_is_admitted_by_its_rate_and_its_slots_together(
    make_slots: Callable[[str], StreamSlots],
) -> None:
    """Over the rate, nothing is taken; under it, the hit counts even when the slots are full
    (as every request a rate lets through does)."""
    slots = make_slots("test-rates-admission")
    rate = RateCheck("streams-of-alice", Rate(3, 60))
    taken = [slots.acquire("alice", 2, rate) for _ in range(3)]
    assert [slot is not None for slot in taken] == [True, True, False]  # the third: slots full
    with pytest.raises(OverRate) as over:
        slots.acquire("alice", 100, rate)  # room for slots, not for the rate
    assert 0 < over.value.wait_seconds <= 60
    assert slots.acquire("bob", 2, RateCheck("streams-of-bob", Rate(3, 60))) is not None


def test_a_stream_over_the_rate_takes_no_slot(make_slots: Callable[[str], StreamSlots]) -> None:
    slots = make_slots("test-rates-admission-no-slot")
    rate = RateCheck("streams-of-erin", Rate(1, 60))
    assert slots.acquire("erin", 2, rate) is not None
    with pytest.raises(OverRate):
        slots.acquire("erin", 2, rate)
    # One slot of two is taken: the refused stream took none.
    assert slots.acquire("erin", 2) is not None
    assert slots.acquire("erin", 2) is None


def test_a_burst_of_streams_gets_exactly_the_rate(make_slots: Callable[[str], StreamSlots]) -> None:
    slots = make_slots("test-rates-admission-burst")
    rate = RateCheck("streams-of-carol", Rate(10, 60))
    start = threading.Barrier(50)

    def admit(_: int) -> str:
        start.wait()
        try:
            return "slot" if slots.acquire("carol", 100, rate) is not None else "full"
        except OverRate:
            return "over"

    with ThreadPoolExecutor(50) as pool:
        outcomes = list(pool.map(admit, range(50)))
    assert sorted(outcomes) == ["over"] * 40 + ["slot"] * 10


def test_a_streams_admission_is_one_call_to_redis(
    redis_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    connection = redis_limits(redis_url, "test-rates-one-call")._connection
    slots = RedisStreamSlots(connection)
    rate = RateCheck("streams-of-dave", Rate(100, 60))
    slots.acquire("dave", 8, rate)  # the script loaded
    sent: list[object] = []
    send = connection.sync_client.execute_command

    def counted(*args: object, **options: object) -> object:
        sent.append(args[0])
        return send(*args, **options)

    monkeypatch.setattr(connection.sync_client, "execute_command", counted)
    for _ in range(5):
        assert slots.acquire("dave", 8, rate) is not None
    assert sent == ["EVALSHA"] * 5
