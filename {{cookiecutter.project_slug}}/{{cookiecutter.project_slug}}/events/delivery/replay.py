"""What a resuming client missed, read from history after its ``Last-Event-ID``: in each
partition it reads, after its position there (core/positions.py)."""

from collections.abc import AsyncGenerator, Callable, Container, Iterable, Sequence

from ..broker.base import Broker, HistoryGap
from ..core.event import Event
from ..core.positions import Position
from ..telemetry import metrics
from .position import Reset

# A stream that started on an empty history: its partitions are read from their oldest event.
FROM_THE_OLDEST = "0-0"


class Replay:
    """What a resuming client missed, one event per chunk, read from history a page at a time.

    The stream's send waits while the client has not taken what was sent (``daphne.py``), so a
    replay holds one page of history in memory, however long it is. Where history no longer holds
    the client's place in a partition (or its id is of another layout), the replay is a ``reset``.
    """

    def __init__(
        self,
        broker: Broker,
        channels: Container[str],
        after: Position,
        reading: Sequence[int],
        wire_of: Callable[[Event | Reset], bytes],
    ) -> None:
        self._broker = broker
        self._channels = channels
        self._after = after
        self._reading = reading
        self._wire_of = wire_of
        # Live events up to here were replayed, or were sent before the client reconnected.
        self.end = after.copy()
        self.sent = 0  # events, not a reset
        self.replayed: set[int] = set()  # the partitions it read (or reset)

    async def chunks(self) -> AsyncGenerator[bytes, None]:
        if self._after.lost:
            for partition in self._reading:
                yield await self._reset(partition)
            return
        for partition in self._reading:
            start = self._after.after(partition)
            if start is None:  # not read before: from the moment the stream joined
                continue
            self.replayed.add(partition)
            try:
                async for last_id, events in self._broker.history_after(
                    partition, None if start == FROM_THE_OLDEST else start, self._channels
                ):
                    for event in events:
                        yield self._wire_of(event)
                        # Resumed once the stream has sent it.
                        self.sent += 1
                    self.end.advance(partition, last_id)
            except HistoryGap:
                yield await self._reset(partition)

    async def _reset(self, partition: int) -> bytes:
        self.replayed.add(partition)
        point = await self._broker.reset_point(partition)
        # Live events up to the newest in history are part of the state the client reloads.
        self.end.advance(partition, point)
        metrics.resets_sent.inc()
        return self._wire_of(Reset(point, partition))


class AfterReplay:
    """Drops the live events a replay already sent (they reached the hub while it read history),
    partition by partition, until the live events of each replayed partition pass its end."""

    __slots__ = ("_end", "_partition_of", "_pending")

    def __init__(
        self, replay: Replay, replayed: Iterable[int], partition_of: Callable[[str], int]
    ) -> None:
        self._end = replay.end
        self._pending = set(replayed)
        self._partition_of = partition_of

    @property
    def done(self) -> bool:
        return not self._pending

    def filter(self, batch: list[Event | Reset]) -> list[Event | Reset]:
        kept: list[Event | Reset] = []
        for item in batch:
            if isinstance(item, Reset) or item.sort_key is None:
                kept.append(item)
                continue
            partition = self._partition_of(item.channel)
            if partition not in self._pending:
                kept.append(item)
            elif self._end.is_new(partition, item.sort_key):
                # Later events of this partition come later still: no more checks there.
                self._pending.discard(partition)
                kept.append(item)
        return kept
