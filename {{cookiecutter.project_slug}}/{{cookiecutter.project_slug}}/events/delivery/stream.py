"""One client's event stream, from the view that accepts it to its last byte.

The view builds an ``EventStream`` (what the client may read, from where, under which grant and
open-streams slot) and returns it in an ``EventStreamResponse``; the stream handler binds it to
the client's connection; Django's handler then iterates it. The stream owns everything of its
life: its slot, its place in the hub, its connection (which the hub may write to directly), its
log record, why it ended, and its part in a graceful shutdown.

The order of operations is what makes replay exact: the client joins the hub first (after which
no new event can be missed), then reads history after its ``Last-Event-ID``, then gets live
events, skipping those the replay already sent.

Once the response has started, nothing can change its status: any error ends the stream with a
comment and a log line, and the client reconnects with its ``Last-Event-ID``.
"""

import asyncio
import json
import logging
import random
from collections.abc import AsyncGenerator, Callable, Iterable
from contextlib import AbstractAsyncContextManager, aclosing, nullcontext
from typing import Any

from django.http import StreamingHttpResponse

from ..access.recheck import StreamAccess
from ..broker.base import Broker
from ..conf import EventSettings
from ..core.event import REVOKED_TYPE
from ..core.positions import Position, partition_of
from ..core.wire import HEARTBEAT, encode_comment, encode_event, encode_retry
from ..exceptions import BrokerUnavailable
from ..telemetry import metrics
from ..telemetry.metrics import EndReason
from ..telemetry.stream_log import StreamRecord
from .daphne import StreamSend
from .hub import Subscriber, get_hub
from .position import StreamPosition
from .replay import FROM_THE_OLDEST, AfterReplay, Replay
from .shutdown import process_shutdown

logger = logging.getLogger(__name__)

# Streams end a little before their maximum lifetime, at random, so that clients of a replica
# reconnect spread out in time and rebalance across replicas.
_LIFETIME_JITTER = 0.1
# Live events waiting for a client are written in chunks of about this size, never one big copy.
_CHUNK_BYTES = 64 * 1024


class EventStream:
    """One client's stream: iterate it for its bytes (once)."""

    __slots__ = (
        "_access",
        "_channels",
        "_last_event_id",
        "_settings",
        "_slot",
        "connection",
        "reason",
        "record",
    )

    def __init__(
        self,
        channels: frozenset[str],
        last_event_id: str | None,
        settings: EventSettings,
        access: StreamAccess | None = None,
        slot: AbstractAsyncContextManager[Any] | None = None,
    ) -> None:
        """``slot``: held while the stream runs (its user's share of the open-streams limit)."""
        self._channels = channels
        self._last_event_id = last_event_id
        self._settings = settings
        self._access = access
        self._slot = slot
        self.record = StreamRecord(
            access.user_pk if access else None, resumed=last_event_id is not None
        )
        self.reason: EndReason | None = None  # set when the stream itself ends it
        # Bound by the stream handler before the first byte (none under another handler).
        self.connection: StreamSend | None = None

    def bind(self, connection: StreamSend) -> None:
        """Write to ``connection``: the hub may then write events to it directly, and a shutdown
        can end the stream on it."""
        self.connection = connection

    @property
    def end_reason(self) -> EndReason:
        """Why it ended: its own doing, its connection's (a slow client, a shutdown), or else the
        client's."""
        by_connection = self.connection.ended_by if self.connection else None
        return self.reason or by_connection or EndReason.CLIENT

    # --- Its part in a graceful shutdown (shutdown.Drainable) ---------------------------------

    def end_for_shutdown(self, goodbye: bytes) -> bool:
        return self.connection is not None and self.connection.finish_now(goodbye)

    @property
    def flushing(self) -> bool:
        transport = self.connection.transport if self.connection else None
        return transport is not None and transport.connected

    # --- Its bytes ----------------------------------------------------------------------------

    def __aiter__(self) -> AsyncGenerator[bytes, None]:
        return self._chunks()

    async def _chunks(self) -> AsyncGenerator[bytes, None]:
        shutdown = process_shutdown()
        shutdown.track(self)
        settings = self._settings
        try:
            async with self._slot or nullcontext():
                if shutdown.draining:
                    self.reason = EndReason.SHUTDOWN
                    yield shutdown.goodbye(settings)
                    return
                # Looked up here, not by the view: the view runs in a worker thread, and the hub
                # belongs to the event loop that iterates this stream.
                hub = get_hub()
                try:
                    subscriber = await hub.join(
                        self._channels,
                        settings.client_queue_size,
                        settings.client_max_backlog_bytes,
                        self._access,
                    )
                except BrokerUnavailable as error:
                    self.reason = EndReason.BROKER_UNAVAILABLE
                    logger.warning("Stream closed at start: %s", error)
                    yield encode_retry(settings.retry_milliseconds) + encode_comment(
                        "broker unavailable, reconnect later"
                    )
                    return
                # Nothing is sent before the client is subscribed: Daphne sends the response
                # headers with the first chunk, so a browser's "open" means that no event
                # published afterwards can be missed.
                self.record.opened()
                try:
                    async with aclosing(self._events(hub.broker, subscriber)) as chunks:
                        async for chunk in chunks:
                            yield chunk
                finally:
                    self.record.live = subscriber.sent
                    await hub.leave(subscriber)
        finally:
            shutdown.untrack(self)
            self.record.ended(self.end_reason)

    async def _events(self, broker: Broker, subscriber: Subscriber) -> AsyncGenerator[bytes, None]:
        """What the client missed, then live events, with heartbeats, until the stream ends; an
        error ends it with a comment. (Two generators in turn, each closed at once by aclosing
        when the client leaves, rather than when the garbage collector gets to it.)"""
        try:
            retry = encode_retry(self._settings.retry_milliseconds)
            partitions = broker.partitions
            after = None
            if self._last_event_id is not None:
                after = Position.parse(self._last_event_id, partitions)
            partition_of = self._place(subscriber, partitions, after)
            after_replay = None
            if after is None:
                yield retry + self._where(subscriber) + encode_comment("connected")
            else:
                reading = sorted({partition_of(channel) for channel in subscriber.channels})
                replay = Replay(broker, subscriber.channels, after, reading, subscriber.wire_of)
                async with aclosing(self._replayed(replay, subscriber, retry)) as chunks:
                    async for chunk in chunks:
                        yield chunk
                if subscriber.position is not None:
                    yield self._where(subscriber)  # it may start in partitions it had not read
                after_replay = AfterReplay(replay, replay.replayed, partition_of)
            async with aclosing(self._live(subscriber, after_replay)) as chunks:
                async for chunk in chunks:
                    yield chunk
        except BrokerUnavailable as error:  # Redis went away mid-stream: expected, not a bug
            self.reason = EndReason.BROKER_UNAVAILABLE
            logger.warning("Stream ended: %s", error, extra={"stream_id": self.record.stream_id})
            yield encode_comment("broker unavailable, reconnect later")
        except Exception:
            # Never a hung request: the client learns that the stream ended, and resumes by id.
            self.reason = EndReason.ERROR
            logger.exception("Stream ended by an error", extra={"stream_id": self.record.stream_id})
            yield encode_comment("server error, reconnect")

    @staticmethod
    def _place(
        subscriber: Subscriber, partitions: int, after: Position | None
    ) -> Callable[[str], int]:
        """With several partitions, gives the subscriber its position: the client's, and where
        it joined the partitions the client's does not name. Returns the partition of a
        channel."""
        if partitions == 1:
            return _the_one_partition
        position = after.copy() if after is not None else Position(partitions)
        if not position.lost:
            for partition, start in (subscriber.starts or {}).items():
                if position.after(partition) is None:
                    position.advance(partition, start or FROM_THE_OLDEST)
        places = {channel: partition_of(channel, partitions) for channel in subscriber.channels}
        subscriber.position = StreamPosition(position, places)
        return subscriber.position.partition_of

    @staticmethod
    def _where(subscriber: Subscriber) -> bytes:
        """The stream's position as an id without an event: a client (EventSource included)
        then resumes from it even if no event reaches it before the stream ends, rather than
        from nothing, which would miss what is published while it reconnects. With one
        partition, where it joined: the newest id then, or the oldest of an empty history."""
        position = subscriber.position
        if position is not None:
            return f"id: {position.format()}\n\n".encode()
        return f"id: {(subscriber.starts or {}).get(0) or FROM_THE_OLDEST}\n\n".encode()

    async def _replayed(
        self, replay: Replay, subscriber: Subscriber, retry: bytes
    ) -> AsyncGenerator[bytes, None]:
        first = True
        try:
            async with aclosing(replay.chunks()) as chunks:
                async for wire in chunks:
                    if subscriber.revoked:
                        break
                    yield retry + wire if first else wire
                    first = False
        finally:
            self.record.replayed = replay.sent
            metrics.replayed.inc(replay.sent)
        if first:
            yield retry + encode_comment("up to date")

    async def _live(
        self, subscriber: Subscriber, after_replay: AfterReplay | None
    ) -> AsyncGenerator[bytes, None]:
        """Live events until the stream ends. While the client keeps up (and, after a replay, once
        the live events have passed it), the hub writes them itself (see hub.py); this loop then
        wakes only for heartbeats, the lifetime and the end."""
        settings = self._settings
        connection = self.connection
        direct = connection if connection is not None and connection.writes_directly else None
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
                    self.reason = EndReason.LIFETIME
                    return
            # Not while it is behind: what it is sent then goes through the send, which waits for
            # it to drain or cuts it off.
            replaying = after_replay is not None and not after_replay.done
            if direct is not None and not replaying and direct.keeping_up():
                subscriber.attach(direct.write_now)
            batch = await subscriber.next_batch(wait)
            subscriber.detach()  # what this loop sends next goes after what the hub wrote
            if batch is None:
                if deadline is None or loop.time() < deadline:
                    yield HEARTBEAT
                continue
            if after_replay is not None and not after_replay.done:
                batch = after_replay.filter(batch)
            for chunk in _chunks(subscriber.wire_of(item) for item in batch):
                yield chunk
        if subscriber.revoked:
            self.reason = EndReason.REVOKED
            # No id: the client's Last-Event-ID stays where its events stopped.
            yield encode_event(json.dumps({"reason": subscriber.revoked}), event_type=REVOKED_TYPE)
            return
        self.reason = EndReason.SLOW
        logger.info(
            "Ended the stream of a client that fell behind (over %d events or %d bytes waiting)",
            settings.client_queue_size,
            settings.client_max_backlog_bytes,
            extra={"stream_id": self.record.stream_id},
        )


class EventStreamResponse(StreamingHttpResponse):
    """A stream's response: ``text/event-stream``, never cached or buffered, and the stream itself
    (``stream``), which the stream handler binds to the client's connection."""

    def __init__(self, stream: EventStream) -> None:
        super().__init__(stream, content_type="text/event-stream")
        self.stream = stream
        self["Cache-Control"] = "no-cache"
        # nginx buffers proxied responses unless told not to; the stream must flush every event.
        self["X-Accel-Buffering"] = "no"
        # The server closes a stream's connection when the stream ends (daphne.py): a client
        # must not send its next request on it.
        self["Connection"] = "close"


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


def _the_one_partition(channel: str) -> int:
    return 0
