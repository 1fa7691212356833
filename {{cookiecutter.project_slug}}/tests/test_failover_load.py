"""Redis Sentinel failovers under load: a master, a replica and three Sentinels on loopback, two
Daphne processes, streams spread over both, and a publisher that goes through the REST API of
both and retries a 503 with its ``Idempotency-Key``.

What is counted, per client: every event the publisher saw acknowledged was received, once and in
order, or the client was sent a ``reset`` covering it. Each proof prints what it measured on one
``RELIABILITY:`` line (run with ``-s``).
"""

import asyncio
import os
import signal
import threading
import time
from collections.abc import Awaitable, Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
import redis

from .crowd import Crowd, StreamClient, allow_open_files, wait_for
from .publisher import Outcome, Publisher, account, id_key
from .services import (
    Daphne,
    LiveProject,
    RedisServer,
    SentinelDeployment,
    daphne_server,
    redis_sentinels,
)

pytestmark = [pytest.mark.proof, pytest.mark.failover]

PREFIX = "test-failover"
PUBLISH_PER_SECOND = 20
# A publish retried this long outlasts a failover (Sentinel's election takes a few seconds).
RETRY_FOR_SECONDS = 30


def history_ids(server: RedisServer) -> set[str]:
    with redis.Redis(port=server.port, decode_responses=True) as client:
        return {entry_id for entry_id, _ in client.xrange(f"{PREFIX}:history")}


class Readiness:
    """Samples ``/readyz`` of every server every 50 ms, in a thread, while in its block."""

    def __init__(self, servers: list[Daphne]) -> None:
        self.servers = servers
        self.samples: list[tuple[float, int, int]] = []  # (when, server port, status)
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="readiness")

    def _sample(self) -> None:
        with httpx.Client(timeout=5) as client:
            while not self._done.wait(0.05):
                for server in self.servers:
                    try:
                        status = client.get(f"{server.url}/readyz").status_code
                    except httpx.HTTPError:
                        status = 0
                    self.samples.append((time.monotonic(), server.port, status))

    def __enter__(self) -> "Readiness":
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    def all_ready(self, since: float) -> bool:
        """Whether the newest sample of every server, taken after ``since``, is 200."""
        newest = {port: status for when, port, status in self.samples if when > since}
        return len(newest) == len(self.servers) and set(newest.values()) == {200}

    def unready_servers(self, since: float) -> set[int]:
        """The servers that answered 503 after ``since``."""
        return {port for when, port, status in self.samples if when > since and status == 503}


@dataclass
class Failover:
    """Seconds from the fault: until every running Sentinel named the replica, until an event
    published through the new master reached a client, then every client; until every server
    was ready again."""

    promoted: float
    first_delivered: float
    all_delivered: float
    ready: float
    unready_servers: int  # servers whose /readyz answered 503 in between


def new_master_events(client: StreamClient, after_wall_ms: int) -> list[float]:
    """When ``client`` received events of the new master: Redis ids are its wall clock in ms,
    and the new master's come after the fault."""
    return [
        message.received_at
        for message in client.events
        if message.id and message.event != "reset" and id_key(message.id)[0] > after_wall_ms
    ]


async def fail_over(
    deployment: SentinelDeployment,
    clients: list[StreamClient],
    servers: list[Daphne],
    fault: signal.Signals,
) -> Failover:
    """Sends ``fault`` to the master, then waits for each step of the failover (bounded)."""
    with Readiness(servers) as readiness:
        await wait_for(lambda: readiness.all_ready(0), within=10)
        faulted_wall_ms = int(time.time() * 1000)
        faulted = time.monotonic()
        os.kill(deployment.master.pid, fault)
        assert await wait_for(deployment.replica_promoted, within=30, blocking=True)
        promoted = time.monotonic() - faulted
        assert await wait_for(
            lambda: any(new_master_events(c, faulted_wall_ms) for c in clients), within=30
        ), "no event reached a client through the new master"
        first = min(min(new_master_events(c, faulted_wall_ms), default=1e18) for c in clients)
        assert await wait_for(
            lambda: all(new_master_events(c, faulted_wall_ms) for c in clients), within=30
        ), "some clients never received an event through the new master"
        every = max(min(new_master_events(c, faulted_wall_ms)) for c in clients)
        assert await wait_for(lambda: readiness.all_ready(time.monotonic() - 0.2), within=30)
        ready = time.monotonic() - faulted
        unready = len(readiness.unready_servers(faulted))
    return Failover(promoted, first - faulted, every - faulted, ready, unready)


async def steady_delivery(clients: list[StreamClient], events: int) -> None:
    """Until every client received ``events`` more events (at most 30 s)."""
    baseline = [len(client.events) for client in clients]
    assert await wait_for(
        lambda: all(len(c.events) >= n + events for c, n in zip(clients, baseline, strict=True)),
        within=30,
    ), "events do not flow to every client"


async def rejoin(deployment: SentinelDeployment, bring_back: Callable[[], None]) -> float:
    """After a failover (roles swapped): brings the old master back; seconds until the Sentinels
    see it as the new master's replica, in sync."""
    started = time.monotonic()
    await asyncio.to_thread(bring_back)
    assert await wait_for(deployment.watched, within=60, blocking=True), (
        "the old master never became a replica"
    )
    return time.monotonic() - started


@dataclass
class Run:
    failovers: list[Failover]
    rejoined: float  # seconds until the old master was a replica again (the first time)
    settled: bool  # whether every client came to have the last acknowledged event


async def under_load(
    clients: list[StreamClient],
    publisher: Publisher,
    scenario: Callable[[], Awaitable[tuple[list[Failover], float]]],
) -> Run:
    """Runs ``scenario`` while the clients stream and the publisher publishes, between two
    stretches of steady delivery; then stops publishing and waits for every client to have the
    last acknowledged event (delivery is in order: then it has them all, or a reset past them)."""
    async with Crowd(clients) as crowd:
        await crowd.wait_opened(within=60)
        publisher.start()
        try:
            await steady_delivery(clients, events=20)
            failovers, rejoined = await scenario()
            await steady_delivery(clients, events=20)
        finally:
            await asyncio.to_thread(publisher.stop)
        last = id_key(max((o.published_id for o in publisher.ok()), key=id_key))
        settled = await wait_for(
            lambda: all(c.last_event_id and id_key(c.last_event_id) >= last for c in clients),
            within=30,
        )
        assert crowd.running() == len(clients)
    return Run(failovers, rejoined, settled)


@dataclass
class Counts:
    acknowledged: int
    retried: int  # acknowledged after one or more 503s (or lost answers)
    failed: int  # not acknowledged after RETRY_FOR_SECONDS of retries
    delivered: int
    covered_by_reset: int
    resets: int
    lost: int
    out_of_order: int
    unacknowledged_delivered: int
    missing_from_history: int
    reconnects: int
    outcomes: list[Outcome] = field(repr=False, default_factory=list)


def count(clients: list[StreamClient], publisher: Publisher, survivor: RedisServer) -> Counts:
    ok = publisher.ok()
    ok_ids = [outcome.published_id for outcome in ok]
    history = history_ids(survivor)
    oldest = min(map(id_key, history))
    # Acknowledged, yet not in the history that carried on (and not trimmed from it): an old
    # master had acknowledged them and died before its replica had them.
    missing = {i for i in ok_ids if i not in history and id_key(i) >= oldest}
    accounts = [account(client, ok_ids, missing) for client in clients]
    delivered_ids = {m.id for c in clients for m in c.events if m.event != "reset"}
    return Counts(
        acknowledged=len(ok),
        retried=sum(outcome.attempts > 1 for outcome in ok),
        failed=len(publisher.outcomes) - len(ok),
        delivered=sum(a.delivered for a in accounts),
        covered_by_reset=sum(a.covered_by_reset for a in accounts),
        resets=sum(len(c.resets) for c in clients),
        lost=sum(a.lost for a in accounts),
        out_of_order=sum(a.out_of_order for a in accounts),
        unacknowledged_delivered=len(delivered_ids - set(ok_ids)),
        missing_from_history=len(missing),
        reconnects=sum(len(c.connections) - 1 for c in clients),
        outcomes=publisher.outcomes,
    )


@contextmanager
def deployment_under_load(
    live_project: LiveProject, directory: Path, streams: int, servers: int
) -> Iterator[tuple[SentinelDeployment, list[Daphne], list[StreamClient], Publisher]]:
    """A Sentinel deployment, ``servers`` Daphnes on it, ``streams`` clients spread over them
    (alice's and bob's), and a publisher (not started) through all of them."""
    allow_open_files(4 * streams)
    tokens = live_project.tokens
    with ExitStack() as stack:
        deployment = stack.enter_context(redis_sentinels(directory / "redis"))
        daphnes = [
            stack.enter_context(
                daphne_server(
                    live_project,
                    directory,
                    REDIS_URL=deployment.url,
                    EVENTS_REDIS_PREFIX=PREFIX,
                    # Streams also end every few seconds: clients resume by Last-Event-ID
                    # before, during and after each failover.
                    EVENTS_STREAM_MAX_SECONDS="8",
                    EVENTS_RETRY_MILLISECONDS="1000",
                )
            )
            for _ in range(servers)
        ]
        clients = [
            StreamClient(daphnes[n % servers].port, tokens["alice" if n // servers % 2 else "bob"])
            for n in range(streams)
        ]
        publisher = Publisher(daphnes, tokens["staff"], PUBLISH_PER_SECOND, RETRY_FOR_SECONDS)
        yield deployment, daphnes, clients, publisher


def report(name: str, counts: Counts, failovers: list[Failover], **extra: object) -> str:
    steps = " ".join(
        f"failover{n}=(promoted {f.promoted:.2f}s, first event {f.first_delivered:.2f}s, "
        f"every client {f.all_delivered:.2f}s, ready {f.ready:.2f}s, "
        f"servers 503 {f.unready_servers})"
        for n, f in enumerate(failovers, 1)
    )
    figures = " ".join(
        f"{name}={value}" for name, value in vars(counts).items() if name != "outcomes"
    )
    more = " ".join(f"{name}={value}" for name, value in extra.items())
    return f"RELIABILITY: {name} {figures} {steps} {more}"


@pytest.mark.timeout(240)
def test_two_master_kills_under_200_streams_lose_no_acknowledged_event(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """The master is SIGKILLed under 200 streams on two Daphnes and 20 publishes/s; it comes back
    and rejoins as a replica; then the new master is killed too. Both times, every acknowledged
    event reaches every client once and in order (or a reset covers it), /readyz answers 503
    during the failover and 200 after it, and live delivery goes on through the new master."""
    with deployment_under_load(live_project, tmp_path, streams=200, servers=2) as (
        deployment,
        daphnes,
        clients,
        publisher,
    ):
        run = asyncio.run(
            under_load(clients, publisher, lambda: _kill_twice(deployment, daphnes, clients))
        )
        counts = count(clients, publisher, deployment.master)
        logs = [daphne.log() for daphne in daphnes]
    print(report("sentinel-failover-under-load", counts, run.failovers, rejoined_s=run.rejoined))
    assert all(client.failure is None for client in clients)
    assert run.settled, "some clients never received the last events"
    assert counts.acknowledged > 100
    assert counts.retried > 0, "no publish met a failover"
    assert counts.failed == 0
    assert counts.lost == 0
    assert counts.out_of_order == 0
    assert counts.unacknowledged_delivered == 0
    for failover in run.failovers:
        assert failover.unready_servers == len(daphnes)
    for log in logs:
        assert "Event feed reconnected to Redis" in log


async def _kill_twice(
    deployment: SentinelDeployment, daphnes: list[Daphne], clients: list[StreamClient]
) -> tuple[list[Failover], float]:
    first = await fail_over(deployment, clients, daphnes, signal.SIGKILL)
    killed = deployment.master
    deployment.swap_roles()
    rejoined = await rejoin(deployment, killed.start)  # empty: no persistence
    await steady_delivery(clients, events=20)
    second = await fail_over(deployment, clients, daphnes, signal.SIGKILL)
    deployment.swap_roles()
    return [first, second], rejoined


@pytest.mark.timeout(240)
def test_a_partitioned_master_with_a_sentinel_lost_loses_no_acknowledged_event(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """One of the three Sentinels is lost (the first one the servers ask). Then the master stops
    answering (SIGSTOP: a network partition, on loopback) under 50 streams on two Daphnes and 20
    publishes/s: the two Sentinels left promote the replica, the servers give up on the silent
    master and go to the new one. When the old master answers again (SIGCONT), Sentinel turns it
    into a replica: whatever it still held that the new master does not, nothing acknowledged."""
    with deployment_under_load(live_project, tmp_path, streams=50, servers=2) as (
        deployment,
        daphnes,
        clients,
        publisher,
    ):
        deployment.lose_sentinel()
        run = asyncio.run(
            under_load(clients, publisher, lambda: _partition_master(deployment, daphnes, clients))
        )
        counts = count(clients, publisher, deployment.master)
    print(report("sentinel-partitioned-master", counts, run.failovers, rejoined_s=run.rejoined))
    assert all(client.failure is None for client in clients)
    assert run.settled, "some clients never received the last events"
    assert counts.retried > 0, "no publish met the failover"
    assert counts.failed == 0
    assert counts.lost == 0
    assert counts.out_of_order == 0
    assert counts.unacknowledged_delivered == 0
    assert run.failovers[0].unready_servers == len(daphnes)


async def _partition_master(
    deployment: SentinelDeployment, daphnes: list[Daphne], clients: list[StreamClient]
) -> tuple[list[Failover], float]:
    failover = await fail_over(deployment, clients, daphnes, signal.SIGSTOP)
    partitioned = deployment.master
    deployment.swap_roles()
    rejoined = await rejoin(deployment, lambda: os.kill(partitioned.pid, signal.SIGCONT))
    return [failover], rejoined
