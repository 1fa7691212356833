"""The Redis broker: history in a capped Redis stream, live delivery over Pub/Sub.

Publishing runs one Lua script that appends the event to the stream (XADD with MAXLEN) and
publishes it with its new id, atomically: Pub/Sub order is history order, so a client can switch
from replay to live delivery without a gap or a duplicate. The script publishes
``<id> <signature>\\n<envelope>`` (see ``signing.py``); a message that is a bare envelope
(published by another service) has no id.

Each process opens one Pub/Sub connection, shared by all of its clients (``redis_feed.py``).

Access changes (``revocation.py``) take the same path on a second, smaller stream: a script appends
each to ``<prefix>:access-changes`` and publishes ``<id>\\n<change>`` on the control channel, so
that a process whose connection was down reads what it missed when it reconnects.
"""

import asyncio
import logging
import weakref
from collections.abc import AsyncIterator, Container, Iterable
from typing import Any, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.commands.core import Script
from redis.retry import Retry

from ..channels import CONTROL, RESET_MARKER
from ..event import Draft, Event, parse_envelope, parse_event_id
from ..exceptions import BrokerUnavailable, EventError, IdempotencyConflict
from ..malformed import report_malformed
from .base import (
    AccessChange,
    Broker,
    Feed,
    FeedSink,
    HistoryGap,
    Once,
    Publication,
    envelope_digest,
)
from .redis_feed import RedisFeed
from .redis_slots import RedisStreamSlots

logger = logging.getLogger(__name__)

_PUBLISH = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'channel', ARGV[4], 'envelope', ARGV[3])
redis.call('PUBLISH', ARGV[2], id .. ' ' .. redis.sha1hex(ARGV[5] .. id) .. '\\n' .. ARGV[3])
return id
"""
# The same, at most once per idempotency key (KEYS[2]): a key already seen returns what it
# recorded, "<id> <envelope digest>", and publishes nothing.
_PUBLISH_ONCE = """
local seen = redis.call('GET', KEYS[2])
if seen then return {0, seen} end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'channel', ARGV[4], 'envelope', ARGV[3])
redis.call('PUBLISH', ARGV[2], id .. ' ' .. redis.sha1hex(ARGV[5] .. id) .. '\\n' .. ARGV[3])
redis.call('SET', KEYS[2], id .. ' ' .. ARGV[7], 'EX', ARGV[6])
return {1, id}
"""
# The newest id in history, or the id of a marker entry added to an empty history (its channel is
# no reader's, so replay and catch-up skip it without parsing).
_RESET_POINT = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then return newest[1][1] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'channel', ARGV[2])
"""

# Access changes: appended to their own capped stream, and published with their id.
_SIGNAL_ACCESS_CHANGE = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'change', ARGV[3])
redis.call('PUBLISH', ARGV[2], id .. '\\n' .. ARGV[3])
return id
"""
# The newest entry of a stream, or a marker entry (with no change) added to an empty one: a
# reader's starting point, whose trimming later shows that it missed entries.
_NEWEST_OR_MARKER = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then return newest[1][1] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'marker', '1')
"""
# A starting point older than any entry: reading after it always finds a gap.
_NO_ACCESS_CHANGE = "0-0"
# Access changes are rare (a logout, a deleted token): this many cover any plausible time a
# feed spends reconnecting; beyond it, a process rechecks every open stream.
ACCESS_CHANGES_KEPT = 10_000

# Connections are few and long-lived; failures should surface fast so that callers see them.
# No retries: redis-py would send a command again after a lost reply, and the publish script is not
# idempotent (two ids for one event). Publishing is at most once per call; the feed reconnects by
# itself and catches up from history.
_CONNECTION_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "socket_keepalive": True,
}
# Replays and async publishes share a small pool: connections stay constant however many
# clients connect; a burst of reconnecting clients waits for a free connection instead.
_POOL_SIZE = 8
# Replay reads history in pages of this many entries: with one event built from it at a time,
# the memory a resuming client holds (at most 20 x EVENTS_MAX_PAYLOAD_BYTES).
HISTORY_PAGE_SIZE = 20


class RedisBroker(Broker):
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        history_length: int,
        max_payload_bytes: int,
        health_check_seconds: float,
        signing_keys: tuple[str, ...],
    ):
        self._url = url
        self._prefix = prefix
        self._history_key = f"{prefix}:history"
        self._access_changes_key = f"{prefix}:access-changes"
        self._history_length = history_length
        self.max_payload_bytes = max_payload_bytes
        self.health_check_seconds = health_check_seconds
        self.signing_keys = signing_keys
        self._client = redis.Redis.from_url(url, retry=Retry(NoBackoff(), 0), **_CONNECTION_OPTIONS)
        self._publish_script = self._client.register_script(_PUBLISH)
        self._reset_point_script = self._client.register_script(_RESET_POINT)
        self._publish_once_script = self._client.register_script(_PUBLISH_ONCE)
        self._signal_access_change_script = self._client.register_script(_SIGNAL_ACCESS_CHANGE)
        self._newest_or_marker_script = self._client.register_script(_NEWEST_OR_MARKER)
        self.stream_slots = RedisStreamSlots(self)
        # redis.asyncio clients belong to the event loop that created them.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, aioredis.Redis]
        self._async_clients = weakref.WeakKeyDictionary()

    @property
    def prefix(self) -> str:
        return self._prefix

    @property
    def sync_client(self) -> redis.Redis:
        return self._client

    def pubsub_channel(self, channel: str) -> str:
        return f"{self._prefix}:{channel}"

    def channel_of(self, pubsub_channel: bytes) -> str:
        return pubsub_channel.decode(errors="replace").removeprefix(f"{self._prefix}:")

    def async_client(self) -> aioredis.Redis:
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            pool = aioredis.BlockingConnectionPool.from_url(
                self._url,
                max_connections=_POOL_SIZE,
                timeout=10,
                retry=AsyncRetry(NoBackoff(), 0),
                **_CONNECTION_OPTIONS,
            )
            client = self._async_clients[loop] = aioredis.Redis(connection_pool=pool)
        return client

    def _publish_args(self, draft: Draft) -> tuple[list[str], list[str | int]]:
        keys = [self._history_key]
        args: list[str | int] = [
            self._history_length,
            self.pubsub_channel(draft.channel),
            draft.envelope,
            draft.channel,
            self.signing_keys[0],
        ]
        return keys, args

    def publish(self, draft: Draft) -> Event:
        keys, args = self._publish_args(draft)
        try:
            event_id = self._publish_script(keys=keys, args=args)
        except redis.RedisError as error:
            raise _not_published(error) from error
        return draft.with_id(event_id.decode())

    async def apublish(self, draft: Draft) -> Event:
        keys, args = self._publish_args(draft)
        client = self.async_client()
        try:
            try:
                event_id = await client.evalsha(self._publish_script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # not run: safe to send it in full
                event_id = await client.eval(_PUBLISH, len(keys), *keys, *args)
        except redis.RedisError as error:
            raise _not_published(error) from error
        return draft.with_id(event_id.decode())

    def _publish_once_args(self, draft: Draft, once: Once) -> tuple[list[str], list[str | int]]:
        keys, args = self._publish_args(draft)
        keys.append(f"{self._prefix}:idempotency:{once.digest}")
        args += [once.seconds, envelope_digest(draft)]
        return keys, args

    def publish_once(self, draft: Draft, once: Once) -> Publication:
        keys, args = self._publish_once_args(draft, once)
        try:
            reply = self._publish_once_script(keys=keys, args=args)
        except redis.RedisError as error:
            raise _not_published(error) from error
        return _publication(draft, reply)

    async def apublish_once(self, draft: Draft, once: Once) -> Publication:
        keys, args = self._publish_once_args(draft, once)
        client = self.async_client()
        try:
            try:
                script = self._publish_once_script
                reply = await client.evalsha(script.sha, len(keys), *keys, *args)
            except redis.exceptions.NoScriptError:  # not run: safe to send it in full
                reply = await client.eval(_PUBLISH_ONCE, len(keys), *keys, *args)
        except redis.RedisError as error:
            raise _not_published(error) from error
        return _publication(draft, reply)

    async def history_after(
        self, event_id: str | None, channels: Container[str] | None = None
    ) -> AsyncIterator[tuple[str, Iterable[Event]]]:
        client = self.async_client()
        anchor = None if event_id is None else parse_event_id(event_id)
        start = "-" if event_id is None else event_id
        while True:
            try:
                # Each page starts at the anchor, inclusive: finding it first proves that nothing
                # after it was trimmed away meanwhile (say, while a slow client read the last page).
                # Bytes (the client does not decode responses); redis-py types them loosely.
                entries = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    await client.xrange(
                        self._history_key,
                        start,
                        "+",
                        count=HISTORY_PAGE_SIZE + (anchor is not None),
                    ),
                )
            except redis.RedisError as error:
                raise BrokerUnavailable(f"Event history unavailable: {error}") from error
            if anchor is not None:
                if not entries or parse_event_id(entries[0][0].decode()) != anchor:
                    raise HistoryGap(start)
                entries = entries[1:]
            if not entries:
                return
            start = entries[-1][0].decode()
            anchor = parse_event_id(start)
            # Built one at a time as the reader takes them: never a page of parsed events.
            events = (self._history_event(entry, channels) for entry in entries)
            yield start, (event for event in events if event is not None)
            if len(entries) < HISTORY_PAGE_SIZE:
                return

    async def latest_event_id(self) -> str | None:
        try:
            entries = cast(
                list[tuple[bytes, Any]],
                await self.async_client().xrevrange(self._history_key, "+", "-", count=1),
            )
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error
        return entries[0][0].decode() if entries else None

    async def reset_point(self) -> str:
        keys, args = [self._history_key], [str(self._history_length), RESET_MARKER]
        try:
            point = await self._run_script(self._reset_point_script, keys, args)
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error
        return str(point.decode())

    async def _run_script(self, script: Script, keys: list[str], args: list[str]) -> Any:
        """A registered script on the async client (registered scripts run on the sync one)."""
        client = self.async_client()
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:
            # Registered from a str (above).
            return await client.eval(cast(str, script.script), len(keys), *keys, *args)

    async def access_changes_point(self) -> str:
        """The id of the newest access change (or of a marker): where a feed starts reading."""
        keys, args = [self._access_changes_key], [str(ACCESS_CHANGES_KEPT)]
        try:
            point = await self._run_script(self._newest_or_marker_script, keys, args)
        except redis.ResponseError as error:
            # The key holds something else (or Redis refuses writes): no starting point, so the
            # next catch-up finds a gap and every open stream is rechecked.
            logger.error("Access changes unreadable in %s: %s", self._access_changes_key, error)
            return _NO_ACCESS_CHANGE
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Access changes unavailable: {error}") from error
        return str(point.decode())

    async def access_changes_after(
        self, change_id: str
    ) -> AsyncIterator[tuple[str, AccessChange | None]]:
        """Each access change after ``change_id`` with its id (None for one that cannot be read,
        which is reported). Raises HistoryGap if ``change_id`` was trimmed away, or never was."""
        client = self.async_client()
        start, anchor = change_id, parse_event_id(change_id)
        while True:
            try:
                entries = cast(
                    list[tuple[bytes, dict[bytes, bytes]]],
                    await client.xrange(
                        self._access_changes_key, start, "+", count=HISTORY_PAGE_SIZE + 1
                    ),
                )
            except redis.ResponseError as error:  # the key holds something else
                logger.error("Access changes unreadable in %s: %s", self._access_changes_key, error)
                raise HistoryGap(change_id) from error
            except redis.RedisError as error:
                raise BrokerUnavailable(f"Access changes unavailable: {error}") from error
            # Inclusive of the anchor: finding it proves that nothing after it was trimmed.
            if not entries or parse_event_id(entries[0][0].decode()) != anchor:
                raise HistoryGap(change_id)
            for entry_id, fields in entries[1:]:
                yield entry_id.decode(), self._access_change(entry_id, fields)
            if len(entries) <= HISTORY_PAGE_SIZE:
                return
            start = entries[-1][0].decode()
            anchor = parse_event_id(start)

    def _access_change(self, entry_id: bytes, fields: dict[bytes, bytes]) -> AccessChange | None:
        if b"change" not in fields:  # a marker
            return None
        try:
            return AccessChange.decode(fields[b"change"])
        except ValueError as error:
            report_malformed("access change", entry_id, error)
            return None

    def _history_event(
        self, entry: tuple[bytes, dict[bytes, bytes]], channels: Container[str] | None
    ) -> Event | None:
        """The entry as an event, or None if the reader may not see it or it is unusable."""
        entry_id, fields = entry
        channel = fields.get(b"channel")
        # Entries carry their channel: most of a replay is skipped without parsing JSON.
        channel_name = None if channel is None else channel.decode(errors="replace")
        if channels is not None and channel_name is not None and channel_name not in channels:
            return None
        try:
            event = parse_envelope(
                fields.get(b"envelope", b""),
                event_id=entry_id.decode(errors="replace"),
                max_payload_bytes=self.max_payload_bytes,
            )
        except EventError as error:
            report_malformed("history entry", entry_id, error)
            return None
        if channel_name is not None and event.channel != channel_name:
            report_malformed(
                "history entry", entry_id, f"addressed elsewhere than {channel_name!r}"
            )
            return None
        return event if channels is None or event.channel in channels else None

    def signal_access_change(self, change: AccessChange) -> None:
        keys = [self._access_changes_key]
        args = [str(ACCESS_CHANGES_KEPT), self.pubsub_channel(CONTROL), change.encode().decode()]
        try:
            try:
                self._signal_access_change_script(keys=keys, args=args)
            except redis.ResponseError as error:
                # The key holds something else (or Redis refuses writes): the processes
                # connected now still get the change, without an id.
                logger.error("Access change not kept in %s: %s", self._access_changes_key, error)
                self._client.publish(self.pubsub_channel(CONTROL), change.encode())
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Redis is unavailable: {error}") from error

    def open_feed(self, sink: FeedSink) -> Feed:
        return RedisFeed(self, sink)

    def check(self) -> None:
        try:
            self._client.ping()
        except redis.RedisError as error:
            raise BrokerUnavailable(f"Redis is unavailable: {error}") from error


def _publication(draft: Draft, reply: list[Any]) -> Publication:
    published, value = int(reply[0]), reply[1].decode()
    if published:
        return Publication(draft.with_id(value), replayed=False)
    event_id, _, digest = value.partition(" ")
    if digest != envelope_digest(draft):
        raise IdempotencyConflict(
            "This idempotency key was used for another event: use a new key for a new event."
        )
    return Publication(draft.with_id(event_id), replayed=True)


def _not_published(error: redis.RedisError) -> BrokerUnavailable:
    if isinstance(error, redis.TimeoutError):
        # The script may have run: the reply is what was lost. Never sent again on our own.
        return BrokerUnavailable(
            f"Redis did not answer in time ({error}): the event may or may not have been "
            "published. Publish it again only if duplicates are acceptable."
        )
    return BrokerUnavailable(f"Event not published: Redis is unavailable ({error}).")
