"""The Redis feed under hostile input and broken connections, with a real Redis and a real Daphne.

What a user would notice if the feed were fragile: an event missing, repeated or out of order, a
junk event on screen, a stream that resets for no reason, a replica stuck unready, or a server that
keeps saying "ready" while its Pub/Sub connection is dead.
"""

import json
import os
import random
import signal
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis

from .services import (
    Daphne,
    LiveProject,
    RedisServer,
    api,
    daphne_server,
    metrics,
    publish,
    redis_server,
    wait_until,
)
from .sse import EventStream, Message, open_stream, revoked_reason

pytestmark = pytest.mark.timeout(90)

HEALTH_CHECK_SECONDS = 1.0
# Small, so that "oversize" messages stay cheap to send hundreds of times.
MAX_PAYLOAD_BYTES = 4096
FORGED_ID = "99999999999999-0"  # far newer than any real id: would stall a feed that trusted it


# --- helpers ----------------------------------------------------------------------------------


def readyz(server: Daphne) -> httpx.Response:
    # The broker check pings Redis with a 5 s socket timeout: leave room for it.
    return httpx.get(f"{server.url}/readyz", timeout=15)


def take_until(stream: EventStream, last_id: str, timeout: float = 15.0) -> list[Message]:
    """Dispatched events up to and including the one with ``last_id``; fails after ``timeout``
    seconds (heartbeats keep the stream busy, so a missing event would otherwise wait forever)."""
    deadline = time.monotonic() + timeout
    received = []
    for message in stream:
        if message.comment is None and message.retry is None:
            received.append(message)
            if message.id == last_id:
                return received
        assert time.monotonic() < deadline, f"no event {last_id} after {timeout}s: {received}"
    raise AssertionError(f"stream ended before {last_id}: {received}")


def summary(messages: list[Message]) -> list[tuple[str, str, str | None]]:
    return [(m.event, m.data, m.id) for m in messages]


def kill_pubsub_connections(server: RedisServer) -> None:
    # The test's own Redis: only this Daphne's feed has a Pub/Sub connection there.
    assert server.command("CLIENT", "KILL", "TYPE", "pubsub") == "1"


@contextmanager
def own_redis_daphne(
    project: LiveProject, directory: Path, **settings: str
) -> Iterator[tuple[RedisServer, Daphne]]:
    with (
        redis_server(directory) as own_redis,
        daphne_server(
            project,
            directory,
            REDIS_URL=own_redis.url,
            EVENTS_HEARTBEAT_SECONDS="0.5",
            **settings,
        ) as daphne,
    ):
        yield own_redis, daphne


# --- 1. fuzz of the running feed --------------------------------------------------------------

Expected = tuple[str, str, str | None]  # (event, data, id) as a client receives it


@dataclass(frozen=True)
class Hostile:
    """A message written straight to Redis, and what the feed must make of it.

    ``delivered`` is set only for a well-formed envelope addressed to its own channel: another
    service may publish those (docs/events.md), and clients receive them without an id.
    """

    channel: str  # logical channel ("broadcast", "topic.news", ...), or a foreign Pub/Sub name
    payload: bytes
    delivered: tuple[str, str] | None = None  # (event, data)


def _address(channel: str) -> dict[str, object]:
    """The envelope fields that send an event to ``channel``."""
    if channel.startswith("topic."):
        return {"user": None, "topic": channel.removeprefix("topic.")}
    if channel.startswith("user."):
        return {"user": int(channel.removeprefix("user.")), "topic": None}
    return {"user": None, "topic": None}


def _json(value: object) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def _with_data(channel: str, data_text: bytes, event_type: str = "hostile") -> bytes:
    """An envelope for ``channel`` whose ``data`` is the given (possibly invalid) JSON text."""
    return _json({"type": event_type, **_address(channel)})[:-1] + b',"data":' + data_text + b"}"


def malformed_payload(rng: random.Random, channel: str, elsewhere: str) -> bytes:
    """One message the feed must skip and count, of a randomly chosen nasty kind."""
    address = _address(channel)
    valid = _json({"type": "framed", "data": 1, **address})
    kind = rng.randrange(11)
    if kind == 0:  # random bytes (never a JSON object with "type" and "data")
        return rng.randbytes(rng.randrange(0, 80))
    if kind == 1:  # not UTF-8 / a lone surrogate spelled in UTF-8 bytes
        bad = rng.choice([b"\xff", b"\xc3\x28", b"\xfe\xfe", b"\xed\xa0\x80", b"\xf8\x88\x80"])
        return _with_data(channel, b'"' + bad + b'"')
    if kind == 2:  # JSON, but not an envelope
        shapes = [b"[]", b"[1,2]", b"42", b"-0.5", b'"text"', b"null", b"true", b"{}"]
        shapes += [_json({"type": "no-data", **address}), _json({"data": 1, **address})]
        return rng.choice(shapes)
    if kind == 3:  # a field of the wrong type or value
        value: object
        field, value = rng.choice(
            [
                ("type", 5),
                ("type", True),
                ("type", None),
                ("type", []),
                ("type", ""),
                ("type", "bad type!"),
                ("type", "reset"),  # reserved for history resets
                ("type", "x" * 65),
                ("type", "a\nb"),
                ("user", True),
                ("user", False),
                ("user", 1.5),
                ("user", [1]),
                ("user", {}),
                ("topic", 5),
                ("topic", True),
                ("topic", []),
                ("topic", ""),
                ("topic", "bad topic!"),
            ]
        )
        return _json({"type": "typed", "data": 1, **address, field: value})
    if kind == 4:  # nested 10,000 levels deep
        depth = 10_000
        nested = rng.choice([b"[" * depth + b"]" * depth, b'{"a":' * depth + b"1" + b"}" * depth])
        return _with_data(channel, nested)
    if kind == 5:  # a lone surrogate, escaped: valid JSON, no UTF-8 form
        return _with_data(channel, rng.choice([b'"\\ud800"', b'"a\\udfffb"', b'["\\udbff"]']))
    if kind == 6:  # numbers JSON cannot carry back out
        return _with_data(
            channel, rng.choice([b"1e999", b"-1e999", b"NaN", b"Infinity", b"9" * 5000])
        )
    if kind == 7:  # data just over the limit, and far over it
        size = rng.choice([MAX_PAYLOAD_BYTES + 1, MAX_PAYLOAD_BYTES * 20])
        return _json({"type": "big", "data": "x" * size, **address})
    if kind == 8:  # a valid envelope for another channel than the one it came on
        return _json({"type": "misrouted", "data": 1, **_address(elsewhere)})
    if kind == 9:  # both a user and a topic
        return _json({"type": "both", "data": 1, "user": 1, "topic": "news"})
    # The publish script's framing, "<id> <signature>\n<envelope>", forged: a well-formed id
    # without the signature (it would have made every later event look already delivered), with
    # a wrong one, or an id this project never hands out. Digits of other scripts (Arabic-Indic,
    # fullwidth) are digits to Python, not to Redis.
    bad_head = rng.choice(
        [
            FORGED_ID,
            f"{FORGED_ID} {'0' * 40}",
            f"{FORGED_ID} not-a-signature",
            "\u0661\u0662-\u0663",
            "1\u0662-0",
            "\uff11-\uff10",
            f"{2**64}-0",
            f"0-{2**64}",
            "1-2-3",
            "12",
            "1-0\r",
            "-1-0",
            "1_0-0",
        ]
    )
    return bad_head.encode() + b"\n" + valid


def well_formed(rng: random.Random, channel: str, serial: int) -> Hostile:
    """An envelope another service may publish: delivered once, with no id."""
    data = {"raw": serial}
    envelope: dict[str, object] = {"type": "external", "data": data, **_address(channel)}
    variant = rng.randrange(4)
    prefix = b""
    if variant == 1:  # an "id" field of its own is ignored: ids come from history only
        envelope["id"] = FORGED_ID
    elif variant == 2:  # the framing with an empty id is a bare envelope after a blank line
        prefix = b"\n"
    elif variant == 3:  # unknown fields are ignored; a user key may be a string
        envelope["extra"] = [1, 2]
        if channel.startswith("user."):
            envelope["user"] = str(envelope["user"])
    return Hostile(channel, prefix + _json(envelope), ("external", _json(data).decode()))


def malformed_history_entries(alice: str, bob: str) -> list[tuple[dict[str, bytes], bool]]:
    """Entries written into history by hand, none usable; and whether a replay to alice (with
    topic news) reads and counts it (an entry of another channel is skipped without parsing)."""
    good_broadcast = _json({"type": "h", "data": 1, "user": None, "topic": None})
    alice_channel, bob_channel = f"user.{alice}", f"user.{bob}"
    return [
        ({"channel": b"broadcast"}, True),  # no envelope
        ({"channel": b"broadcast", "envelope": b"{not json"}, True),
        ({"channel": b"broadcast", "envelope": b'{"type":"h","data":"\xff"}'}, True),
        ({"channel": b"broadcast", "envelope": _with_data("broadcast", b"1e999")}, True),
        ({"channel": b"topic.news", "envelope": good_broadcast}, True),  # channel mismatch
        ({"channel": alice_channel.encode(), "envelope": good_broadcast}, True),
        ({"channel": b"broadcast", "envelope": _json({"type": "big", "data": "x" * 50_000})}, True),
        ({"envelope": b"[1,2,3]"}, True),  # no channel field: parsed, then skipped
        ({"channel": b"broadcast", "envelope": _json({"type": "reset", "data": {}})}, True),
        ({"channel": bob_channel.encode(), "envelope": b"junk"}, False),
        ({"channel": b"\xff\xfe", "envelope": b"junk"}, False),
        ({"channel": b"topic.nobody", "envelope": good_broadcast}, False),
    ]


@pytest.mark.proof
def test_fuzzed_redis_traffic_never_reaches_clients_or_stops_the_feed(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> None:
    """Hundreds of hostile messages among good events: every good event arrives once, in order,
    with its id; nothing else does, bar well-formed id-less envelopes; readiness stays ok."""
    rng = random.Random(20240611)
    prefix = "test-feed-fuzz"
    tokens = live_project.tokens
    alice_pk, bob_pk = tokens["alice_pk"], tokens["bob_pk"]
    # Who reads what: alice with topic news, bob, and alice again without a topic.
    readers = {
        "alice+news": {"broadcast", f"user.{alice_pk}", "topic.news"},
        "bob": {"broadcast", f"user.{bob_pk}"},
        "alice": {"broadcast", f"user.{alice_pk}"},
    }
    subscribed = set().union(*readers.values())
    unsubscribed = [
        f"{prefix}:topic.nobody",
        f"{prefix}:user.999999",
        f"{prefix}:",
        f"{prefix}-other:broadcast",
        f"{prefix}:broadcast\n",
    ]
    history_key = f"{prefix}:history"
    started = time.monotonic()
    with ExitStack() as stack:
        daphne = stack.enter_context(
            daphne_server(
                live_project,
                tmp_path,
                REDIS_URL=redis_service.url,
                EVENTS_REDIS_PREFIX=prefix,
                EVENTS_HEARTBEAT_SECONDS="0.5",
                EVENTS_MAX_PAYLOAD_BYTES=str(MAX_PAYLOAD_BYTES),
            )
        )
        staff = stack.enter_context(api(daphne, tokens["staff"]))
        alice = stack.enter_context(api(daphne, tokens["alice"]))
        bob = stack.enter_context(api(daphne, tokens["bob"]))
        streams = {
            "alice+news": stack.enter_context(open_stream(alice, topics=("news",))),
            "bob": stack.enter_context(open_stream(bob)),
            "alice": stack.enter_context(open_stream(alice)),
        }
        for stream in streams.values():
            assert stream.take_all(2)[1].comment == "connected"
        client = stack.enter_context(redis.Redis.from_url(redis_service.url))

        expected: dict[str, list[Expected]] = {name: [] for name in readers}
        good_ids: list[str] = []

        def good(event_type: str, data: object, channel: str, **address: object) -> str:
            event_id = publish(staff, event_type, data, **address)
            good_ids.append(event_id)
            for name, channels in readers.items():
                if channel in channels:
                    expected[name].append((event_type, json.dumps(data), event_id))
            return event_id

        start_id = good("start", 0, "broadcast")
        skipped_before = metrics(staff)["malformed"]

        # The plan: good events, Pub/Sub messages and history entries, in a seeded random order.
        # ("good", serial), ("hostile", Hostile) or ("history", entry fields)
        actions: list[tuple[str, Any]] = [("good", n) for n in range(60)]
        for serial in range(320):
            if rng.random() < 0.1:
                actions.append(("hostile", Hostile(rng.choice(unsubscribed), rng.randbytes(20))))
                continue
            channel = rng.choice(sorted(subscribed))
            elsewhere = rng.choice(sorted(subscribed - {channel} | {"topic.nobody"}))
            if rng.random() < 0.12:
                actions.append(("hostile", well_formed(rng, channel, serial)))
            else:
                payload = malformed_payload(rng, channel, elsewhere)
                actions.append(("hostile", Hostile(channel, payload)))
        history_entries = malformed_history_entries(alice_pk, bob_pk)
        actions += [("history", entry) for entry in history_entries]
        rng.shuffle(actions)

        kinds = ["broadcast", "news", "alice"]
        malformed_delivered = well_formed_sent = readiness_polls = 0
        for index, (action, item) in enumerate(actions):
            if action == "good":
                kind = kinds[item % 3]
                if kind == "broadcast":
                    good("good", item, "broadcast")
                elif kind == "news":
                    good("good", item, "topic.news", topic="news")
                else:
                    good("good", item, f"user.{alice_pk}", user=alice_pk)
            elif action == "history":
                client.xadd(history_key, item[0])
            else:
                is_ours = item.channel in subscribed
                name = f"{prefix}:{item.channel}" if is_ours else item.channel
                receivers = client.publish(name, item.payload)
                assert receivers == (1 if is_ours else 0), (name, receivers)
                if is_ours and item.delivered is None:
                    malformed_delivered += 1
                if is_ours and item.delivered is not None:
                    well_formed_sent += 1
                    for reader, channels in readers.items():
                        if item.channel in channels:
                            # No id of its own: the client's last event id stays where it was.
                            last_id = expected[reader][-1][2]
                            expected[reader].append((*item.delivered, last_id))
            if index % 50 == 0:
                ready = readyz(daphne)
                assert ready.status_code == 200, ready.text
                assert ready.json()["checks"]["feed"] == "ok"
                readiness_polls += 1

        done = good("done", None, "broadcast")
        for name, stream in streams.items():
            received = take_until(stream, done)
            assert summary(received) == expected[name], name
            assert stream.last_event_id == done  # no forged id moved it
        skipped_live = metrics(staff)["malformed"] - skipped_before
        assert skipped_live == malformed_delivered

        # The feed still takes new subscriptions, and the process is ready.
        with open_stream(bob, topics=("fresh",)) as fresh:
            assert fresh.take_all(2)[1].comment == "connected"
            fresh_id = good("fresh", 1, "topic.fresh", topic="fresh")
            assert [m.id for m in fresh.take(1)] == [fresh_id]
        assert readyz(daphne).status_code == 200

        # Replay from before every bad history entry: exactly the good events, in order.
        skipped_before_replay = metrics(staff)["malformed"]
        with open_stream(alice, topics=("news",), last_event_id=start_id) as resumed:
            after = good("after-resume", None, "broadcast")
            replayed = take_until(resumed, after)
        skipped_replay = metrics(staff)["malformed"] - skipped_before_replay
        # The id-less envelopes were never in history; "after-resume" came live.
        want = [e for e in expected["alice+news"][1:] if e[0] != "external"]
        assert summary(replayed) == want
        assert skipped_replay == sum(counted for _, counted in history_entries)
    elapsed = time.monotonic() - started
    hostile_count = sum(1 for action, _ in actions if action != "good")
    print(
        f"RELIABILITY: feed fuzz: {hostile_count} hostile messages "
        f"({malformed_delivered} malformed on subscribed channels, {well_formed_sent} well-formed "
        f"id-less, {len(history_entries)} bad history entries) among {len(good_ids)} good "
        f"events; malformed counted live {skipped_live}, in replay {skipped_replay}; "
        f"{readiness_polls} /readyz polls all ok; {elapsed:.1f}s"
    )


# --- 2. Redis frozen --------------------------------------------------------------------------


@pytest.mark.proof
def test_frozen_redis_is_noticed_and_the_stream_catches_up_exactly(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """SIGSTOP keeps Redis's sockets open and silent: only the feed's liveness PING can tell.

    The stream stays open throughout (heartbeats are local); events published once Redis is back,
    some while the feed is still reconnecting, arrive exactly once, in order, with no reset.
    """
    tokens = live_project.tokens
    with (
        own_redis_daphne(
            live_project, tmp_path, EVENTS_REDIS_HEALTH_CHECK_SECONDS=str(HEALTH_CHECK_SECONDS)
        ) as (own_redis, daphne),
        api(daphne, tokens["staff"]) as staff,
        api(daphne, tokens["alice"]) as alice,
        open_stream(alice) as stream,
    ):
        before = publish(staff, "before")
        assert [m.id for m in stream.take(1)] == [before]
        assert metrics(staff)["feed_problem"] is None

        redis_pid = own_redis.pid
        os.kill(redis_pid, signal.SIGSTOP)
        frozen_at = time.monotonic()
        try:
            # Silence for a health-check interval, then a PING unanswered for as long again;
            # the feed's read loop looks once a second.
            detection = wait_until(
                lambda: metrics(staff)["feed_problem"], timeout=3 * HEALTH_CHECK_SECONDS + 2
            )
            assert "Event feed lost Redis" in daphne.log()
            probe_started = time.monotonic()
            not_ready = readyz(daphne)
            probe_seconds = time.monotonic() - probe_started
            assert not_ready.status_code == 503
            assert not_ready.json()["checks"] == {
                "database": "ok",
                "broker": "error",
                "feed": "error",
                "accepting": "ok",
            }
            # Resume just after the second reconnect attempt failed (each waits out the 5 s
            # socket timeout): the feed then sleeps its backoff, 0.4-0.8 s, so events published
            # at once can only come by catch-up from history.
            wait_until(lambda: daphne.log().count("Event feed lost Redis") >= 3, timeout=20)
        finally:
            os.kill(redis_pid, signal.SIGCONT)
        resumed_at = time.monotonic()
        frozen_seconds = resumed_at - frozen_at

        # Published right away, until the feed is back and then some: the first ones land while
        # it is still reconnecting, so only its catch-up from history can bring them.
        published: list[str] = []
        recovered_at, published_while_down = None, 0
        while recovered_at is None or len(published) < published_while_down + 5:
            assert time.monotonic() - resumed_at < 20, "the feed did not come back"
            published.append(publish(staff, "after", len(published)))
            if recovered_at is None:
                if metrics(staff)["feed_problem"] is None:
                    recovered_at = time.monotonic()
                else:
                    published_while_down += 1
        recovery = recovered_at - resumed_at
        received = take_until(stream, published[-1])
        assert readyz(daphne).status_code == 200
    assert published_while_down > 0
    assert [(m.event, m.id) for m in received] == [("after", event_id) for event_id in published]
    print(
        f"RELIABILITY: Redis frozen (SIGSTOP) {frozen_seconds:.1f}s with health check "
        f"{HEALTH_CHECK_SECONDS:g}s: feed problem reported after {detection:.1f}s, /readyz "
        f"503 in {probe_seconds:.1f}s (broker ping timeout); after SIGCONT feed ok in "
        f"{recovery:.2f}s; {len(published)} events published on resume ({published_while_down} "
        "while the feed was down) all received once, in order, no reset"
    )


def first_chunk(server: Daphne, token: str, started: float) -> tuple[float, bytes]:
    """When (seconds after ``started``) the stream's first chunk came, and the chunk."""
    with (
        api(server, token) as client,
        client.stream("GET", "/api/events/stream/", timeout=60) as response,
    ):
        assert response.status_code == 200, response.read()
        chunk = next(response.iter_raw())
    return time.monotonic() - started, chunk


def test_stream_requests_while_redis_is_frozen_do_not_wait_for_each_other(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """Stream requests' setups share one thread, and their rate limit and open-streams slot ask
    Redis: frozen, it would make each wait out its timeouts in turn (six streams got their first
    byte at 17, 24, 31 and 38 s). After the first timeout the checks skip Redis for a few seconds:
    the six are answered together, each told that the broker is unavailable."""
    token = live_project.tokens["alice"]
    limits = {"EVENTS_MAX_STREAMS_PER_USER": "8", "EVENTS_STREAM_RATE": "60/min"}
    with own_redis_daphne(live_project, tmp_path, **limits) as (own_redis, daphne):
        os.kill(own_redis.pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with ThreadPoolExecutor(6) as pool:
                answers = list(pool.map(lambda _: first_chunk(daphne, token, started), range(6)))
        finally:
            os.kill(own_redis.pid, signal.SIGCONT)
    seconds = sorted(at for at, _ in answers)
    assert all(b"broker unavailable" in chunk for _, chunk in answers), answers
    assert seconds[-1] - seconds[0] < 5, seconds
    print(
        "RELIABILITY: Redis frozen (SIGSTOP), 6 stream requests at once: first chunks "
        f"{seconds[0]:.1f}-{seconds[-1]:.1f} s after the requests (each 'broker unavailable')"
    )


def test_a_token_deleted_while_redis_was_frozen_ends_its_stream_once_redis_is_back(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """Redis frozen while an admin deletes a token: the deleting process cannot signal the change
    (its Redis call times out, and it exits), and a Redis that keeps its data leaves no gap for
    the feed's catch-up to notice. The feed, back, rechecks every open stream: the deleted token's
    stream ends; another goes on."""
    tokens = live_project.tokens
    with (
        own_redis_daphne(
            live_project, tmp_path, EVENTS_REDIS_HEALTH_CHECK_SECONDS=str(HEALTH_CHECK_SECONDS)
        ) as (own_redis, daphne),
        api(daphne, tokens["staff"]) as staff,
        api(daphne, tokens["alice"]) as alice,
        open_stream(alice) as other,
    ):
        deleted = live_project.create_token_user(REDIS_URL=own_redis.url)
        with api(daphne, deleted) as client, open_stream(client) as stream:
            assert stream.take_all(2)[1].comment == "connected"
            os.kill(own_redis.pid, signal.SIGSTOP)
            try:
                wait_until(lambda: metrics(staff)["feed_problem"], timeout=15)
                logged = live_project.delete_token(deleted, REDIS_URL=own_redis.url)
                assert "were not rechecked" in logged  # the change reached no Redis
            finally:
                os.kill(own_redis.pid, signal.SIGCONT)
            assert revoked_reason(stream, within=30) == "token-deleted"
        still_here = publish(staff, "still-here")
        assert [m.id for m in take_until(other, still_here)][-1] == still_here


# --- 3. the Pub/Sub connection killed ---------------------------------------------------------


def test_killed_pubsub_connection_is_replaced_and_nothing_is_missed(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """A dropped Pub/Sub connection (Redis's CLIENT KILL, a proxy's idle timeout) is replaced at
    once; what was published in between comes from history, once each, with no reset."""
    tokens = live_project.tokens
    with (
        own_redis_daphne(live_project, tmp_path) as (own_redis, daphne),
        api(daphne, tokens["staff"]) as staff,
        api(daphne, tokens["alice"]) as alice,
        open_stream(alice) as stream,
    ):
        before = [publish(staff, "before", n) for n in range(5)]
        assert [m.id for m in stream.take(5)] == before
        kill_pubsub_connections(own_redis)
        # Published at once, during the feed's reconnect backoff: catch-up must bring them.
        after = [publish(staff, "after", n) for n in range(10)]
        received = take_until(stream, after[-1])
        wait_until(lambda: "Event feed reconnected to Redis" in daphne.log(), timeout=10)
    assert [(m.event, m.id) for m in received] == [("after", event_id) for event_id in after]


# --- 4. catch-up sends nothing from before a client connected ---------------------------------


def test_catch_up_never_sends_a_new_channel_its_earlier_events(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """Events of topic "late" published before its first client came are history, not news:
    a reconnect's catch-up must not deliver them (the feed's watermark moves at SUBSCRIBE)."""
    tokens = live_project.tokens
    with (
        own_redis_daphne(live_project, tmp_path) as (own_redis, daphne),
        api(daphne, tokens["staff"]) as staff,
        api(daphne, tokens["alice"]) as alice,
        api(daphne, tokens["bob"]) as bob,
        open_stream(alice) as stream_a,  # the feed runs, on broadcast and alice's channel only
    ):
        assert stream_a.take_all(2)[1].comment == "connected"
        for n in range(5):
            publish(staff, "early", n, topic="late")
        with open_stream(bob, topics=("late",)) as stream_b:
            assert stream_b.take_all(2)[1].comment == "connected"
            kill_pubsub_connections(own_redis)
            late = publish(staff, "late", 1, topic="late")
            received = take_until(stream_b, late)
            for_all = publish(staff, "for-all")
            assert [m.id for m in stream_a.take(1)] == [for_all]
    assert [(m.event, m.id) for m in received] == [("late", late)]


# --- 5. access taken away while the feed was down ----------------------------------------------

ACCESS_CHANGES_KEY = "events:access-changes"
# What happens to the kept access changes while the feed is down, before a token is deleted.
SPOILERS: dict[str, tuple[str, ...] | None] = {
    "kept": None,
    "deleted": ("DEL", ACCESS_CHANGES_KEY),
    "overwritten": ("SET", ACCESS_CHANGES_KEY, "not a stream"),
}


@pytest.mark.parametrize("spoiler", SPOILERS)
def test_a_token_deleted_while_the_feed_was_down_ends_its_streams_once_it_is_back(
    live_project: LiveProject, tmp_path: Path, spoiler: str
) -> None:
    """The control message of a deleted token is published while this process's Pub/Sub
    connection is down (a Redis restart, a network cut). Back, the feed reads the access changes
    it missed and ends that token's stream; if those are gone or unreadable, it rechecks every
    open stream, which ends the same one. Other streams go on, and so does live revocation."""
    tokens = live_project.tokens
    with (
        own_redis_daphne(live_project, tmp_path) as (own_redis, daphne),
        api(daphne, tokens["staff"]) as staff,
        api(daphne, tokens["alice"]) as alice,
        open_stream(alice) as other,
    ):
        missed, live = (live_project.create_token_user(REDIS_URL=own_redis.url) for _ in range(2))
        with (
            api(daphne, missed) as missed_client,
            open_stream(missed_client) as missed_stream,
            api(daphne, live) as live_client,
            open_stream(live_client) as live_stream,
        ):
            assert missed_stream.take_all(2)[1].comment == "connected"
            assert live_stream.take_all(2)[1].comment == "connected"
            # Until allowed again, Redis refuses the feed's SUBSCRIBE: it stays down.
            own_redis.command("ACL", "SETUSER", "default", "-subscribe")
            kill_pubsub_connections(own_redis)
            if (command := SPOILERS[spoiler]) is not None:
                own_redis.command(*command)
            live_project.delete_token(missed, REDIS_URL=own_redis.url)
            own_redis.command("ACL", "SETUSER", "default", "+subscribe")
            assert revoked_reason(missed_stream, within=30) == "token-deleted"

            live_project.delete_token(live, REDIS_URL=own_redis.url)
            assert revoked_reason(live_stream) == "token-deleted"
        still_here = publish(staff, "still-here")
        assert [m.id for m in take_until(other, still_here)][-1] == still_here
    assert ("rechecking every open stream" in daphne.log()) is (spoiler != "kept")
