"""What keeps the stream up: bad input on Redis, Redis restarts, slow clients, many clients."""

import asyncio
import json
import os
import signal
import socket
import time
from collections.abc import Callable
from typing import TypeVar

import httpx
import pytest
import redis

from .crowd import stalled_socket
from .services import (
    Daphne,
    LiveProject,
    RedisServer,
    api,
    daphne_server,
    hold_streams,
    metrics,
    publish,
    redis_server,
)
from .sse import open_stream

pytestmark = pytest.mark.timeout(120)


Value = TypeVar("Value")


def wait_until(condition: Callable[[], Value], timeout: float = 10.0) -> Value:
    """What ``condition()`` returned once true, or the last falsy value after ``timeout``."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value or time.monotonic() > deadline:
            return value
        time.sleep(0.1)


@pytest.fixture
def redis_daphne(
    live_project: LiveProject, redis_service: RedisServer, tmp_path, request: pytest.FixtureRequest
):
    prefix = f"test-{request.node.name}"
    with daphne_server(
        live_project, tmp_path, REDIS_URL=redis_service.url, EVENTS_REDIS_PREFIX=prefix
    ) as daphne:
        yield daphne, prefix


def test_malformed_messages_on_redis_are_skipped_and_the_stream_goes_on(
    redis_daphne, redis_service: RedisServer, live_project: LiveProject
) -> None:
    daphne, prefix = redis_daphne
    channel = f"{prefix}:broadcast"
    bad_messages = [
        b"not json",
        b"\xff\xfe not utf-8",
        b'["a", "list"]',
        b'{"type": "no-data"}',
        b'{"type": "bad type!", "data": 1}',
        b'{"type": "x", "data": 1, "topic": "news"}',  # addressed elsewhere than its channel
        json.dumps({"type": "huge", "data": "x" * 70_000}).encode(),
    ]
    with (
        api(daphne, live_project.tokens["staff"]) as staff,
        api(daphne, live_project.tokens["alice"]) as alice,
        open_stream(alice) as stream,
    ):
        stream.take_all(2)  # retry, then ": connected": from here on nothing is missed
        started_at = stream.last_event_id  # sent without an event before ": connected"
        skipped_before = metrics(staff)["malformed"]
        client = redis.Redis.from_url(redis_service.url)
        for message in bad_messages:
            assert client.publish(channel, message) == 1
        # What another service in any language publishes: the documented envelope, no id; an
        # "id" field of its own is ignored (ids come from history only).
        external = {"type": "external", "data": {"from": "elsewhere"}, "id": "99999999999999-0"}
        client.publish(channel, json.dumps(external))
        [event] = stream.take(1)
        skipped = metrics(staff)["malformed"] - skipped_before
    # Without an id of its own, the event leaves the client's last id where the stream started.
    assert started_at is not None
    assert (event.event, event.data, event.id) == ("external", '{"from":"elsewhere"}', started_at)
    assert skipped == len(bad_messages)
    # One warning (at most one per 10 s), not one per message: a flood cannot flood the log.
    assert daphne.log().count("Skipped malformed") == 1


def test_redis_restart_keeps_clients_connected_and_resets_them(
    live_project: LiveProject, tmp_path
) -> None:
    with (
        redis_server(tmp_path) as own_redis,
        daphne_server(
            live_project, tmp_path, REDIS_URL=own_redis.url, EVENTS_HEARTBEAT_SECONDS="0.5"
        ) as daphne,
        api(daphne, live_project.tokens["staff"]) as publisher,
        api(daphne, live_project.tokens["alice"]) as alice,
        open_stream(alice) as stream,
    ):
        before = publish(publisher, "before")
        assert [m.id for m in stream.take(1)] == [before]

        own_redis.stop()
        refused = publisher.post("/api/events/", json={"type": "lost", "data": 1})
        assert refused.status_code == 503
        assert "Redis is unavailable" in refused.json()["detail"]

        own_redis.start()  # same port, empty: history is gone
        [reset] = stream.take(1)
        assert reset.event == "reset"
        after = publish(publisher, "after")
        assert [(m.event, m.id) for m in stream.take(1)] == [("after", after)]
    assert "Event feed reconnected to Redis" in daphne.log()


def test_client_that_stops_reading_is_disconnected_and_memory_stays_bounded(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    prefix = "test-slow-client"
    with (
        daphne_server(
            live_project,
            tmp_path,
            REDIS_URL=redis_service.url,
            EVENTS_REDIS_PREFIX=prefix,
            EVENTS_CLIENT_MAX_BACKLOG_BYTES=str(256 * 1024),
            EVENTS_CLIENT_SEND_TIMEOUT_SECONDS="2",
        ) as daphne,
        api(daphne, live_project.tokens["staff"]) as staff,
    ):
        slow = socket.socket()
        slow.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
        slow.connect(("127.0.0.1", daphne.port))
        slow.sendall(
            b"GET /api/events/stream/ HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            b"Accept: text/event-stream\r\n"
            + f"Authorization: Token {live_project.tokens['alice']}\r\n\r\n".encode()
        )
        assert b"200 OK" in slow.recv(1024)
        assert wait_until(lambda: metrics(staff)["streams"] == 1)
        rss_before = daphne.status("VmRSS")

        # 50 MB for a client that reads nothing: unbounded, the server would buffer all of it.
        payload = json.dumps({"type": "bulk", "data": "x" * 60_000})
        client = redis.Redis.from_url(redis_service.url)
        for _ in range(850):
            client.publish(f"{prefix}:broadcast", payload)

        assert wait_until(lambda: metrics(staff)["streams"] == 0), "slow client still connected"
        rss_growth_kb = daphne.status("VmRSS") - rss_before
        received = _drain(slow)
    assert received < 16 * 1024 * 1024, received
    assert rss_growth_kb < 24 * 1024, f"server RSS grew {rss_growth_kb} kB"
    # Ended by whichever limit it reached first: its queue of waiting events, or its backlog.
    log = daphne.log()
    assert "a client that fell behind" in log or "a client that stopped reading" in log


def _drain(sock: socket.socket) -> int:
    """Read until the server's close; returns the bytes the client still had coming."""
    sock.settimeout(10)
    total = 0
    try:
        while chunk := sock.recv(1 << 16):
            total += len(chunk)
    except ConnectionResetError:
        pass
    finally:
        sock.close()
    return total


def test_disconnects_leave_no_stream_subscription_or_task_behind(
    server: Daphne, live_project: LiveProject, broker_settings: dict, redis_service: RedisServer
) -> None:
    with (
        api(server, live_project.tokens["staff"]) as staff,
        api(server, live_project.tokens["alice"]) as alice,
    ):
        with open_stream(alice) as stream:  # the process's hub and feed exist from now on
            stream.take_all(1)
        assert wait_until(lambda: metrics(staff)["streams"] == 0)
        baseline = metrics(staff)
        for cycle in range(60):
            with open_stream(alice, topics=(f"topic-{cycle % 7}",)) as stream:
                stream.take_all(2)
        after = wait_until(lambda: (m := metrics(staff))["streams"] == 0 and m)
    assert after["channels"] == baseline["channels"] == 0
    assert after["tasks"] <= baseline["tasks"]
    if broker_settings["REDIS_URL"]:
        prefix = broker_settings["EVENTS_REDIS_PREFIX"]
        # Only the control channel, which every process's feed listens to for its lifetime.
        subscribed = redis_service.command("PUBSUB", "CHANNELS", f"{prefix}:*").split()
        assert subscribed == [f"{prefix}:control"]


def test_open_streams_hold_no_thread_and_no_redis_connection(
    server: Daphne, live_project: LiveProject, broker_settings: dict[str, str]
) -> None:
    """500 open streams: the server's threads and Redis connections do not grow with them (one
    shared subscription, one shared worker thread)."""
    token = live_project.tokens["alice"]
    redis_port = int(broker_settings["REDIS_URL"].rpartition(":")[2].partition("/")[0] or 0)

    def sample() -> tuple[int, int]:
        return server.status("Threads"), server.connections_to(redis_port) if redis_port else 0

    with api(server, live_project.tokens["staff"]) as staff:
        # Warm up the shared worker thread and every connection a stream uses.
        asyncio.run(hold_streams(server, token, 1, lambda: metrics(staff)))
        threads_before, redis_before = sample()
        (threads_open, redis_open), streams_open = asyncio.run(
            hold_streams(server, token, 500, lambda: (sample(), metrics(staff)))
        )
    assert streams_open["streams"] == 500
    if redis_port:
        assert redis_before >= 1  # the shared subscription, at least: the count sees it
    assert threads_open <= threads_before + 2, (threads_before, threads_open)
    assert redis_open == redis_before, (redis_before, redis_open)


def test_publish_raises_a_clear_error_while_redis_is_down(
    live_project: LiveProject, tmp_path
) -> None:
    port_without_redis = socket.socket()
    port_without_redis.bind(("127.0.0.1", 0))
    url = f"redis://127.0.0.1:{port_without_redis.getsockname()[1]}/0"
    port_without_redis.close()
    result = live_project.manage("publish_event", "note", '{"a": 1}', REDIS_URL=url)
    assert result.returncode != 0
    assert "Redis is unavailable" in result.stderr


def test_publish_command_reaches_streams(
    redis_daphne, redis_service: RedisServer, live_project: LiveProject
) -> None:
    daphne, prefix = redis_daphne
    with (
        api(daphne, live_project.tokens["alice"]) as alice,
        open_stream(alice, topics=("news",)) as stream,
    ):
        result = live_project.manage(
            "publish_event",
            "headline",
            '{"title": "Hi"}',
            "--topic",
            "news",
            REDIS_URL=redis_service.url,
            EVENTS_REDIS_PREFIX=prefix,
        )
        assert result.returncode == 0, result.stderr
        [event] = stream.take(1)
    assert (event.event, event.data, event.id) == (
        "headline",
        '{"title":"Hi"}',
        result.stdout.strip(),
    )


def test_publish_command_explains_that_it_needs_redis(live_project: LiveProject) -> None:
    result = live_project.manage("publish_event", "note", REDIS_URL="")
    assert result.returncode != 0
    assert "REDIS_URL is not set" in result.stderr


def test_an_error_after_the_response_started_ends_the_stream_cleanly(
    redis_daphne, redis_service: RedisServer, live_project: LiveProject
) -> None:
    """History replaced by a key of another type: the replay fails mid-response. The client gets a
    final comment and the end of the stream (never a hung request), the cause is logged, and the
    server goes on serving (an exception escaping to Daphne would stop its housekeeping)."""
    daphne, prefix = redis_daphne
    history = f"{prefix}:history"
    with (
        api(daphne, live_project.tokens["staff"]) as staff,
        api(daphne, live_project.tokens["alice"]) as alice,
        open_stream(alice) as stream,  # the process's feed is up and subscribed
    ):
        stream.take_all(2)
        first = publish(staff, "first")
        stream.take(1)
        redis_service.command("DEL", history)
        redis_service.command("SET", history, "not a stream")
        try:
            with open_stream(alice, last_event_id=first) as resumed:
                messages = list(resumed)  # ends: the server closed the stream
        finally:
            redis_service.command("DEL", history)
        event_id = publish(staff, "after")
        [event] = stream.take(1)
    assert [m.comment for m in messages if m.comment] == ["broker unavailable, reconnect later"]
    assert event.id == event_id
    log = daphne.log()
    assert "Stream ended: Event history unavailable: WRONGTYPE" in log
    assert "Exception inside application" not in log


def test_a_publish_whose_reply_is_lost_is_never_sent_twice(
    live_project: LiveProject, tmp_path
) -> None:
    """Redis frozen mid-publish: the call times out and says the event may have been published.
    Once Redis resumes, it runs the script it had received, once: a client library retry (redis-py
    retries timeouts by default) would have sent it again and stored the event twice."""
    with (
        redis_server(tmp_path) as own_redis,
        daphne_server(live_project, tmp_path, REDIS_URL=own_redis.url) as daphne,
        api(daphne, live_project.tokens["staff"]) as publisher,
    ):
        publish(publisher, "warm-up")  # the publishing connection exists before the freeze
        redis_pid = own_redis.pid
        os.kill(redis_pid, signal.SIGSTOP)
        try:
            response = publisher.post("/api/events/", json={"type": "frozen", "data": 1})
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        assert response.status_code == 503
        assert "may or may not have been published" in response.json()["detail"]
        time.sleep(1)  # Redis works through what it received while frozen
        entries = own_redis.command("XRANGE", "events:history", "-", "+")
    assert entries.count("frozen") == 1, entries


def test_events_signed_with_a_previous_secret_key_are_delivered_during_a_rotation(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    """Mid-rotation, a publisher still on the old SECRET_KEY reaches, with its id, a server that
    has the new key and the old one in SECRET_KEY_FALLBACKS (ids are signed with the key)."""
    old_key = live_project.env["SECRET_KEY"]
    new_key = "rotated-" + "n" * 60
    prefix = "test-rotation"
    with (
        daphne_server(
            live_project,
            tmp_path,
            REDIS_URL=redis_service.url,
            EVENTS_REDIS_PREFIX=prefix,
            SECRET_KEY=new_key,
            SECRET_KEY_FALLBACKS=old_key,
        ) as daphne,
        api(daphne, live_project.tokens["alice"]) as alice,
        open_stream(alice) as stream,
    ):
        stream.take_all(2)
        result = live_project.manage(
            "publish_event", "rotated", "1", REDIS_URL=redis_service.url, EVENTS_REDIS_PREFIX=prefix
        )
        assert result.returncode == 0, result.stderr
        [event] = stream.take(1)
    assert (event.event, event.id) == ("rotated", result.stdout.strip())


def test_while_it_shuts_down_a_server_is_not_ready_and_new_streams_get_only_the_goodbye(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    """SIGTERM with a stream whose client has stopped reading: the server waits (at most its grace)
    for that stream's last bytes to leave. Meanwhile /readyz answers 503 naming "accepting", and a
    new stream gets a 200 with only a spread-out retry and the goodbye comment (a 503 would make
    EventSource give up for good); then the process exits by itself."""
    prefix = "test-draining"
    with daphne_server(
        live_project,
        tmp_path,
        REDIS_URL=redis_service.url,
        EVENTS_REDIS_PREFIX=prefix,
        EVENTS_SHUTDOWN_GRACE_SECONDS="4",
        EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS="10",
        EVENTS_CLIENT_MAX_BACKLOG_BYTES=str(8 * 1024 * 1024),
        EVENTS_CLIENT_SEND_TIMEOUT_SECONDS="30",
    ) as daphne:
        stalled = stalled_socket(daphne.port, live_project.tokens["alice"])
        try:
            client = redis.Redis.from_url(redis_service.url)
            # 3.6 MB for a client that reads nothing: more than the kernel's socket buffers take,
            # well under its backlog limit, so its stream stays open, with bytes unsent, until
            # the shutdown.
            for _ in range(60):
                client.publish(
                    f"{prefix}:broadcast", json.dumps({"type": "bulk", "data": "x" * 60_000})
                )
            time.sleep(0.5)
            sigterm_at = time.monotonic()
            os.kill(daphne.pid, signal.SIGTERM)
            ready = httpx.get(f"{daphne.url}/readyz", timeout=10)
            with api(daphne, live_project.tokens["bob"]) as bob, open_stream(bob) as stream:
                goodbye = list(stream)
            assert daphne.process is not None
            daphne.process.wait(timeout=15)
            exited_after = time.monotonic() - sigterm_at
        finally:
            stalled.close()
    assert ready.status_code == 503
    assert ready.json()["checks"]["accepting"] == "error"
    [retry, comment] = goodbye
    assert retry.retry is not None
    assert 3000 <= retry.retry <= 13_000
    assert comment.comment == "server shutting down, reconnect"
    assert exited_after < 4 + 5, exited_after
