"""What a broker does: store events with ids in a bounded history and carry them to every process.

Two implementations: ``RedisBroker`` (any number of processes and hosts) and ``InMemoryBroker``
(one process; the embedded default when ``REDIS_URL`` is unset).
"""

from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Container, Iterable
from typing import Protocol

from ..event import Draft, Event


class HistoryGap(Exception):
    """History no longer holds the event to resume after (trimmed, or Redis lost its data)."""


class FeedSink(Protocol):
    """Receives what a feed reads (implemented by the per-process hub)."""

    def deliver(self, event: Event) -> None: ...

    def lost_events(self, latest_event_id: str | None) -> None:
        """Events may have been missed and history cannot bridge the gap: clients must reset
        their state as of ``latest_event_id``, the newest event in history (None if empty)."""


class Feed(ABC):
    """A process's single live subscription to the broker, shared by all of its clients."""

    @abstractmethod
    async def subscribe(self, channel: str) -> None:
        """Start receiving ``channel``; returns once no event published later can be missed.
        Raises BrokerUnavailable if that cannot be done in time."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    @abstractmethod
    def problem(self) -> str | None:
        """Why the feed cannot deliver right now (disconnected, restarting), or None if it can."""

    @abstractmethod
    async def aclose(self) -> None: ...


class Broker(ABC):
    @abstractmethod
    def publish(self, draft: Draft) -> Event:
        """Store and deliver an event; returns it with its id. Raises BrokerUnavailable."""

    @abstractmethod
    async def apublish(self, draft: Draft) -> Event: ...

    @abstractmethod
    def history_after(
        self, event_id: str | None, channels: Container[str] | None = None
    ) -> AsyncIterator[tuple[str, Iterable[Event]]]:
        """The stored events after ``event_id`` (None: from the oldest), in order, page by page:
        ``(id of the page's last entry, its events on channels (all if None))``. Take a page's
        events before asking for the next page; a page may hold no events; only the current page
        is in memory. Raises HistoryGap if ``event_id`` is not (or no longer) in history, and
        BrokerUnavailable."""

    @abstractmethod
    async def latest_event_id(self) -> str | None:
        """The id of the newest event in history, or None if history is empty."""

    @abstractmethod
    def open_feed(self, sink: FeedSink) -> Feed: ...

    @abstractmethod
    def check(self) -> None:
        """Raise BrokerUnavailable unless the broker can be used right now."""
