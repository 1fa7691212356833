"""Where a stream is: the events it lost (``Reset``), and its position over the partitions it
reads (core/positions.py), written as its ids.

With one partition an event's own id is where a stream is, and every recipient shares the event's
bytes. With several, each stream writes its own ``id:`` line, its position in every partition it
reads, before the event's shared body.
"""

from collections.abc import Mapping

from ..core.event import RESET_TYPE, Event
from ..core.positions import Position
from ..core.wire import encode_event


class Reset:
    """Where a subscriber lost events of ``partition``: the client must reload its state as of
    ``event_id``.

    It carries an id in history (Broker.reset_point): the client's ``Last-Event-ID`` is then a
    valid point to resume from, so that nothing published after the reset can be missed.
    """

    __slots__ = ("event_id", "partition", "wire")

    def __init__(self, event_id: str, partition: int = 0) -> None:
        self.event_id = event_id
        self.partition = partition
        self.wire = encode_event("{}", event_type=RESET_TYPE, event_id=event_id)


class StreamPosition:
    """A stream's ``Position`` in the partitions of its channels, moved by what it is sent."""

    __slots__ = ("_partition_of", "position", "reading")

    def __init__(self, position: Position, partition_of: Mapping[str, int]) -> None:
        self.position = position
        self._partition_of = dict(partition_of)  # of each channel the stream reads
        self.reading = tuple(sorted(set(partition_of.values())))

    def partition_of(self, channel: str) -> int:
        return self._partition_of[channel]

    def wire_of(self, item: Event | Reset) -> bytes:
        """``item`` with this stream's position, once it has moved past it, as its id."""
        if isinstance(item, Reset):
            self.position.advance(item.partition, item.event_id)
            return encode_event("{}", event_type=RESET_TYPE, event_id=self.format())
        if item.id is None:  # a bare envelope from another publisher: where it was is unknown
            return item.body_wire
        self.position.advance(self._partition_of[item.channel], item.id)
        return b"id: " + self.format().encode() + b"\n" + item.body_wire

    def format(self) -> str:
        return self.position.format(self.reading)
