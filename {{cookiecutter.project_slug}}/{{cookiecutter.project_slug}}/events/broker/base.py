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

    def lost_events(self, reset_point: str) -> None:
        """Events may have been missed and history cannot bridge the gap: clients must reset
        their state as of ``reset_point`` (see Broker.reset_point)."""


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
    async def reset_point(self) -> str:
        """Where a client that must reload its state resumes from: the newest id in history.
        If history is empty (a Redis restart without persistence), a marker entry is added, that
        no reader receives, so that the point is an id in history all the same: without one, the
        client would resume with no ``Last-Event-ID`` and silently miss what came meanwhile."""

    @abstractmethod
    def open_feed(self, sink: FeedSink) -> Feed: ...

    @abstractmethod
    def check(self) -> None:
        """Raise BrokerUnavailable unless the broker can be used right now."""
