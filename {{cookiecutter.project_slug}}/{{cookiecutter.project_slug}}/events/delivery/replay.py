"""What a resuming client missed, read from history after its ``Last-Event-ID``."""

from collections.abc import AsyncGenerator, Container

from ..broker.base import Broker, HistoryGap
from ..core.event import parse_event_id
from ..telemetry import metrics
from .hub import Reset


class Replay:
    """What a resuming client missed, one event per chunk, read from history a page at a time.

    The stream's send waits while the client has not taken what was sent (``daphne.py``), so a
    replay holds one page of history in memory, however long it is. When history no longer holds
    the client's id, the replay is a ``reset``.
    """

    def __init__(self, broker: Broker, channels: Container[str], after: str) -> None:
        self._broker = broker
        self._channels = channels
        self._after = after
        # Live events up to here were replayed, or were sent before the client reconnected.
        self.end: tuple[int, int] = parse_event_id(after)
        self.sent = 0  # events, not a reset

    async def chunks(self) -> AsyncGenerator[bytes, None]:
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
            metrics.resets_sent.inc()
            yield Reset(point).wire
