"""Reading the Redis broker's history: the events of each partition's history (``<prefix>:history``
with one partition, ``{<prefix>.<n>}:history`` with several) and the access changes (kept in the
control channel's partition), capped Redis streams read by the same pager.

Replay reads events after a client's ``Last-Event-ID``; the feed reads both after its watermarks
when it reconnects. Entries that cannot be used are skipped and reported, never fatal.
"""

import logging
from collections.abc import AsyncIterator, Container, Iterable
from contextlib import aclosing
from typing import Any, cast

import redis

from ...core.channels import CONTROL, RESET_MARKER
from ...core.event import Event, parse_envelope
from ...exceptions import BrokerUnavailable, EventError
from ...telemetry.malformed import report_malformed
from ..base import AccessChange, HistoryGap
from .connection import REDIS_ERRORS, Entry, RedisConnection

logger = logging.getLogger(__name__)

# The newest id of a stream, or the id of a marker entry added to an empty one: its channel is no
# reader's, and it holds no access change, so that replay and catch-up skip it without parsing.
# A starting point in the stream all the same, whose trimming later shows that entries were missed.
_NEWEST_OR_MARKER = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then return newest[1][1] end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'channel', ARGV[2])
"""
# Added by a feed that finds events it had received gone from history (a failover to a replica
# that had not received them, a restart without persistence), unless the newest entry is one
# already (each process that notices adds none of its own). Its clients are reset; so is any
# reader that resumes from before it, connected then or not: it may have missed what was lost.
_LOSS_MARKER = """
local newest = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', 1)
if newest[1] then
  local fields = newest[1][2]
  for i = 1, #fields, 2 do
    if fields[i] == 'lost' then return newest[1][1] end
  end
end
return redis.call('XADD', KEYS[1], 'MAXLEN', '~', ARGV[1], '*', 'channel', ARGV[2], 'lost', '1')
"""
_MARKER_CHANNEL = RESET_MARKER.encode()
# A starting point older than any entry: reading after it always finds a gap.
NO_ACCESS_CHANGE = "0-0"
# Access changes are rare (a logout, a deleted token): this many cover any plausible time a
# feed spends reconnecting; beyond it, a process rechecks every open stream.
ACCESS_CHANGES_KEPT = 10_000


class RedisHistory:
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self.access_changes_key = connection.partition_key(
            connection.partition_of(CONTROL), "access-changes"
        )
        self._newest_or_marker = connection.script(_NEWEST_OR_MARKER)
        self._loss_marker = connection.script(_LOSS_MARKER)

    def key(self, partition: int) -> str:
        return self._connection.partition_key(partition, "history")

    # --- Events -------------------------------------------------------------------------------

    async def history_after(
        self, partition: int, event_id: str | None, channels: Container[str] | None = None
    ) -> AsyncIterator[tuple[str, Iterable[Event]]]:
        """See Broker.history_after."""
        key = self.key(partition)
        try:
            async with aclosing(self._connection.entries_after(key, event_id)) as pages:
                async for entries in pages:
                    if any(_is_loss_marker(fields) for _, fields in entries):
                        raise HistoryGap(event_id or "")
                    # Built one at a time as the reader takes them: never a page of parsed events.
                    events = (self._event(entry, channels) for entry in entries)
                    yield entries[-1][0].decode(), (event for event in events if event is not None)
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error

    async def latest_event_id(self, partition: int) -> str | None:
        try:
            entries = cast(
                list[tuple[bytes, Any]],
                await self._connection.async_client().xrevrange(
                    self.key(partition), "+", "-", count=1
                ),
            )
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error
        return entries[0][0].decode() if entries else None

    async def reset_point(self, partition: int) -> str:
        """See Broker.reset_point."""
        args: list[str | int] = [self._connection.history_length, RESET_MARKER]
        try:
            point = await self._connection.run(self._newest_or_marker, [self.key(partition)], args)
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error
        return str(point.decode())

    async def mark_loss(self, partition: int) -> str:
        """Marks in the partition's history that events after some of its readers' positions
        are gone (see _LOSS_MARKER); returns the marker's id, where its readers resume from."""
        args: list[str | int] = [self._connection.history_length, RESET_MARKER]
        try:
            point = await self._connection.run(self._loss_marker, [self.key(partition)], args)
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"Event history unavailable: {error}") from error
        return str(point.decode())

    def _event(self, entry: Entry, channels: Container[str] | None) -> Event | None:
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
                max_payload_bytes=self._connection.max_payload_bytes,
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

    # --- Access changes -----------------------------------------------------------------------

    async def access_changes_point(self) -> str:
        """The id of the newest access change (or of a marker): where a feed starts reading."""
        args: list[str | int] = [ACCESS_CHANGES_KEPT, RESET_MARKER]
        try:
            point = await self._connection.run(
                self._newest_or_marker, [self.access_changes_key], args
            )
        except redis.ResponseError as error:
            # The key holds something else (or Redis refuses writes): no starting point, so the
            # next catch-up finds a gap and every open stream is rechecked.
            logger.error("Access changes unreadable in %s: %s", self.access_changes_key, error)
            return NO_ACCESS_CHANGE
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"Access changes unavailable: {error}") from error
        return str(point.decode())

    async def access_changes_after(
        self, change_id: str
    ) -> AsyncIterator[tuple[str, AccessChange | None]]:
        """Each access change after ``change_id`` with its id (None for one that cannot be read,
        which is reported). Raises HistoryGap if ``change_id`` was trimmed away, or never was."""
        pages = self._connection.entries_after(self.access_changes_key, change_id)
        try:
            async with aclosing(pages):
                async for entries in pages:
                    for entry_id, fields in entries:
                        yield entry_id.decode(), self._access_change(entry_id, fields)
        except redis.ResponseError as error:  # the key holds something else
            logger.error("Access changes unreadable in %s: %s", self.access_changes_key, error)
            raise HistoryGap(change_id) from error
        except REDIS_ERRORS as error:
            raise BrokerUnavailable(f"Access changes unavailable: {error}") from error

    def _access_change(self, entry_id: bytes, fields: dict[bytes, bytes]) -> AccessChange | None:
        if b"change" not in fields:  # a marker
            return None
        try:
            return AccessChange.decode(fields[b"change"])
        except ValueError as error:
            report_malformed("access change", entry_id, error)
            return None


def _is_loss_marker(fields: dict[bytes, bytes]) -> bool:
    return b"lost" in fields and fields.get(b"channel") == _MARKER_CHANNEL
