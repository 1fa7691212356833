"""A process's one Pub/Sub connection to Redis, shared by all of its clients, and supervised.

What keeps it delivering:

- **Nothing one message holds can stop it.** A message that cannot be parsed or routed is
  skipped and counted (``telemetry/malformed.py``); any other error ends only the current connection, and
  the supervisor opens a new one with backoff (0.2 s to 1 s, with jitter), for as long as the
  process lives. While it is down, ``problem()`` says why, and ``/readyz`` answers 503.
- **A dead connection is noticed within seconds.** When Redis has sent nothing for
  ``health_check_seconds``, the feed sends a PING on the connection; if no reply of any kind comes
  within as long again, the connection is dropped and replaced (a NAT or a frozen Redis keeps TCP
  open and silent, which the OS would notice only after hours).
- **Catch-up is exact.** The feed keeps a watermark per partition of history
  (``core/positions.py``): the newest id of the partition such that every event up to it, on
  every channel it subscribes to there, has been received. After a reconnect it replays from each
  partition's history what came after its watermark, then resumes live delivery without a
  duplicate; if a watermark is no longer in history, the clients of that partition get a
  ``reset``, and so does every client that resumes from before the loss (the feed marks it in
  history: a client away when the events were lost may have missed them too).

The feed also listens, for its whole life, to the control channel (``core/channels.CONTROL``),
where processes ask each other to recheck the access of a user's open streams
(``access/revocation.py``). Access changes have a watermark of their own, and are caught up the
same way after a reconnect (at once: a change that names a credential ends its streams before the
database is asked). Then every open stream is rechecked anyway: a change whose sender could not
reach Redis while this connection was down is in no history at all.

A watermark moves with every live event of its partition, and when a channel is subscribed: the
partition's newest id is read just before the SUBSCRIBE is sent, and it becomes the watermark when
Redis confirms the SUBSCRIBE on this connection. Redis answers on one connection in order, so by
then every earlier event on the channels already subscribed has arrived; and the new channel's
earlier events were published before its clients connected, so a catch-up must not send them.
"""

import asyncio
import logging
import random
from collections import deque
from typing import Any

from ...core.channels import CONTROL
from ...core.event import parse_envelope, parse_event_id
from ...core.positions import EventKey
from ...exceptions import BrokerUnavailable
from ...telemetry import metrics
from ...telemetry.malformed import report_malformed
from ..base import AccessChange, Feed, FeedSink, HistoryGap
from .connection import REDIS_ERRORS, PubSubLike, RedisConnection
from .history import NO_ACCESS_CHANGE, RedisHistory
from .signing import verified_id

logger = logging.getLogger(__name__)

_SUBSCRIBE_TIMEOUT_SECONDS = 10.0
_CONNECT_TIMEOUT_SECONDS = 10.0
_BACKOFF_FIRST_SECONDS = 0.2
# Live delivery resumes within about a second of Redis (or the master Sentinel promotes) answering
# again. An attempt costs little: a lookup, a refused connection; one a second per process.
_BACKOFF_MAX_SECONDS = 1.0
# Told apart from redis-py's own health-check PING, whose reply redis-py hides.
_LIVENESS_PING = "events-feed-liveness"


class _ConnectionLost(Exception):
    """The connection a subscription was waiting on is gone; try again on the next one."""


class RedisFeed(Feed):
    def __init__(self, connection: RedisConnection, history: RedisHistory, sink: FeedSink) -> None:
        self._connection = connection
        self._history = history
        self._sink = sink
        self._health_check_seconds = connection.health_check_seconds
        self._channels: set[str] = set()
        self._confirmations: dict[str, deque[asyncio.Future[None]]] = {}
        self._pubsub: PubSubLike | None = None
        self._connected = asyncio.Event()
        self._problem: str | None = "connecting to Redis"
        # Per partition: the watermark's id (None: history was empty) and its key.
        self._watermarks: dict[int, tuple[str | None, EventKey]] = {}
        # The newest access change received, read when the first connection is made.
        self._access_watermark = NO_ACCESS_CHANGE
        self._access_watermark_key = (0, 0)
        self._latest_ids: dict[int, asyncio.Task[str | None]] = {}
        self._closing = False
        self._supervisor = self._start()

    def _start(self) -> "asyncio.Task[None]":
        return asyncio.create_task(self._supervise(), name="events-redis-feed")

    # --- Feed ---------------------------------------------------------------------------------

    async def subscribe(self, channel: str) -> str | None:
        self._ensure_running()
        self._channels.add(channel)
        try:
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_SECONDS):
                while channel in self._channels:
                    await self._connected.wait()
                    try:
                        return await self._subscribe_on_this_connection(channel)
                    except (_ConnectionLost, BrokerUnavailable, *REDIS_ERRORS, OSError):
                        # The reader notices within a second, reconnects and resubscribes.
                        await asyncio.sleep(0.05)
        except TimeoutError:
            self._channels.discard(channel)
            raise BrokerUnavailable("Could not subscribe: Redis is unavailable.") from None
        return None  # unsubscribed meanwhile: no one waits for its events

    async def _subscribe_on_this_connection(self, channel: str) -> str | None:
        pubsub = self._pubsub
        partition = self._connection.partition_of(channel)
        latest = await self._newest_id(partition)
        if pubsub is None or pubsub is not self._pubsub:
            raise _ConnectionLost
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations.setdefault(channel, deque()).append(confirmed)
        try:
            await pubsub.subscribe(self._connection.pubsub_channel(channel))
            await confirmed
        finally:
            self._forget_confirmation(channel, confirmed)
        self._advance(partition, latest)
        # Not the watermark now: events of this channel may have come in since the
        # confirmation, and reached its subscribers.
        return latest

    async def _newest_id(self, partition: int) -> str | None:
        # Shared by the subscriptions that start while one read is in flight: it was sent before
        # any of their SUBSCRIBEs, which is all that matters.
        latest = self._latest_ids.get(partition)
        if latest is None or latest.done():
            latest = self._latest_ids[partition] = asyncio.ensure_future(
                self._history.latest_event_id(partition)
            )
        return await asyncio.shield(latest)

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._pubsub is not None and self._connected.is_set():
            # On failure, the next connection subscribes only to the channels still wanted.
            try:
                await self._pubsub.unsubscribe(self._connection.pubsub_channel(channel))
            except (*REDIS_ERRORS, OSError) as error:
                logger.debug("Unsubscribe from %r failed: %s", channel, error)

    def watermark(self, partition: int) -> str | None:
        return self._watermarks.get(partition, (None, (0, 0)))[0]

    def problem(self) -> str | None:
        # Read from other threads (readiness probes): only reads attributes.
        if self._supervisor.done() and not self._closing:
            return "Redis feed stopped"
        return None if self._connected.is_set() else self._problem

    async def aclose(self) -> None:
        self._closing = True
        self._supervisor.cancel()
        await asyncio.gather(self._supervisor, return_exceptions=True)

    def _ensure_running(self) -> None:
        # The supervisor catches every error; this covers what it cannot (a BaseException). Called
        # on the event loop only.
        if self._supervisor.done() and not self._closing:
            logger.error("Event feed had stopped; restarting it")
            self._supervisor = self._start()

    # --- Supervision --------------------------------------------------------------------------

    async def _supervise(self) -> None:
        delay = _BACKOFF_FIRST_SECONDS
        first = True
        while True:
            pubsub = self._connection.pubsub()
            try:
                async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
                    await self._connect(pubsub, catch_up=not first)
                delay = _BACKOFF_FIRST_SECONDS
                if not first:
                    metrics.feed_reconnects.inc()
                    logger.info("Event feed reconnected to Redis")
                first = False
                await self._read(pubsub)
            except asyncio.CancelledError:
                raise
            except Exception as error:  # whatever it is, the feed must come back
                self._problem = f"Redis feed down: {type(error).__name__}: {error}"
                logger.warning("Event feed lost Redis (%s); retrying in %.1fs", error, delay)
            finally:
                self._disconnected()
                await _close_quietly(pubsub)
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _BACKOFF_MAX_SECONDS)

    def _disconnected(self) -> None:
        self._connected.clear()
        self._pubsub = None
        for waiters in self._confirmations.values():
            for waiter in waiters:
                if not waiter.done():
                    waiter.set_exception(_ConnectionLost())

    async def _connect(self, pubsub: PubSubLike, *, catch_up: bool) -> None:
        """Subscribe every wanted channel, then catch up: nothing published meanwhile is lost."""
        await pubsub.connect()
        if not catch_up:
            self._advance_access(await self._history.access_changes_point())
        # A partition without a watermark has no subscription confirmed yet: no client of it
        # waits for anything published before now.
        for partition in self._partitions() - self._watermarks.keys():
            self._advance(partition, await self._history.latest_event_id(partition))
        held: list[dict[str, Any]] = []
        channels = {self._connection.pubsub_channel(name) for name in {*self._channels, CONTROL}}
        await pubsub.subscribe(*channels)
        while channels:  # every SUBSCRIBE confirmed before history is read
            message = await pubsub.get_message(timeout=self._health_check_seconds)
            if message is None:
                raise TimeoutError("Redis did not confirm the subscriptions")
            if message["type"] == "subscribe":
                channels.discard(message["channel"].decode(errors="replace"))
            else:
                held.append(message)
        if catch_up:
            await self._catch_up()
            await self._catch_up_access_changes()
            # An access change whose sender could not reach Redis meanwhile (it was frozen,
            # restarted, cut off) is in no history: every open stream is rechecked, whatever
            # Redis kept.
            logger.info("Rechecking the access of every open stream after the reconnect")
            self._sink.access_may_have_changed()
        for message in held:  # arrived while subscribing: those in history are now duplicates
            self._handle_safely(message)
        self._pubsub = pubsub
        self._problem = None
        self._connected.set()

    def _partitions(self) -> set[int]:
        return {self._connection.partition_of(channel) for channel in self._channels}

    async def _catch_up(self) -> None:
        """Deliver what was published while the connection was down, or make clients reset."""
        for partition in sorted(self._partitions()):
            watermark = self._watermarks.get(partition, (None, (0, 0)))[0]
            try:
                async for last_id, events in self._history.history_after(
                    partition, watermark, self._channels
                ):
                    for event in events:
                        self._sink.deliver(event)
                    self._advance(partition, last_id)
            except HistoryGap:
                logger.warning("Events after %s are gone from history; clients reset", watermark)
                # In history, for the clients away meanwhile: they resume from before it.
                point = await self._history.mark_loss(partition)
                self._watermarks.pop(partition, None)
                self._advance(partition, point)
                self._sink.lost_events(partition, point)

    async def _catch_up_access_changes(self) -> None:
        """Recheck the streams of every access change made while the connection was down."""
        try:
            async for change_id, change in self._history.access_changes_after(
                self._access_watermark
            ):
                if change is not None:
                    self._sink.access_changed(change)
                self._advance_access(change_id)
        except HistoryGap:
            # Every open stream is rechecked after a reconnect (_connect): that covers these.
            logger.warning(
                "Access changes after %s are gone; rechecking every open stream",
                self._access_watermark,
            )
            self._access_watermark, self._access_watermark_key = NO_ACCESS_CHANGE, (0, 0)
            self._advance_access(await self._history.access_changes_point())

    async def _read(self, pubsub: PubSubLike) -> None:
        loop = asyncio.get_running_loop()
        interval = self._health_check_seconds
        heard = loop.time()
        pinged: float | None = None
        while True:
            message = await pubsub.get_message(timeout=min(interval, 1.0))
            now = loop.time()
            if message is not None:
                heard, pinged = now, None
                self._handle_safely(message)
            elif pinged is not None and now - pinged > interval:
                raise TimeoutError(f"Redis sent nothing for {now - heard:.1f}s, not even a PONG")
            elif pinged is None and now - heard > interval:
                await pubsub.ping(_LIVENESS_PING)
                pinged = now

    # --- Messages -----------------------------------------------------------------------------

    def _handle_safely(self, message: dict[str, Any]) -> None:
        try:
            self._handle(message)
        except Exception as error:  # one message must never end the feed
            report_malformed("Pub/Sub message on", message.get("channel"), repr(error))

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "message":
            if self._connection.channel_of(message["channel"]) == CONTROL:
                self._handle_access_change(message["data"])
            else:
                self._handle_event(message["channel"], message["data"])
        elif kind == "subscribe":
            waiters = self._confirmations.get(self._connection.channel_of(message["channel"]))
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break

    def _handle_event(self, pubsub_channel: bytes, payload: bytes) -> None:
        channel = self._connection.channel_of(pubsub_channel)
        try:
            event_id, envelope = self._split_id(payload)
            event = parse_envelope(
                envelope, event_id=event_id, max_payload_bytes=self._connection.max_payload_bytes
            )
        except Exception as error:
            report_malformed("Pub/Sub message on", channel, error)
            return
        if event.channel != channel:
            report_malformed("Pub/Sub message on", channel, f"addressed to {event.channel!r}")
            return
        if event.id is not None:
            # Signed ids only grow: an older one was delivered by a catch-up after a reconnect
            # (or is a signed message replayed by someone with access to Redis).
            partition = self._connection.partition_of(channel)
            key = parse_event_id(event.id)
            if key <= self._watermarks.get(partition, (None, (0, 0)))[1]:
                return
            self._watermarks[partition] = (event.id, key)
        self._sink.deliver(event)

    def _handle_access_change(self, payload: bytes) -> None:
        """``<id>\\n<change>`` from the signal script, or a bare change (no id)."""
        if payload[:1].isdigit():
            head, _, payload = payload.partition(b"\n")
            change_id = head.decode()
            if parse_event_id(change_id) <= self._access_watermark_key:
                return  # caught up after a reconnect already
            change = AccessChange.decode(payload)
            self._advance_access(change_id)
        else:
            change = AccessChange.decode(payload)
        self._sink.access_changed(change)

    def _split_id(self, payload: bytes) -> tuple[str | None, bytes]:
        """``<id> <signature>\\n<envelope>`` from the publish script, or a bare envelope (no id)
        from another publisher."""
        if not payload[:1].isdigit():
            return None, payload
        head, _, envelope = payload.partition(b"\n")
        return verified_id(head, self._connection.signing_keys), envelope

    def _advance(self, partition: int, event_id: str | None) -> None:
        """The partition's watermark is at least ``event_id`` (None: its history was empty; a
        partition without one catches up from its oldest event)."""
        current = self._watermarks.get(partition)
        if event_id is None:
            if current is None:
                self._watermarks[partition] = (None, (0, 0))
            return
        key = parse_event_id(event_id)
        if current is None or key > current[1]:
            self._watermarks[partition] = (event_id, key)

    def _advance_access(self, change_id: str) -> None:
        if (key := parse_event_id(change_id)) > self._access_watermark_key:
            self._access_watermark, self._access_watermark_key = change_id, key

    def _forget_confirmation(self, channel: str, waiter: asyncio.Future[None]) -> None:
        waiters = self._confirmations.get(channel)
        if waiters is None:
            return
        if waiter in waiters:
            waiters.remove(waiter)
        if not waiters:  # per-channel state lives only while someone waits on it
            del self._confirmations[channel]


async def _close_quietly(pubsub: PubSubLike) -> None:
    try:
        await pubsub.aclose()
    except Exception as error:  # the connection is being thrown away anyway
        logger.debug("Closing the Pub/Sub connection failed: %s", error)
