"""The Redis broker: history in a capped Redis stream, live delivery over Pub/Sub.

Publishing runs one Lua script that appends the event to the stream (XADD with MAXLEN) and
publishes it with its new id, atomically: Pub/Sub order is history order, so a client can switch
from replay to live delivery without a gap or a duplicate.

Each process opens one Pub/Sub connection, shared by all of its clients, and subscribes only to
the channels its clients need. After a lost connection it reconnects with backoff and replays what
it missed from the stream; if that is gone too, it tells its clients to reset.
"""

import asyncio
import contextlib
import logging
import random
import weakref
from collections import defaultdict, deque
from typing import Any

import redis
import redis.asyncio as aioredis
from redis.backoff import NoBackoff
from redis.retry import Retry

from ..event import Draft, Event, parse_envelope, parse_event_id
from ..exceptions import BrokerUnavailable, EventError
from .base import Broker, Feed, FeedSink

logger = logging.getLogger(__name__)

_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'envelope', ARGV[3])
redis.call('PUBLISH', ARGV[2], '{"id":"' .. id .. '",' .. string.sub(ARGV[3], 2))
return id
"""
# Connections are few and long-lived; failures should surface fast so that callers see them.
_CONNECTION_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_keepalive": True,
    "retry": Retry(NoBackoff(), 1),
}
# Replays and async publishes share a small pool: connections stay constant however many
# clients connect; a burst of reconnecting clients waits for a free connection instead.
_POOL_SIZE = 8
_SUBSCRIBE_TIMEOUT_SECONDS = 10.0
_READ_TIMEOUT_SECONDS = 5.0
_BACKOFF_FIRST_SECONDS = 0.2
_BACKOFF_MAX_SECONDS = 10.0


class RedisBroker(Broker):
    def __init__(self, url: str, *, prefix: str, history_length: int, max_payload_bytes: int):
        self._url = url
        self._prefix = prefix
        self._history_key = f"{prefix}:history"
        self._history_length = history_length
        self._max_payload_bytes = max_payload_bytes
        self._client = redis.Redis.from_url(url, socket_timeout=5, **_CONNECTION_OPTIONS)
        self._publish_script = self._client.register_script(_PUBLISH)
        # redis.asyncio clients belong to the event loop that created them.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]
        self._async_clients = weakref.WeakKeyDictionary()

    def pubsub_channel(self, channel: str) -> str:
        return f"{self._prefix}:{channel}"

    def channel_of(self, pubsub_channel: bytes) -> str:
        return pubsub_channel.decode(errors="replace").removeprefix(f"{self._prefix}:")

    def async_client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url, max_connections=_POOL_SIZE, timeout=10, **_CONNECTION_OPTIONS
            )
            client = self._async_clients[loop] = aioredis.Redis(connection_pool=pool)
        return client

    def _publish_args(self, draft: Draft) -> tuple[list[str], list[str | int]]:
        keys = [self._history_key]
        args: list[str | int] = [
            self._history_length,
            self.pubsub_channel(draft.channel),
            draft.envelope,
        ]
        return keys, args

    def publish(self, draft: Draft) -> Event:
        keys, args = self._publish_args(draft)
        try:
            event_id = self._publish_script(keys=keys, args=args)
        except redis.RedisError as error:
            raise BrokerUnavailable(
                f"Event not published: Redis is unavailable ({error})."
            ) from error
        return draft.with_id(event_id.decode())

    async def apublish(self, draft: Draft) -> Event:
        keys, args = self._publish_args(draft)
        client = self.async_client()
        try:
            event_id = await client.evalsha(self._publish_script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            event_id = await client.eval(_PUBLISH, len(keys), *keys, *args)
        except redis.RedisError as error:
            raise BrokerUnavailable(
                f"Event not published: Redis is unavailable ({error})."
            ) from error
        return draft.with_id(event_id.decode())

    async def events_after(self, event_id: str | None) -> list[Event] | None:
        client = self.async_client()
        try:
            if event_id is None:
                entries = await client.xrange(self._history_key, "-", "+")
            else:
                parse_event_id(event_id)
                async with client.pipeline(transaction=True) as pipe:
                    pipe.xrange(self._history_key, event_id, event_id)
                    pipe.xrange(self._history_key, f"({event_id}", "+")
                    anchor, entries = await pipe.execute()
                if not anchor:
                    return None
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error
        return [event for event in map(self._history_event, entries) if event is not None]

    async def latest_event_id(self) -> str | None:
        try:
            entries = await self.async_client().xrevrange(self._history_key, "+", "-", count=1)
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error
        return entries[0][0].decode() if entries else None

    def _history_event(self, entry: tuple[bytes, dict[bytes, bytes]]) -> Event | None:
        entry_id, fields = entry
        try:
            return parse_envelope(
                fields.get(b"envelope", b""),
                event_id=entry_id.decode(),
                max_payload_bytes=self._max_payload_bytes,
            )
        except EventError as error:
            logger.warning("Skipped malformed event %s in history: %s", entry_id, error)
            return None

    def open_feed(self, sink: FeedSink) -> Feed:
        return _RedisFeed(self, sink, max_payload_bytes=self._max_payload_bytes)

    def check(self) -> None:
        try:
            self._client.ping()
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Redis is unavailable: {error}") from error


def _not_published(error: redis.RedisError) -> BrokerUnavailable:
    return BrokerUnavailable(f"Event not published: Redis is unavailable ({error}).")


class _RedisFeed(Feed):
    def __init__(self, broker: RedisBroker, sink: FeedSink, *, max_payload_bytes: int) -> None:
        self._broker = broker
        self._sink = sink
        self._max_payload_bytes = max_payload_bytes
        self._channels: set[str] = set()
        self._confirmations: defaultdict[str, deque[asyncio.Future[None]]] = defaultdict(deque)
        self._pubsub: aioredis.client.PubSub | None = None
        self._connected = asyncio.Event()
        # The newest event this process has seen: where to resume after a lost connection.
        self._last_id: str | None = None
        self._last_key: tuple[int, int] | None = None
        self._reader = asyncio.create_task(self._read_forever(), name="events-redis-feed")

    async def subscribe(self, channel: str) -> None:
        confirmed = asyncio.get_running_loop().create_future()
        self._confirmations[channel].append(confirmed)
        self._channels.add(channel)
        try:
            async with asyncio.timeout(_SUBSCRIBE_TIMEOUT_SECONDS):
                await self._connected.wait()
                if channel not in self._channels:
                    return  # its only subscriber left while Redis was unreachable
                # On failure the reader reconnects and subscribes every wanted channel again.
                with contextlib.suppress(redis.RedisError):
                    await self._pubsub.subscribe(self._broker.pubsub_channel(channel))
                await confirmed
        except TimeoutError:
            self._channels.discard(channel)
            raise BrokerUnavailable("Could not subscribe: Redis is unavailable.") from None
        finally:
            if not confirmed.done():
                confirmed.cancel()

    async def unsubscribe(self, channel: str) -> None:
        self._channels.discard(channel)
        if self._pubsub is not None and self._connected.is_set():
            # On failure, the next connection subscribes only to the channels still wanted.
            with contextlib.suppress(redis.RedisError):
                await self._pubsub.unsubscribe(self._broker.pubsub_channel(channel))

    async def aclose(self) -> None:
        self._reader.cancel()
        await asyncio.gather(self._reader, return_exceptions=True)

    async def _read_forever(self) -> None:
        delay = _BACKOFF_FIRST_SECONDS
        reconnecting = False
        while True:
            pubsub = self._broker.async_client().pubsub()
            try:
                await self._connect(pubsub, reconnecting)
                delay = _BACKOFF_FIRST_SECONDS
                while True:
                    message = await pubsub.get_message(timeout=_READ_TIMEOUT_SECONDS)
                    if message is not None:
                        self._handle(message)
            except (redis.RedisError, OSError, BrokerUnavailable) as error:
                logger.warning("Event feed lost Redis (%s); retrying in %.1fs", error, delay)
            finally:
                self._connected.clear()
                self._pubsub = None
                await pubsub.aclose()
            reconnecting = True
            await asyncio.sleep(delay * random.uniform(0.5, 1.0))
            delay = min(delay * 2, _BACKOFF_MAX_SECONDS)

    async def _connect(self, pubsub: aioredis.client.PubSub, reconnecting: bool) -> None:
        await pubsub.connect()
        channels = [self._broker.pubsub_channel(channel) for channel in self._channels]
        if channels:
            await pubsub.subscribe(*channels)
        if reconnecting:
            await self._catch_up()
        elif self._last_id is None:
            self._remember(await self._broker.latest_event_id())
        self._pubsub = pubsub
        self._connected.set()
        if reconnecting:
            logger.info("Event feed reconnected to Redis")

    async def _catch_up(self) -> None:
        """Deliver what was published while the connection was down, or make clients reset."""
        missed = await self._broker.events_after(self._last_id)
        if missed is None:
            logger.warning("Events after %s are no longer in history; clients reset", self._last_id)
            self._last_id = self._last_key = None
            latest = await self._broker.latest_event_id()
            self._remember(latest)
            self._sink.lost_events(latest)
            return
        for event in missed:
            if event.channel in self._channels:
                self._sink.deliver(event)
            self._remember(event.id)

    def _remember(self, event_id: str | None) -> None:
        if event_id is not None:
            self._last_id, self._last_key = event_id, parse_event_id(event_id)

    def _handle(self, message: dict[str, Any]) -> None:
        kind = message["type"]
        if kind == "subscribe":
            waiters = self._confirmations.get(self._broker.channel_of(message["channel"]))
            while waiters:
                waiter = waiters.popleft()
                if not waiter.done():
                    waiter.set_result(None)
                    break
        elif kind == "message":
            self._handle_event(message["channel"], message["data"])

    def _handle_event(self, pubsub_channel: bytes, payload: bytes) -> None:
        channel = self._broker.channel_of(pubsub_channel)
        try:
            event = parse_envelope(payload, max_payload_bytes=self._max_payload_bytes)
        except EventError as error:
            logger.warning("Skipped malformed event on %r: %s", channel, error)
            return
        if event.channel != channel:
            logger.warning(
                "Skipped event addressed to %r but published on %r", event.channel, channel
            )
            return
        if event.id is not None:
            key = event.sort_key
            if self._last_key is not None and key <= self._last_key:
                return  # already delivered while catching up after a reconnect
            self._last_id, self._last_key = event.id, key
        self._sink.deliver(event)
