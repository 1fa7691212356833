"""Redis Sentinel (``REDIS_URL=redis+sentinel://...``): a real master, replica and three Sentinels,
and a real Daphne.

The master is killed under an open stream. Once Sentinel has promoted the replica, the same
Daphne, never restarted, publishes through the new master, counts its rate limits there, reports
ready, and its feed delivers live again from there, without a ``reset``.
"""

import os
import signal
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import redis

from .services import (
    LiveProject,
    SentinelDeployment,
    api,
    daphne_server,
    redis_sentinels,
    wait_until,
)
from .sse import EventStream, open_stream

pytestmark = pytest.mark.timeout(60)

PREFIX = "test-sentinel"


def newest_history_id(port: int) -> str | None:
    with redis.Redis(port=port, decode_responses=True) as client:
        newest = client.xrevrange(f"{PREFIX}:history", count=1)
    return newest[0][0] if newest else None


def try_publish(client: httpx.Client, event_type: str) -> str | None:
    """The new event's id, or None when the API answers 503 (no Redis master)."""
    response = client.post("/api/events/", json={"type": event_type, "data": None})
    if response.status_code == 503:
        return None
    assert response.status_code == 201, response.text
    return response.json()["id"]


def next_event(stream: EventStream) -> tuple[str, str | None]:
    [message] = stream.take(1)
    return message.event, message.id


def test_after_a_failover_publishing_and_live_delivery_go_through_the_new_master(
    live_project: LiveProject, tmp_path: Path
) -> None:
    tokens = live_project.tokens
    with ExitStack() as stack:
        deployment: SentinelDeployment = stack.enter_context(redis_sentinels(tmp_path / "redis"))
        daphne = stack.enter_context(
            daphne_server(
                live_project,
                tmp_path,
                REDIS_URL=deployment.url,
                EVENTS_REDIS_PREFIX=PREFIX,
                EVENTS_HEARTBEAT_SECONDS="0.5",
                # A limit that is never reached, so that every publish counts in the cache.
                EVENTS_PUBLISH_RATE="100000/min",
            )
        )
        staff = stack.enter_context(api(daphne, tokens["staff"]))
        alice = stack.enter_context(api(daphne, tokens["alice"]))
        stream = stack.enter_context(open_stream(alice))
        stream.take_all(2)  # retry, then ": connected": from here on nothing is missed

        before = [try_publish(staff, "before") for _ in range(3)]
        assert [next_event(stream) for _ in before] == [("before", i) for i in before]
        assert httpx.get(f"{daphne.url}/readyz", timeout=10).status_code == 200
        # On the replica before the kill: what this test is about is finding the new master, not
        # the events an old master acknowledged and never passed on (docs/deployment.md).
        wait_until(lambda: newest_history_id(deployment.replica.port) == before[-1], timeout=10)

        os.kill(deployment.master.pid, signal.SIGKILL)
        killed = time.monotonic()
        promoted: float | None = None
        refused = 0
        # 503 until a Sentinel names the replica and a new connection finds it there.
        while (first := try_publish(staff, "after")) is None:
            refused += 1
            if promoted is None and deployment.replica.port in deployment.master_ports():
                promoted = time.monotonic()
            assert time.monotonic() - killed < 30, "no new master to publish to"
            time.sleep(0.1)
        accepted = time.monotonic()
        assert refused > 0
        assert newest_history_id(deployment.replica.port) == first
        assert next_event(stream) == ("after", first)  # not a reset: history came along
        delivered = time.monotonic()

        # Live from here on: each event arrives before the next is published.
        unchecked = daphne.log().count("not checked")  # rate limits skipped while Redis was away
        for _ in range(3):
            event_id = try_publish(staff, "live")
            assert next_event(stream) == ("live", event_id)
        ready = httpx.get(f"{daphne.url}/readyz", timeout=10)
        assert ready.status_code == 200, ready.text
        # The rate limit counted the publishes after the failover on the new master.
        with redis.Redis(port=deployment.replica.port) as new_master:
            counted = new_master.zcard(
                f"{PREFIX}:rate:throttle_events.publish_{tokens['staff_pk']}"
            )
        assert counted >= 4
        assert daphne.log().count("not checked") == unchecked
    assert "Event feed reconnected to Redis" in daphne.log()
    print(
        f"RELIABILITY: sentinel failover: master SIGKILLed; a Sentinel named the replica after "
        f"{(promoted or accepted) - killed:.2f}s, first publish accepted after "
        f"{accepted - killed:.2f}s ({refused} answered 503 before), first event delivered "
        f"through the new master after {delivered - killed:.2f}s"
    )


def test_manage_py_check_refuses_a_malformed_sentinel_url(live_project: LiveProject) -> None:
    malformed = live_project.manage("check", REDIS_URL="redis+sentinel://:secret@127.0.0.1:26379")
    assert malformed.returncode != 0
    assert "events.E003" in malformed.stderr
    assert "no service name" in malformed.stderr
    assert "secret" not in malformed.stderr
    well_formed = live_project.manage(
        "check", REDIS_URL="redis+sentinel://127.0.0.1:26379,127.0.0.1:26380/events/0"
    )
    assert well_formed.returncode == 0, well_formed.stderr
