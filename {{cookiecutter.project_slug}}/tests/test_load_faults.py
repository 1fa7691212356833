"""Faults under load: Redis restarted under 500 streams, big replays, slow readers, churn.

Every proof runs real redis-server and Daphne processes on loopback, with clients from
``crowd.py``, and prints what it measured on one ``RELIABILITY:`` line (run with ``-s``).
"""

import asyncio
import json
import os
import socket
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import httpx
import pytest
import redis

from .crowd import (
    TCP_ESTABLISHED,
    Crowd,
    StreamClient,
    allow_open_files,
    open_and_close,
    stalled_socket,
    tcp_state,
    wait_for,
)
from .publisher import Publisher, account, id_key
from .services import (
    Daphne,
    LiveProject,
    RedisServer,
    api,
    daphne_server,
    metrics,
    publish,
    redis_server,
)

# --- 1. Redis restarted under load --------------------------------------------------------------

RESTART_CLIENTS = 500
PUBLISH_PER_SECOND = 20


@pytest.mark.proof
@pytest.mark.timeout(120)
def test_redis_restart_under_500_streams_and_steady_publishing_loses_no_event(
    live_project: LiveProject, tmp_path
) -> None:
    """Redis stops for 2 s and comes back empty while 500 clients stream and events are
    published at up to 20/s (as fast as the busy server answers, 8 requests at a time). Streams
    also end every few seconds (EVENTS_STREAM_MAX_SECONDS), so clients reconnect with
    Last-Event-ID all along, before, during and after the outage. Every acknowledged event
    reaches every client, or the client is told to reload (reset)."""
    allow_open_files(4 * RESTART_CLIENTS)
    tokens = live_project.tokens
    started = time.monotonic()
    with (
        redis_server(tmp_path) as own_redis,
        daphne_server(
            live_project,
            tmp_path,
            REDIS_URL=own_redis.url,
            EVENTS_STREAM_MAX_SECONDS="6",
            EVENTS_RETRY_MILLISECONDS="1000",
        ) as daphne,
    ):
        clients = [
            StreamClient(daphne.port, tokens["alice" if n % 2 else "bob"], keep_data=False)
            for n in range(RESTART_CLIENTS)
        ]
        publisher = Publisher([daphne], tokens["staff"], PUBLISH_PER_SECOND)
        with api(daphne, tokens["staff"]) as staff:
            run = asyncio.run(_restart_redis_under(clients, publisher, own_redis, staff))
        log = daphne.log()
    duration = time.monotonic() - started

    ok = publisher.ok()
    ok_ids = [outcome.published_id for outcome in ok]
    old_ids = {outcome.published_id for outcome in ok if outcome.answered_at < run.restarted_at}
    new_ids = [event_id for event_id in ok_ids if event_id not in old_ids]
    failed = [outcome for outcome in publisher.outcomes if not outcome.acknowledged]
    accounts = [account(client, ok_ids, old_ids) for client in clients]
    delivered = [result.delivered for result in accounts]
    resets = [len(client.resets) for client in clients]
    reconnects = [len(client.connections) - 1 for client in clients]
    replayed = sum(
        connection.events
        for client in clients
        for connection in client.connections
        if connection.last_event_id
    )
    lost = sum(result.lost for result in accounts)
    live_after_reset = sum(
        bool(c.resets)
        and any(m.event != "reset" and m.received_at > c.resets[-1].received_at for m in c.events)
        for c in clients
    )
    out_of_order = sum(result.out_of_order for result in accounts)
    unacknowledged = {m.id for c in clients for m in c.events if m.event != "reset"} - set(ok_ids)
    print(
        f"RELIABILITY: redis-restart clients={len(clients)} published_ok={len(ok)} "
        f"(old_redis={len(old_ids)} new_redis={len(new_ids)}) failed_publishes={len(failed)} "
        f"(statuses {sorted({o.status for o in failed})}) "
        f"delivered_total={sum(delivered)} per_client_min={min(delivered)} "
        f"max={max(delivered)} covered_by_reset={sum(r.covered_by_reset for r in accounts)} "
        f"reset_per_client_min={min(resets)} max={max(resets)} "
        f"clients_with_live_events_after_their_reset={live_after_reset} "
        f"reconnects_total={sum(reconnects)} events_on_resumed_connections={replayed} "
        f"delivered_unacknowledged={len(unacknowledged)} lost={lost} "
        f"out_of_order={out_of_order} "
        f"feed_back_after_s={run.feed_back_after and round(run.feed_back_after, 1)} "
        f"duration_s={duration:.1f}"
    )
    assert all(client.failure is None for client in clients)
    assert run.feed_back_after is not None, "the event feed did not reconnect to Redis"
    assert run.all_reset, "a client was not told that its history is gone"
    assert run.settled, "some clients never received the last events"
    # The run spanned the outage: events published on both sides of it, and refused during it.
    assert len(old_ids) > 20
    assert len(new_ids) > 20
    assert failed
    assert min(id_key(i) for i in new_ids) > max(id_key(i) for i in old_ids)
    assert live_after_reset == len(clients), "a client received nothing after its reset"
    assert lost == 0
    assert out_of_order == 0
    assert "Event feed reconnected to Redis" in log


@dataclass
class RestartRun:
    restarted_at: float
    feed_back_after: float | None  # seconds after Redis was started again; None: never
    all_reset: bool  # whether every client received a reset
    settled: bool  # whether every client then had the last event (or a reset past it)


async def _restart_redis_under(
    clients: list[StreamClient], publisher: Publisher, own_redis: RedisServer, staff: httpx.Client
) -> RestartRun:
    async with Crowd(clients) as crowd:
        await crowd.wait_opened(within=60)
        publisher.start()
        try:
            await asyncio.sleep(3)
            await asyncio.to_thread(own_redis.stop)
            await asyncio.sleep(2)
            restarted_at = time.monotonic()
            await asyncio.to_thread(own_redis.start)  # same port, empty
            # The feed reconnects with backoff; events published before it is back are covered
            # by the reset it sends. Publishing goes on long enough to prove live delivery too.
            feed_back = await wait_for(
                lambda: metrics(staff)["feed_problem"] is None, within=20, blocking=True
            )
            feed_back_after = time.monotonic() - restarted_at if feed_back else None
            # Every client learns that history is gone, from the feed or from its own replay;
            # then events flow long enough for each to receive some live.
            all_reset = await wait_for(lambda: all(c.resets for c in clients), within=20)
            await asyncio.sleep(2)
        finally:
            await asyncio.to_thread(publisher.stop)
        # Delivery is in order: a client that has the last event (or a reset past it) is done.
        last = id_key(publisher.ok()[-1].published_id)
        settled = await wait_for(
            lambda: all(c.last_event_id and id_key(c.last_event_id) >= last for c in clients),
            within=20,
        )
        assert crowd.running() == len(clients)
    return RestartRun(restarted_at, feed_back_after, all_reset, settled)


@pytest.mark.proof
@pytest.mark.timeout(60)
def test_a_client_reset_while_history_is_empty_misses_nothing_when_it_reconnects(
    live_project: LiveProject, tmp_path
) -> None:
    """Redis comes back empty, and its clients are reset before anything is published again.
    A client whose stream then ends before the next event must still resume exactly: an event
    published while it reconnects reaches it, or it is reset again. (A reset with an empty id
    leaves EventSource without a Last-Event-ID: it reconnects as a new client, and misses that
    event without a word. The restart proof above meets this now and then.)"""
    with (
        redis_server(tmp_path) as own_redis,
        daphne_server(
            live_project,
            tmp_path,
            REDIS_URL=own_redis.url,
            EVENTS_STREAM_MAX_SECONDS="3",
            EVENTS_RETRY_MILLISECONDS="2000",
        ) as daphne,
        api(daphne, live_project.tokens["staff"]) as staff,
    ):
        client = StreamClient(daphne.port, live_project.tokens["alice"])
        away, returned = asyncio.run(_reconnect_after_empty_reset(client, own_redis, staff))
    reset = client.resets[0]
    print(
        f"RELIABILITY: empty-history-reset reset_id={reset.id!r} "
        f"resumed_with={client.connections[-1].last_event_id!r} "
        f"received={[(m.event, m.id) for m in client.events]}"
    )
    received = {m.id for m in client.events}
    reset_again = any(r.received_at > reset.received_at for r in client.resets)
    assert returned in received
    assert away in received or reset_again, "an event published while it reconnected is lost"


async def _reconnect_after_empty_reset(
    client: StreamClient, own_redis: RedisServer, staff: httpx.Client
) -> tuple[str, str]:
    """The ids of an event published while the client was away, and of one after it was back."""
    async with Crowd([client]):
        await client.opened.wait()
        before = await asyncio.to_thread(publish, staff, "before")
        assert await wait_for(lambda: any(m.id == before for m in client.events), within=10)
        await asyncio.to_thread(own_redis.stop)
        await asyncio.to_thread(own_redis.start)  # empty; nothing is published until the reset
        assert await wait_for(lambda: client.resets, within=20), "no reset after the restart"
        connection = client.connections[-1]
        # Its stream ends (EVENTS_STREAM_MAX_SECONDS); the client waits its retry: 2 s away.
        assert await wait_for(lambda: connection.ended, within=10)
        away = await asyncio.to_thread(publish, staff, "away")
        assert await wait_for(lambda: client.connections[-1] is not connection, within=10)
        back = client.connections[-1]
        # Subscribed again once its response has started (``: connected``, or a replay).
        assert await wait_for(
            lambda: back.events or any(c.received_at > back.opened_at for c in client.comments),
            within=10,
        )
        returned = await asyncio.to_thread(publish, staff, "returned")
        await wait_for(lambda: any(m.id == returned for m in client.events), within=10)
    return away, returned


# --- 2. Big replays: memory per resuming client, and slow readers ------------------------------

BIG_EVENTS = 400
BIG_DATA = "x" * 32 * 1024
# How the event's data reads on the wire: a JSON string.
BIG_DATA_WIRE_LENGTH = len(json.dumps(BIG_DATA))
# The engine reads history at most 50 entries at a time (broker/redis.py HISTORY_PAGE_SIZE) and
# lets at most EVENTS_CLIENT_MAX_BACKLOG_BYTES (1 MiB by default) wait unsent per client.
HISTORY_PAGE_EVENTS = 50
DEFAULT_MAX_BACKLOG_BYTES = 1024 * 1024


class RssSampler:
    """Daphne's resident memory (kB) before, and at its peak while the block runs (every 0.1 s)."""

    def __init__(self, server: Daphne) -> None:
        self._server = server
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._sample, name="rss-sampler")
        self.before = self.peak = 0

    def __enter__(self) -> "RssSampler":
        self.before = self.peak = self._server.status("VmRSS")
        self._thread.start()
        return self

    def __exit__(self, *exc_info: object) -> None:
        self._done.set()
        self._thread.join()

    @property
    def peak_growth(self) -> int:
        return self.peak - self.before

    def _sample(self) -> None:
        while not self._done.wait(0.1):
            self.peak = max(self.peak, self._server.status("VmRSS"))


@pytest.fixture(scope="module")
def big_history(
    live_project: LiveProject, redis_service: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[Daphne, list[str]]]:
    """A Daphne whose history holds BIG_EVENTS broadcast events of 32 KB (about 13 MB)."""
    with daphne_server(
        live_project,
        tmp_path_factory.mktemp("big-history"),
        REDIS_URL=redis_service.url,
        EVENTS_REDIS_PREFIX="test-load-big-history",
        EVENTS_HEARTBEAT_SECONDS="0.5",
    ) as daphne:
        with (
            api(daphne, live_project.tokens["staff"]) as staff,
            ThreadPoolExecutor(4) as pool,
        ):
            ids = list(pool.map(lambda n: publish(staff, "bulk", BIG_DATA), range(BIG_EVENTS)))
        yield daphne, sorted(ids, key=id_key)


@pytest.mark.proof
@pytest.mark.timeout(90)
def test_a_big_replay_reaches_a_reading_client_whole_on_one_connection(
    big_history, live_project: LiveProject
) -> None:
    """A client resuming from the first of 400 events of 32 KB (13 MB of replay, far above the
    1 MiB backlog limit) gets every later event once, on one connection that stays open."""
    daphne, ids = big_history
    client = StreamClient(
        daphne.port, live_project.tokens["alice"], last_event_id=ids[0], reconnect=False
    )
    started = time.monotonic()
    received_all, still_open = asyncio.run(_read_replay(client, len(ids) - 1))
    seconds = time.monotonic() - started
    replayed_bytes = client.bytes_received
    print(
        f"RELIABILITY: big-replay events={len(client.events)} bytes={replayed_bytes} "
        f"connections={len(client.connections)} seconds={seconds:.1f}"
    )
    assert received_all, f"got {len(client.events)} of {len(ids) - 1} events"
    assert [m.id for m in client.events] == ids[1:]
    assert all(m.data == json.dumps(BIG_DATA) for m in client.events)
    assert len(client.connections) == 1, client.connections[0].ended
    assert still_open


async def _read_replay(client: StreamClient, count: int) -> tuple[bool, bool]:
    """Whether ``client`` received ``count`` events, and then a heartbeat on the same stream."""
    async with Crowd([client]) as crowd:
        # A client cut off ends (no reconnection): no need to wait any longer.
        await wait_for(lambda: len(client.events) >= count or not crowd.running(), within=60)
        received_all = len(client.events) >= count
        heartbeats = len(client.comments)
        # Heartbeats come every 0.5 s: one more proves that the stream was not cut off.
        still_open = await wait_for(lambda: len(client.comments) > heartbeats, within=5)
        still_open = still_open and crowd.running() == 1
    return received_all, still_open


SLOW_RESUMERS = 20
PAUSE_SECONDS = 3.0


@pytest.mark.proof
@pytest.mark.timeout(90)
def test_b_resumers_that_read_late_cost_a_bounded_memory_each(
    big_history, live_project: LiveProject
) -> None:
    """20 clients resume from the first event at once and read nothing for 3 s, then read all.
    The server's memory grows by at most a page of history and the backlog limit per client,
    not by the history's size (13 MB) per client; and every client gets every event."""
    daphne, ids = big_history
    clients = [
        StreamClient(
            daphne.port,
            live_project.tokens["alice"],
            last_event_id=ids[0],
            reconnect=False,
            keep_data=False,
            pause_seconds=PAUSE_SECONDS,
        )
        for _ in range(SLOW_RESUMERS)
    ]
    with api(daphne, live_project.tokens["staff"]) as staff:
        with RssSampler(daphne) as rss:
            asyncio.run(_resume_late(clients, len(ids) - 1))
            assert wait_until_streams(staff, 0)
        rss_after = daphne.status("VmRSS")
    history_kb = len(ids) * BIG_DATA_WIRE_LENGTH // 1024
    # What the engine promises per resuming client: one page of history, and the unsent bytes
    # it lets wait (kernel socket buffers are not in RSS). A fifth more for what the process
    # allocates around them.
    page_bytes = HISTORY_PAGE_EVENTS * BIG_DATA_WIRE_LENGTH
    per_client_kb = (page_bytes + DEFAULT_MAX_BACKLOG_BYTES) * 6 // 5 // 1024
    print(
        f"RELIABILITY: late-resumers clients={len(clients)} history_kb={history_kb} "
        f"rss_before_kb={rss.before} peak_kb={rss.peak} peak_growth_kb={rss.peak_growth} "
        f"per_client_kb={rss.peak_growth // len(clients)} (bound {per_client_kb}; "
        f"history per client {history_kb}) after_kb={rss_after} "
        f"connections={sum(len(c.connections) for c in clients)}"
    )
    for client in clients:
        assert [m.id for m in client.events] == ids[1:]
        assert set(client.sizes) == {BIG_DATA_WIRE_LENGTH}
    assert len(clients) == sum(len(c.connections) for c in clients), "a late reader was cut off"
    assert rss.peak_growth < len(clients) * per_client_kb


async def _resume_late(clients: list[StreamClient], count: int) -> None:
    async with Crowd(clients) as crowd:
        await wait_for(
            lambda: all(len(c.events) >= count for c in clients) or crowd.running() < len(clients),
            within=60,
        )
        assert all(len(c.events) >= count for c in clients), [len(c.events) for c in clients]


def wait_until_streams(staff: httpx.Client, count: int, timeout: float = 10) -> bool:
    deadline = time.monotonic() + timeout
    while metrics(staff)["streams"] != count:
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


STALLED_BACKLOG_BYTES = 256 * 1024
STALLED_SEND_TIMEOUT = 2.0
# Published at a steady 2.4 MB/s for 12 s: the client stops reading long before the end.
STALLED_EVENTS_PER_SECOND = 75
STALLED_PUBLISH_SECONDS = 12


@pytest.mark.proof
@pytest.mark.timeout(90)
def test_c_a_client_that_never_reads_is_cut_off_in_bounded_time_and_memory(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    """A client reads ``: connected`` and then nothing, with a 4 KB receive buffer, while
    29 MB are published over 12 s. It is cut off within a few send timeouts, and meanwhile the
    server holds for it about its backlog limit: not the megabytes published for it."""
    prefix = "test-load-stalled"
    with (
        daphne_server(
            live_project,
            tmp_path,
            REDIS_URL=redis_service.url,
            EVENTS_REDIS_PREFIX=prefix,
            EVENTS_CLIENT_MAX_BACKLOG_BYTES=str(STALLED_BACKLOG_BYTES),
            EVENTS_CLIENT_SEND_TIMEOUT_SECONDS=str(STALLED_SEND_TIMEOUT),
        ) as daphne,
        api(daphne, live_project.tokens["staff"]) as staff,
        redis.Redis.from_url(redis_service.url) as publisher,
        stalled_socket(daphne.port, live_project.tokens["alice"]) as sock,
    ):
        stopped_reading = time.monotonic()
        assert wait_until_streams(staff, 1)
        envelope = json.dumps({"type": "bulk", "data": BIG_DATA})
        cut_off_after = None
        published_before_cut_off = 0
        with RssSampler(daphne) as rss:
            count = STALLED_EVENTS_PER_SECOND * STALLED_PUBLISH_SECONDS
            for n in range(count):
                next_at = stopped_reading + n / STALLED_EVENTS_PER_SECOND
                time.sleep(max(0.0, next_at - time.monotonic()))
                publisher.publish(f"{prefix}:broadcast", envelope)
                if cut_off_after is None and tcp_state(sock) != TCP_ESTABLISHED:
                    cut_off_after = time.monotonic() - stopped_reading
                    published_before_cut_off = n + 1
            left = wait_until_streams(staff, 0)
        rss_after = daphne.status("VmRSS")
        had_coming = drain(sock) if left else None
        log = daphne.log()
    published_kb = count * len(envelope) // 1024
    published_before_cut_off_kb = published_before_cut_off * len(envelope) // 1024
    print(
        f"RELIABILITY: stalled-client published_kb={published_kb} "
        f"over {STALLED_PUBLISH_SECONDS}s "
        f"cut_off_after_s={cut_off_after and round(cut_off_after, 2)} "
        f"(send timeout {STALLED_SEND_TIMEOUT}s) "
        f"published_before_cut_off_kb={published_before_cut_off_kb} rss_before_kb={rss.before} "
        f"peak_growth_kb={rss.peak_growth} after_growth_kb={rss_after - rss.before} "
        f"client_had_coming_bytes={had_coming}"
    )
    assert cut_off_after is not None, "the client that stopped reading is still connected"
    assert left, "the server still counts the stream of the client it cut off"
    assert cut_off_after < 3 * STALLED_SEND_TIMEOUT + 2
    assert "Disconnected a client" in log
    assert had_coming is not None
    assert had_coming < STALLED_BACKLOG_BYTES
    # Held for it at most: its backlog of unsent bytes, and as much again of events waiting to
    # be sent (each as data and as wire bytes), not the events published until its cut-off.
    assert rss.peak_growth < 8 * 1024
    assert rss.peak_growth < published_before_cut_off_kb


def drain(sock: socket.socket) -> int:
    """Read until the server's close; returns the bytes the client still had coming."""
    total = 0
    try:
        while chunk := sock.recv(1 << 16):
            total += len(chunk)
    except ConnectionResetError:
        pass
    return total


# --- 3. Churn: thousands of short streams with new topic names ----------------------------------

# 10,000 cycles (160,000 topic names) take about 95 s on a 2-core machine: the server sets up
# about 105 such streams a second. The longest proof, run once per CI run.
CHURN_CYCLES = 10_000
CHURN_WARM_UP = 300
CHURN_AT_ONCE = 50
TOPICS_PER_STREAM = 16


@dataclass
class Snapshot:
    streams: int
    channels: int
    tasks: int
    fds: int
    rss_kb: int
    pubsub_channels: int  # besides the control channel, which the feed listens to for good


def snapshot(
    daphne: Daphne, staff: httpx.Client, redis_service: RedisServer, prefix: str
) -> Snapshot:
    numbers = metrics(staff)
    return Snapshot(
        streams=numbers["streams"],
        channels=numbers["channels"],
        tasks=numbers["tasks"],
        fds=len(os.listdir(f"/proc/{daphne.pid}/fd")),
        rss_kb=daphne.status("VmRSS"),
        pubsub_channels=len(
            set(redis_service.command("PUBSUB", "CHANNELS", f"{prefix}:*").split())
            - {f"{prefix}:control"}
        ),
    )


@pytest.mark.proof
@pytest.mark.timeout(400)
def test_churn_of_streams_with_new_topics_leaves_nothing_behind(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    """4,000 streams open and close, 50 at a time, each with 16 topic names never used before
    (64,000 channels in all). Afterwards the server holds what it held before: no stream, no
    channel, no Pub/Sub subscription, no task, no file descriptor, and about the same memory."""
    prefix = "test-load-churn"
    token = live_project.tokens["alice"]
    with (
        daphne_server(
            live_project, tmp_path, REDIS_URL=redis_service.url, EVENTS_REDIS_PREFIX=prefix
        ) as daphne,
        api(daphne, live_project.tokens["staff"]) as staff,
    ):
        asyncio.run(_churn(daphne.port, token, range(CHURN_WARM_UP)))
        settled = wait_for_idle(daphne, staff, redis_service, prefix)
        before = snapshot(daphne, staff, redis_service, prefix)
        started = time.monotonic()
        asyncio.run(_churn(daphne.port, token, range(CHURN_WARM_UP, CHURN_WARM_UP + CHURN_CYCLES)))
        seconds = time.monotonic() - started
        settled = settled and wait_for_idle(daphne, staff, redis_service, prefix)
        after = snapshot(daphne, staff, redis_service, prefix)
        # Tasks and descriptors of closed connections go once Daphne has reaped them.
        deadline = time.monotonic() + 10
        while (
            after.tasks > before.tasks or after.fds > before.fds
        ) and time.monotonic() < deadline:
            time.sleep(0.2)
            after = snapshot(daphne, staff, redis_service, prefix)
    print(
        f"RELIABILITY: churn cycles={CHURN_CYCLES} at_once={CHURN_AT_ONCE} "
        f"topic_names={CHURN_CYCLES * TOPICS_PER_STREAM} seconds={seconds:.1f} "
        f"cycles_per_s={CHURN_CYCLES / seconds:.0f} before={before} after={after} "
        f"rss_change={100 * (after.rss_kb - before.rss_kb) / before.rss_kb:+.1f}%"
    )
    assert settled
    assert (after.streams, after.channels, after.pubsub_channels) == (0, 0, 0)
    assert after.tasks <= before.tasks
    assert after.fds <= before.fds + 2
    assert after.rss_kb < before.rss_kb * 1.10


async def _churn(port: int, token: str, cycles: range) -> None:
    gate = asyncio.Semaphore(CHURN_AT_ONCE)

    async def cycle(number: int) -> None:
        async with gate:
            topics = [f"churn{number}-{k}" for k in range(TOPICS_PER_STREAM)]
            await open_and_close(port, token, topics)

    await asyncio.gather(*(cycle(number) for number in cycles))


def wait_for_idle(
    daphne: Daphne, staff: httpx.Client, redis_service: RedisServer, prefix: str
) -> bool:
    """Until no stream, channel or Pub/Sub subscription is left (at most 20 s)."""
    deadline = time.monotonic() + 20
    while True:
        now = snapshot(daphne, staff, redis_service, prefix)
        if (now.streams, now.channels, now.pubsub_channels) == (0, 0, 0):
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.2)
