"""Partitions of history, and where a stream is in each: the ids a stream sends and resumes from.

Channels map to a fixed number of partitions (``EVENTS_PARTITIONS``), each with its own history,
order and ids (``<milliseconds>-<sequence>``, Redis's stream ids); on Redis Cluster a partition
lives on one node. A stream reads a few channels, so a few partitions: to resume exactly, the id
it sends with each event is its position in every partition it reads, and a client that echoes
its ``Last-Event-ID`` resumes after that position in each of them.

With one partition, a position is the event's own id, as it always was::

    1732450000000-0

With several, it says how many there are, then names each partition the stream reads, in order,
``_`` between the partition and its id, ``.`` between entries (characters a URL never needs to
escape)::

    p16.3_1732450000000-0.7_1732450000012-4

A partition a stream reads but its position does not name (a topic added since) is read from the
moment the stream starts, as a new stream would; a partition it names but no longer reads is
ignored. A well-formed position of another layout (another ``EVENTS_PARTITIONS``, or one partition
then several), or one that names a partition twice, is ``lost``: where it was cannot be known,
and the stream starts with a ``reset``.
"""

import zlib
from collections.abc import Iterable, Mapping

from ..exceptions import InvalidEventId
from .event import parse_event_id

# Ids are sortable as (milliseconds, sequence).
EventKey = tuple[int, int]

# Far more than a cluster has nodes, few enough that a position stays short: a stream reads at
# most 2 + EVENTS_MAX_TOPICS_PER_STREAM partitions, each at most 46 characters of its id.
MAX_PARTITIONS = 1024
_MAX_POSITION_LENGTH = 2048


def partition_of(channel: str, partitions: int) -> int:
    """The partition of ``channel``: the same in every process (CRC-32, not Python's salted
    ``hash``)."""
    return zlib.crc32(channel.encode()) % partitions if partitions > 1 else 0


class Position:
    """A stream's place in each partition it reads: the key of the last event it was sent (or
    from which it started) per partition."""

    __slots__ = ("_ids", "_keys", "_partitions", "lost")

    def __init__(
        self, partitions: int, ids: Mapping[int, str] | None = None, *, lost: bool = False
    ) -> None:
        self._partitions = partitions
        self.lost = lost
        self._ids: dict[int, str] = dict(ids or {})
        self._keys: dict[int, EventKey] = {
            partition: parse_event_id(event_id) for partition, event_id in self._ids.items()
        }

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Position) and (self._partitions, self._ids) == (
            other._partitions,
            other._ids,
        )

    def __repr__(self) -> str:
        return f"Position({self._partitions}, {self._ids!r})"

    @classmethod
    def parse(cls, text: str, partitions: int) -> "Position":
        """What ``format`` wrote; raises InvalidEventId for anything else."""
        if len(text) > _MAX_POSITION_LENGTH:
            raise _invalid(text)
        if not text.startswith("p"):
            event_id = _checked_id(text)
            return cls(1, {0: event_id}) if partitions == 1 else cls(partitions, lost=True)
        layout, *entries = text.split(".")
        if not (_is_number(layout[1:]) and entries):
            raise _invalid(text)
        ids: dict[int, str] = {}
        repeated = False
        for entry in entries:
            number, separator, event_id = entry.partition("_")
            if not (separator and _is_number(number)):
                raise _invalid(text)
            repeated |= int(number) in ids
            ids[int(number)] = _checked_id(event_id)
        # Well-formed (the API's schema cannot say "each partition once"), but not written here.
        if repeated or int(layout[1:]) != partitions or max(ids) >= partitions:
            return cls(partitions, lost=True)
        return cls(partitions, ids)

    def format(self, reading: Iterable[int] | None = None) -> str:
        """The position as an id, of the partitions ``reading`` (all it knows if None)."""
        if self._partitions == 1:
            return self._ids[0]
        wanted = sorted(self._ids if reading is None else reading)
        entries = (f"{p}_{self._ids[p]}" for p in wanted if p in self._ids)
        return ".".join((f"p{self._partitions}", *entries))

    def after(self, partition: int) -> str | None:
        """The id to read ``partition`` after, or None if this position does not name it."""
        return self._ids.get(partition)

    def is_new(self, partition: int, key: EventKey) -> bool:
        """Whether an event of ``partition`` with ``key`` comes after this position."""
        known = self._keys.get(partition)
        return known is None or key > known

    def advance(self, partition: int, event_id: str, key: EventKey | None = None) -> bool:
        """Moves to ``event_id`` in ``partition`` if it is later; returns whether it moved."""
        key = parse_event_id(event_id) if key is None else key
        if not self.is_new(partition, key):
            return False
        self._ids[partition] = event_id
        self._keys[partition] = key
        return True

    def copy(self) -> "Position":
        copied = Position(self._partitions, lost=self.lost)
        copied._ids = dict(self._ids)
        copied._keys = dict(self._keys)
        return copied


def _is_number(text: str) -> bool:
    return text.isascii() and text.isdigit() and len(text) <= 4


def _checked_id(event_id: str) -> str:
    parse_event_id(event_id)
    return event_id


def _invalid(text: str) -> InvalidEventId:
    return InvalidEventId(
        f"Invalid event id {text[:64]!r}: expected an id as sent in the stream's 'id:' lines."
    )
