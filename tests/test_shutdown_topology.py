"""SIGTERM of one Daphne behind nginx while it serves hundreds of streams, as in a rolling deploy.

The generated nginx config in a real nginx, in front of two Daphne processes sharing one Redis;
500 EventSource-like clients through nginx, and a publisher publishing through nginx the whole
time. One Daphne gets SIGTERM. Its graceful shutdown (events/delivery/shutdown.py) must:

- exit within its grace period (plus what the interpreter takes to exit);
- tell each of its clients, before their stream ends, to come back after a ``retry:`` drawn from
  the reconnect window, so that they come back spread over the window, not in one burst;
- let them come back, through nginx, to the other Daphne, which replays what they missed: every
  client receives every event published, exactly once, in order.
"""

import asyncio
import json
import os
import shutil
import signal
import statistics
import time
from collections import Counter
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from .helpers import project_python
from .topology.crowd import Client, Crowd
from .topology.processes import Server
from .topology.stack import Stack, loopback_stack

# The scenario itself is bounded by SCENARIO_SECONDS; the rest is for the fixture, which may have
# to bake the project and build its virtualenv.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

CLIENTS = 500
# Shorter than the defaults (3 s, 10 s), to keep the test quick; the grace period is the default.
RETRY_MILLISECONDS = 1000
RECONNECT_WINDOW_SECONDS = 5
GRACE_SECONDS = 3
SETTINGS = {
    "EVENTS_RETRY_MILLISECONDS": str(RETRY_MILLISECONDS),
    "EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS": str(RECONNECT_WINDOW_SECONDS),
    "EVENTS_SHUTDOWN_GRACE_SECONDS": str(GRACE_SECONDS),
}
GOODBYE = "server shutting down, reconnect"
PUBLISH_PER_SECOND = 10
# What the process may take to exit after its grace period: Daphne's own shutdown, then the
# interpreter's (which takes 0.5-2 s here, on two cores shared with 500 clients).
EXIT_MARGIN_SECONDS = 3
# Clients connect this far apart: 500 in 2.5 s, as users arrive rather than in one burst.
STAGGER_SECONDS = 0.005
# Publishing goes on this long before the SIGTERM, and after every client is back.
PUBLISH_AROUND_SECONDS = 2
SCENARIO_SECONDS = 90
STREAM_PATH = "/api/events/stream/"
# Each stream through nginx holds two of its connections (the client's, the upstream's): with the
# 1024 of the nginx image's config, 500 streams leave too little room, and nginx closes new
# connections ("worker_connections are not enough").
NGINX_WORKER_CONNECTIONS = 4 * CLIENTS


@pytest.fixture(scope="module")
def stack(baked, redis_server: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Stack]:
    directory = tmp_path_factory.mktemp("shutdown-topology")
    # A copy: running the project writes bytecode, and bakes are shared by other tests.
    project = Path(shutil.copytree(baked(http_topology="daphne"), directory / "project"))
    python = project_python(project)
    with loopback_stack(
        project,
        python,
        "daphne",
        redis_server,
        directory,
        extra_settings=SETTINGS,
        nginx_worker_connections=NGINX_WORKER_CONNECTIONS,
    ) as running:
        yield running


@dataclass
class Published:
    """What the publisher published: (id, n) of each event acknowledged, in order; the n and the
    error of each publish that failed."""

    events: list[tuple[str, int]] = field(default_factory=list)
    failures: list[tuple[int, str]] = field(default_factory=list)


@asynccontextmanager
async def publishing(http: httpx.AsyncClient, stack: Stack) -> AsyncIterator[Published]:
    """Publish ``{"n": 0}``, ``{"n": 1}``... to everyone through nginx, PUBLISH_PER_SECOND times a
    second, until the block ends."""
    published, stop = Published(), asyncio.Event()

    async def publish_steadily() -> None:
        loop = asyncio.get_running_loop()
        n, next_at = 0, loop.time()
        while not stop.is_set():
            try:
                response = await http.post(
                    f"{stack.url}/api/events/",
                    json={"type": "notice", "data": {"n": n}},
                    headers=stack.auth,
                )
            except httpx.HTTPError as error:
                published.failures.append((n, repr(error)))
            else:
                if response.status_code == 201:
                    published.events.append((response.json()["id"], n))
                else:
                    published.failures.append((n, f"{response.status_code} {response.text[:200]}"))
            n += 1
            next_at += 1 / PUBLISH_PER_SECOND
            await asyncio.sleep(max(0.0, next_at - loop.time()))

    publisher = asyncio.create_task(publish_steadily())
    try:
        yield published
    finally:
        stop.set()
        await publisher


async def open_streams(http: httpx.AsyncClient, server: Server, stack: Stack) -> int:
    response = await http.get(f"{server.url}/api/events/metrics/", headers=stack.auth)
    assert response.status_code == 200, response.text
    return response.json()["streams"]


def daphne_pid(server: Server) -> int:
    """The Daphne process itself: Server runs it under `timeout`, whose only child it is."""
    assert server.process is not None
    wrapper = server.process.pid
    (child,) = Path(f"/proc/{wrapper}/task/{wrapper}/children").read_text().split()
    assert b"daphne" in Path(f"/proc/{child}/cmdline").read_bytes(), child
    return int(child)


async def wait_for_exit(server: Server, timeout: float) -> float | None:
    """Seconds until ``server``'s process exits, or None if it still runs after ``timeout``."""
    assert server.process is not None
    started = time.monotonic()
    while server.process.poll() is None:
        if time.monotonic() - started > timeout:
            return None
        await asyncio.sleep(0.01)
    return time.monotonic() - started


def id_key(event_id: str) -> tuple[int, int]:
    """Event ids are ``<milliseconds>-<sequence>``, in the order of publication."""
    milliseconds, sequence = event_id.split("-")
    return int(milliseconds), int(sequence)


def streaming(client: Client) -> bool:
    """Its current response is open, and the server has subscribed it."""
    connection = client.connection
    return connection is not None and connection.subscribed and connection.ended is None


def received(client: Client) -> list[tuple[str, int]]:
    return [(event.id, json.loads(event.data)["n"]) for event in client.events]


def histogram(seconds: list[float]) -> str:
    """``"1s:40 2s:52 ..."``: how many of ``seconds`` fall in each whole second."""
    counts = Counter(int(value) for value in seconds)
    return " ".join(f"{second}s:{counts[second]}" for second in range(min(counts), max(counts) + 1))


@dataclass
class Outcome:
    split: list[int]  # open streams on each Daphne before the SIGTERM; the first one gets it
    sigterm: float  # time.monotonic()
    exit_seconds: float
    survivor_streams: int  # open on the other Daphne once every client is back


async def sigterm_one_daphne(stack: Stack, crowd: Crowd) -> Outcome:
    """While the crowd streams and events are published, SIGTERM the first Daphne; return once
    every client streams again (all of its clients gone to the other)."""
    victim, survivor = stack.daphnes
    async with httpx.AsyncClient(timeout=10) as http:
        split = [await open_streams(http, daphne, stack) for daphne in stack.daphnes]
        assert sum(split) == CLIENTS, split
        # least_conn: each new stream goes to the Daphne with fewer open ones.
        assert min(split) >= CLIENTS // 4, f"nginx did not balance the streams: {split}"
        await asyncio.sleep(PUBLISH_AROUND_SECONDS)

        pid = daphne_pid(victim)
        sigterm = time.monotonic()
        os.kill(pid, signal.SIGTERM)
        exit_seconds = await wait_for_exit(victim, GRACE_SECONDS + 2 * EXIT_MARGIN_SECONDS)
        assert exit_seconds is not None, (
            f"Daphne still runs {GRACE_SECONDS + 2 * EXIT_MARGIN_SECONDS} s after SIGTERM"
        )
        # The last clients come back RETRY + WINDOW after the SIGTERM.
        await crowd.wait_until(
            lambda: (
                sum(len(client.connections) > 1 for client in crowd.clients) >= split[0]
                and all(streaming(client) for client in crowd.clients)
            ),
            timeout=RETRY_MILLISECONDS / 1000 + RECONNECT_WINDOW_SECONDS + 15,
            what="every client streaming again",
        )
        survivor_streams = await open_streams(http, survivor, stack)
    return Outcome(split, sigterm, exit_seconds, survivor_streams)


async def scenario(stack: Stack) -> tuple[Crowd, Published, Outcome]:
    nginx = urlsplit(stack.url)
    assert nginx.hostname
    assert nginx.port
    crowd = Crowd(nginx.hostname, nginx.port, STREAM_PATH, stack.auth, CLIENTS, STAGGER_SECONDS)
    async with asyncio.timeout(SCENARIO_SECONDS), crowd:
        await crowd.wait_until(
            lambda: all(streaming(client) for client in crowd.clients),
            timeout=30,
            what=f"all {CLIENTS} clients subscribed",
        )
        async with httpx.AsyncClient(timeout=10) as http, publishing(http, stack) as published:
            outcome = await sigterm_one_daphne(stack, crowd)
            await asyncio.sleep(PUBLISH_AROUND_SECONDS)
        assert published.events, published.failures
        last = id_key(published.events[-1][0])
        await crowd.wait_until(
            lambda: all(
                client.last_event_id and id_key(client.last_event_id) >= last
                for client in crowd.clients
            ),
            timeout=15,
            what="every client received the last event published",
        )
    return crowd, published, outcome


def test_sigterm_of_a_daphne_behind_nginx_moves_its_streams_spread_out_and_loses_no_event(
    stack: Stack,
) -> None:
    began = time.monotonic()
    crowd, published, outcome = asyncio.run(scenario(stack))
    split, sigterm = outcome.split, outcome.sigterm

    moved = [client for client in crowd.clients if len(client.connections) > 1]
    stayed = [client for client in crowd.clients if len(client.connections) == 1]
    # Exactly the clients of the Daphne that stopped came back, each at its first attempt (none
    # was refused, nor sent to the stopping Daphne again, which would have ended it at once).
    assert len(moved) == split[0], (len(moved), split)
    assert len(stayed) == split[1], (len(stayed), split)
    bounced = [client.connections for client in moved if len(client.connections) != 2]
    assert not bounced, f"{len(bounced)} clients did not get back at once, e.g. {bounced[0]}"
    # All of them through nginx to the other Daphne.
    assert outcome.survivor_streams == CLIENTS, outcome.survivor_streams

    window = (RETRY_MILLISECONDS, RETRY_MILLISECONDS + RECONNECT_WINDOW_SECONDS * 1000)
    reconnect_seconds = []
    for client in moved:
        ended, again = client.connections
        # Told when to come back, then the response ended: not a broken connection.
        assert ended.error is None, ended
        assert ended.ended is not None
        assert ended.ended > sigterm
        retries = [ms for at, ms in ended.retries if at >= sigterm]
        assert len(retries) == 1, ended.retries
        assert window[0] <= retries[0] <= window[1], (retries, window)
        assert [text for at, text in ended.comments if at >= sigterm] == [GOODBYE], ended.comments
        assert again.status == 200
        # Resumed after the last event it had received.
        assert again.last_event_id == client.events[ended.events - 1].id
        reconnect_seconds.append(again.opened - sigterm)

    # Every client received every event acknowledged (201), exactly once, in order. A publish in
    # flight when the Daphne stops may fail (nginx answers 502: it cannot retry a POST) and yet
    # have been published: such an event must reach every client once, like the others.
    acknowledged = published.events
    failed = {n for n, _ in published.failures}
    lost = sum(len(set(acknowledged) - set(received(client))) for client in crowd.clients)
    duplicated = sum(len(client.events) - len(set(received(client))) for client in crowd.clients)
    sequences = Counter(tuple(received(client)) for client in crowd.clients)
    sequence = list(sequences.most_common(1)[0][0])
    unacknowledged = [event for event in sequence if event not in set(acknowledged)]
    print(
        f"RELIABILITY: shutdown topology: {CLIENTS} SSE clients through nginx over 2 Daphnes "
        f"{split}; SIGTERM of one -> exit in {outcome.exit_seconds:.2f} s (grace "
        f"{GRACE_SECONDS} s); {len(moved)} goodbyes, retry window {window[0]}-{window[1]} ms; "
        f"reconnects after SIGTERM min {min(reconnect_seconds):.2f} s, median "
        f"{statistics.median(reconnect_seconds):.2f} s, max {max(reconnect_seconds):.2f} s, "
        f"per second: {histogram(reconnect_seconds)}; on the other Daphne: "
        f"{outcome.survivor_streams} streams; events published {len(acknowledged)} (failed "
        f"publishes {len(failed)}, of which delivered anyway {len(unacknowledged)}), lost {lost}, "
        f"duplicated {duplicated}; scenario {time.monotonic() - began:.1f} s"
    )
    assert outcome.exit_seconds <= GRACE_SECONDS + EXIT_MARGIN_SECONDS, outcome.exit_seconds
    # Spread over the window, not in one burst.
    spread = max(reconnect_seconds) - min(reconnect_seconds)
    assert spread > RECONNECT_WINDOW_SECONDS / 2, histogram(reconnect_seconds)
    assert lost == 0
    assert duplicated == 0
    assert len(sequences) == 1, f"clients received {len(sequences)} different sequences"
    assert [event for event in sequence if event not in unacknowledged] == acknowledged
    assert all(n in failed for _, n in unacknowledged), (unacknowledged, published.failures)
    keys = [id_key(event_id) for event_id, _ in sequence]
    assert keys == sorted(keys), "events out of order"
