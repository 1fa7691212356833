"""One client's event stream: replay what it missed, then live events, heartbeats in between.

The order of operations is what makes replay exact: the client joins the hub first (after which
no new event can be missed), then reads history after its ``Last-Event-ID``, then sends live events,
skipping those the replay already sent.

Once the response has started, nothing can change its status: any error ends the stream with a
comment and a log line, and the client reconnects with its ``Last-Event-ID``.
"""

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, AsyncIterator, Container, Iterable
from contextlib import AbstractAsyncContextManager, aclosing, nullcontext
from typing import Any

from . import instruments, shutdown
from .access import StreamAccess
from .backpressure import StreamSend, current_stream_send
from .broker.base import Broker, HistoryGap
from .conf import EventSettings
from .event import REVOKED_TYPE, Event, parse_event_id
from .exceptions import BrokerUnavailable
from .hub import Reset, Subscriber, get_hub
from .stream_record import StreamRecord
from .wire import HEARTBEAT, encode_comment, encode_event, encode_retry

logger = logging.getLogger(__name__)

# Streams end a little before their maximum lifetime, at random, so that clients of a replica
# reconnect spread out in time and rebalance across replicas.
_LIFETIME_JITTER = 0.1
# Live events waiting for a client are written in chunks of about this size, never one big copy.
_CHUNK_BYTES = 64 * 1024


async def event_stream(
    channels: frozenset[str],
    last_event_id: str | None,
    settings: EventSettings,
    access: StreamAccess | None = None,
    slot: AbstractAsyncContextManager[Any] | None = None,
) -> AsyncGenerator[bytes, None]:
    """``slot``: held while the stream runs (the user's share of the open-streams limit)."""
    record = StreamRecord(access.user_pk if access else None, resumed=last_event_id is not None)
    try:
        # aclosing: a client's disconnect closes this generator, and must close the inner one
        # now (leaving the hub), not when the garbage collector gets to it.
        async with (
            slot or nullcontext(),
            aclosing(_event_stream(channels, last_event_id, settings, access, record)) as chunks,
        ):
            async for chunk in chunks:
                yield chunk
    finally:
        record.ended(current_stream_send.get())


async def _event_stream(
    channels: frozenset[str],
    last_event_id: str | None,
    settings: EventSettings,
    access: StreamAccess | None,
    record: StreamRecord,
) -> AsyncGenerator[bytes, None]:
    if shutdown.is_draining():
        record.reason = "shutdown"
        yield shutdown.goodbye(settings)
        return
    # Looked up here, not by the caller: the view runs in a worker thread, and the hub belongs to
    # the event loop that iterates this generator.
    hub = get_hub()
    retry = encode_retry(settings.retry_milliseconds)
    try:
        subscriber = await hub.join(
            channels, settings.client_queue_size, settings.client_max_backlog_bytes, access
        )
    except BrokerUnavailable as error:
        record.reason = "broker_unavailable"
        logger.warning("Stream closed at start: %s", error)
        yield retry + encode_comment("broker unavailable, reconnect later")
        return
    # Nothing is sent before the client is subscribed: Daphne sends the response headers with the
    # first chunk, so a browser's "open" means that no event published afterwards can be missed.
    record.opened()
    try:
        async for chunk in _stream(hub.broker, subscriber, last_event_id, settings, retry, record):
            yield chunk
    except BrokerUnavailable as error:  # Redis went away mid-stream: expected, not a bug
        record.reason = "broker_unavailable"
        logger.warning("Stream ended: %s", error, extra={"stream_id": record.stream_id})
        yield encode_comment("broker unavailable, reconnect later")
    except Exception:
        # Never a hung request: the client learns that the stream ended, and resumes by id.
        record.reason = "error"
        logger.exception("Stream ended by an error", extra={"stream_id": record.stream_id})
        yield encode_comment("server error, reconnect")
    finally:
        record.live = subscriber.sent
        await hub.leave(subscriber)


async def _stream(
    broker: Broker,
    subscriber: Subscriber,
    last_event_id: str | None,
    settings: EventSettings,
    retry: bytes,
    record: StreamRecord,
) -> AsyncIterator[bytes]:
    replay_end = None
    if last_event_id is None:
        yield retry + encode_comment("connected")
    else:
        replay = Replay(broker, subscriber.channels, last_event_id)
        first = True
        try:
            async for wire in replay.chunks():
                if subscriber.revoked:
                    break
                yield retry + wire if first else wire
                first = False
        finally:
            record.replayed = replay.sent
            instruments.replayed.inc(replay.sent)
        if first:
            yield retry + encode_comment("up to date")
        replay_end = replay.end
    async for chunk in _live(subscriber, replay_end, settings, current_stream_send.get(), record):
        yield chunk


class Replay:
    """What a resuming client missed, one event per chunk, read from history a page at a time.

    The stream's send waits while the client has not taken what was sent (``backpressure.py``),
    so a replay holds one page of history in memory, however long it is.
    """

    def __init__(self, broker: Broker, channels: Container[str], after: str) -> None:
        self._broker = broker
        self._channels = channels
        self._after = after
        # Live events up to here were replayed, or were sent before the client reconnected.
        self.end: tuple[int, int] | None = parse_event_id(after)
        self.sent = 0  # events, not a reset

    async def chunks(self) -> AsyncIterator[bytes]:
        try:
            async for last_id, events in self._broker.history_after(self._after, self._channels):
                for event in events:
                    yield event.wire
                    # Resumed once the stream has sent it.
                    self.sent += 1
                self.end = parse_event_id(last_id)
        except HistoryGap:
            point = await self._broker.reset_point()
            # Live events up to the newest in history are part of the state the client reloads.
            self.end = parse_event_id(point)
            instruments.resets_sent.inc()
            yield Reset(point).wire


async def _live(
    subscriber: Subscriber,
    replay_end: tuple[int, int] | None,
    settings: EventSettings,
    stream_send: StreamSend | None,
    record: StreamRecord,
) -> AsyncIterator[bytes]:
    """Live events until the stream ends. While the client keeps up (and, after a replay, once
    the live events have passed it), the hub writes them itself (see hub.py); this loop then
    wakes only for heartbeats, the lifetime and the end."""
    direct = stream_send if stream_send is not None and stream_send.writes_directly else None
    loop = asyncio.get_running_loop()
    deadline = None
    if settings.stream_max_seconds > 0:
        lifetime = settings.stream_max_seconds * (1 - _LIFETIME_JITTER * random.random())
        deadline = loop.time() + lifetime
    while not subscriber.ended:
        wait = settings.heartbeat_seconds
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
            if wait <= 0:
                # The client reconnects with Last-Event-ID, possibly to another replica.
                record.reason = "lifetime"
                return
        # Not while it is behind: what it is sent then goes through the send, which waits for it
        # to drain or cuts it off.
        if direct is not None and replay_end is None and direct.keeping_up():
            subscriber.attach(direct.write_now)
        batch = await subscriber.next_batch(wait)
        subscriber.detach()  # what this loop sends next goes after what the hub wrote
        if batch is None:
            if deadline is None or loop.time() < deadline:
                yield HEARTBEAT
            continue
        if replay_end is not None:
            batch, replay_end = _skip_replayed(batch, replay_end)
        for chunk in _chunks(item.wire for item in batch):
            yield chunk
    if subscriber.revoked:
        record.reason = "revoked"
        # No id: the client's Last-Event-ID stays where its events stopped.
        yield encode_event(json.dumps({"reason": subscriber.revoked}), event_type=REVOKED_TYPE)
        return
    record.reason = "slow"
    logger.info(
        "Ended the stream of a client that fell behind (over %d events or %d bytes waiting)",
        settings.client_queue_size,
        settings.client_max_backlog_bytes,
        extra={"stream_id": record.stream_id},
    )


def _chunks(wires: Iterable[bytes]) -> Iterable[bytes]:
    """Join small events into chunks of about _CHUNK_BYTES: few writes, no large copies."""
    parts: list[bytes] = []
    size = 0
    for wire in wires:
        parts.append(wire)
        size += len(wire)
        if size >= _CHUNK_BYTES:
            yield b"".join(parts)
            parts, size = [], 0
    if parts:
        yield b"".join(parts)


def _skip_replayed(
    batch: list[Event | Reset], replay_end: tuple[int, int]
) -> tuple[list[Event | Reset], tuple[int, int] | None]:
    """Drop live events the replay already sent; after the first newer one, stop checking."""
    kept: list[Event | Reset] = []
    for index, item in enumerate(batch):
        if isinstance(item, Reset) or item.sort_key is None:
            kept.append(item)
        elif item.sort_key > replay_end:
            return kept + batch[index:], None
    return kept, replay_end
