"""The Redis broker: history in a capped Redis stream, live delivery over Pub/Sub.

Publishing runs one Lua script that appends the event to the stream (XADD with MAXLEN) and
publishes it with its new id, atomically: Pub/Sub order is history order, so a client can switch
from replay to live delivery without a gap or a duplicate. The script publishes
``<id> <signature>\\n<envelope>`` (see ``signing.py``); a message that is a bare envelope
(published by another service) has no id. With an idempotency key, the same script first looks
the key up, and records it with the id it publishes.

With ``Replication.replicas`` above 0 (``EVENTS_PUBLISH_REPLICAS``), the script is followed on
the same connection by Redis's ``WAIT`` (on a cluster, a connection to the master of the event's
partition: ``cluster.on_the_master_of``): a publish is acknowledged only once that many replicas
hold it (the event and its idempotency key), so that a failover to one of them cannot lose it. If
they do not confirm in time, the publish raises BrokerUnavailable: the event went out to the
processes connected now, and may or may not survive a failover; a retry with its idempotency key
publishes it at most once more.

Each process opens one Pub/Sub connection, shared by all of its clients (``feed.py``).

Access changes (``access/revocation.py``) take the same path on a second, smaller stream: a script
appends each to ``<prefix>:access-changes`` and publishes ``<id>\\n<change>`` on the control
channel, so that a process whose connection was down reads what it missed when it reconnects
(``history.py``).
"""

import asyncio
import logging
from collections.abc import AsyncIterator, Container, Iterable
from dataclasses import dataclass
from typing import Any

import redis
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.cluster import RedisCluster

from ...core.channels import CONTROL
from ...core.event import Draft, Event
from ...exceptions import BrokerUnavailable, IdempotencyConflict
from ..base import AccessChange, Broker, Feed, FeedSink, Once, Publication, envelope_digest
from .cluster import on_the_master_of
from .connection import REDIS_ERRORS, RedisConnection
from .feed import RedisFeed
from .history import ACCESS_CHANGES_KEPT, RedisHistory
from .rates import RedisRateLimits
from .slots import RedisStreamSlots

logger = logging.getLogger(__name__)

# KEYS[2], when given, is an idempotency key: if it was seen, what it recorded ("<id> <envelope
# digest>") is returned and nothing is published; otherwise it records the new id.
_PUBLISH = """
if KEYS[2] then
  local seen = redis.call('GET', KEYS[2])
  if seen then return {0, seen} end
end
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*',
                      'channel', ARGV[4], 'envelope', ARGV[3])
redis.call(ARGV[6], ARGV[2], id .. ' ' .. redis.sha1hex(ARGV[5] .. id) .. '\\n' .. ARGV[3])
if KEYS[2] then redis.call('SET', KEYS[2], id .. ' ' .. ARGV[8], 'EX', ARGV[7]) end
return {1, id}
"""
# Access changes: appended to their own capped stream, and published with their id.
_SIGNAL_ACCESS_CHANGE = """
local id = redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'change', ARGV[3])
redis.call(ARGV[4], ARGV[2], id .. '\\n' .. ARGV[3])
return id
"""


@dataclass(frozen=True, slots=True)
class Replication:
    """How many replicas must hold a publish before it is acknowledged, and how long to wait."""

    replicas: int = 0
    timeout_milliseconds: int = 1000


class RedisBroker(Broker):
    def __init__(
        self, connection: RedisConnection, replication: Replication = Replication()
    ) -> None:
        self.connection = connection
        self.replication = replication
        self.history = RedisHistory(connection)
        self.stream_slots = RedisStreamSlots(connection)
        self.rate_limits = RedisRateLimits(connection)
        self._publish_script = connection.script(_PUBLISH)
        self._signal_access_change_script = connection.script(_SIGNAL_ACCESS_CHANGE)

    def _publish_args(self, draft: Draft, once: Once | None) -> tuple[list[str], list[str | int]]:
        connection = self.connection
        partition = connection.partition_of(draft.channel)
        keys = [self.history.key(partition)]
        args: list[str | int] = [
            connection.history_length,
            connection.pubsub_channel(draft.channel),
            draft.envelope,
            draft.channel,
            connection.signing_keys[0],
            connection.publish_command,
        ]
        if once is not None:
            # In the event's partition: one script, on one node. A key used again for an event
            # of another partition is not seen there (docs/events.md).
            keys.append(connection.partition_key(partition, "idempotency", once.digest))
            args += [once.seconds, envelope_digest(draft)]
        return keys, args

    def publish(self, draft: Draft, once: Once | None = None) -> Publication:
        keys, args = self._publish_args(draft, once)
        replicas = self.replication.replicas
        try:
            if not replicas:
                return _publication(draft, self._publish_script(keys=keys, args=args))
            client = self.connection.sync_client
            if isinstance(client, RedisCluster):
                reply, copies = on_the_master_of(
                    client, keys[0], lambda master, asking: self._wait(master, keys, args, asking)
                )
            else:
                reply, copies = self._wait(client, keys, args)
        except REDIS_ERRORS as error:
            raise _not_published(error) from error
        return self._replicated(_publication(draft, reply), copies)

    def _wait(
        self, client: redis.Redis, keys: list[str], args: list[str | int], asking: bool = False
    ) -> tuple[list[Any], int]:
        """The script, then WAIT, on one connection: WAIT counts the replicas that hold this
        connection's writes."""
        with client.pipeline(transaction=False) as pipe:
            if asking:
                pipe.execute_command("ASKING")  # type: ignore[no-untyped-call]
            self._publish_script(keys=keys, args=args, client=pipe)
            pipe.wait(self.replication.replicas, self.replication.timeout_milliseconds)
            *_, reply, copies = pipe.execute()
        return reply, copies

    async def apublish(self, draft: Draft, once: Once | None = None) -> Publication:
        keys, args = self._publish_args(draft, once)
        replicas = self.replication.replicas
        try:
            if not replicas:
                return _publication(
                    draft, await self.connection.run(self._publish_script, keys, args)
                )
            client = self.connection.async_client()
            if isinstance(client, AsyncRedisCluster):
                # One master's connection, by the sync client's routing (a publish that waits
                # for replicas is not on a stream's path).
                return await asyncio.to_thread(self.publish, draft, once)
            async with client.pipeline(transaction=False) as pipe:
                pipe.scripts.add(self._publish_script)  # loaded first if Redis lacks it
                pipe.evalsha(self._publish_script.sha, len(keys), *keys, *args)
                pipe.wait(replicas, self.replication.timeout_milliseconds)
                reply, copies = await pipe.execute()
        except REDIS_ERRORS as error:
            raise _not_published(error) from error
        return self._replicated(_publication(draft, reply), copies)

    def _replicated(self, publication: Publication, copies: int) -> Publication:
        if copies < self.replication.replicas:
            raise BrokerUnavailable(
                f"Event {publication.event.id} was stored, but {copies} of "
                f"{self.replication.replicas} Redis replicas confirmed it within "
                f"{self.replication.timeout_milliseconds} ms (EVENTS_PUBLISH_REPLICAS): it may "
                "or may not survive a failover. Publish it again with its idempotency key if it "
                "must not be lost."
            )
        return publication

    @property
    def partitions(self) -> int:
        return self.connection.partitions

    def history_after(
        self, partition: int, event_id: str | None, channels: Container[str] | None = None
    ) -> AsyncIterator[tuple[str, Iterable[Event]]]:
        return self.history.history_after(partition, event_id, channels)

    async def latest_event_id(self, partition: int) -> str | None:
        return await self.history.latest_event_id(partition)

    async def reset_point(self, partition: int) -> str:
        return await self.history.reset_point(partition)

    def signal_access_change(self, change: AccessChange) -> None:
        control = self.connection.pubsub_channel(CONTROL)
        keys = [self.history.access_changes_key]
        args = [
            str(ACCESS_CHANGES_KEPT),
            control,
            change.encode().decode(),
            self.connection.publish_command,
        ]
        try:
            try:
                self._signal_access_change_script(keys=keys, args=args)
            except redis.ResponseError as error:
                # The key holds something else (or Redis refuses writes): the processes
                # connected now still get the change, without an id.
                logger.error("Access change not kept in %s: %s", keys[0], error)
                self.connection.publish(control, change.encode())
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"Redis is unavailable: {error}") from error

    def open_feed(self, sink: FeedSink) -> Feed:
        return RedisFeed(self.connection, self.history, sink)

    def check(self) -> None:
        try:
            self.connection.sync_client.ping()
        except REDIS_ERRORS as error:
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


def _not_published(error: Exception) -> BrokerUnavailable:
    if isinstance(error, redis.TimeoutError):
        # The script may have run: the reply is what was lost. Never sent again on our own.
        return BrokerUnavailable(
            f"Redis did not answer in time ({error}): the event may or may not have been "
            "published. Publish it again only if duplicates are acceptable."
        )
    return BrokerUnavailable(f"Event not published: Redis is unavailable ({error}).")
