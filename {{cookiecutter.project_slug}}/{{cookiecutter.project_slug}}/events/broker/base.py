"""What a broker does: store events with ids in a bounded history and carry them to every process.

Two implementations: ``RedisBroker`` (``redis/``: any number of processes and hosts) and
``InMemoryBroker`` (``memory.py``: one process; the embedded default when ``REDIS_URL`` is unset).
"""

import hashlib
import json
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Container, Iterable
from dataclasses import dataclass
from typing import Protocol

from ..core.event import Draft, Event
from .rates import RateLimits
from .slots import StreamSlots

# History is read in pages of this many entries, the next page only once the reader took the
# last: a resuming client holds at most one page (20 x EVENTS_MAX_PAYLOAD_BYTES) in memory.
HISTORY_PAGE_SIZE = 20


class HistoryGap(Exception):
    """History no longer holds the event to resume after (trimmed, or Redis lost its data)."""


@dataclass(frozen=True, slots=True)
class AccessChange:
    """A control message to every process: recheck the open streams of ``user`` (a primary key).

    ``credential`` (a fingerprint, see access/credentials.py) names a session or token that no longer
    authenticates: streams opened with it end at once, for ``reason``, without asking the
    database (which may not know yet). Kept apart from event history, for the processes that were
    disconnected when it was sent; forging one can only make streams recheck their access.
    """

    user: str
    credential: str | None = None
    reason: str | None = None

    def encode(self) -> bytes:
        return json.dumps([self.user, self.credential, self.reason]).encode()

    @classmethod
    def decode(cls, payload: bytes) -> "AccessChange":
        """Raises ValueError unless ``payload`` is what ``encode`` makes."""
        fields = json.loads(payload)
        if not (
            isinstance(fields, list)
            and len(fields) == 3
            and isinstance(fields[0], str)
            and all(field is None or isinstance(field, str) for field in fields[1:])
        ):
            raise ValueError(f"not an access change: {payload[:100]!r}")
        return cls(*fields)


@dataclass(frozen=True, slots=True)
class Once:
    """Publish at most once per ``key`` within ``seconds``: a retry gets the first event's id."""

    key: str
    seconds: int

    @property
    def digest(self) -> str:
        """The key as stored: any string a client sends is a short, safe name."""
        return hashlib.sha256(self.key.encode()).hexdigest()


@dataclass(frozen=True, slots=True)
class Publication:
    event: Event
    replayed: bool  # True: published before under this key; nothing was published now


def envelope_digest(draft: Draft) -> str:
    """Tells a retry (same event) from a key used again for another event."""
    return hashlib.sha256(draft.envelope.encode()).hexdigest()[:32]


class FeedSink(Protocol):
    """Receives what a feed reads (implemented by the per-process hub)."""

    def deliver(self, event: Event) -> None: ...

    def lost_events(self, partition: int, reset_point: str) -> None:
        """Events of ``partition`` may have been missed and history cannot bridge the gap: its
        clients must reset their state as of ``reset_point`` (see Broker.reset_point)."""

    def access_changed(self, change: AccessChange) -> None: ...

    def access_may_have_changed(self) -> None:
        """Access changes may have been missed, and which is unknown: recheck every stream."""


class Feed(ABC):
    """A process's single live subscription to the broker, shared by all of its clients."""

    @abstractmethod
    async def subscribe(self, channel: str) -> str | None:
        """Start receiving ``channel``; returns once no event published later can be missed,
        with the watermark of its partition then (see ``watermark``). Raises BrokerUnavailable
        if that cannot be done in time."""

    @abstractmethod
    async def unsubscribe(self, channel: str) -> None: ...

    def watermark(self, partition: int) -> str | None:
        """The newest id of ``partition`` up to which every event of the subscribed channels has
        been received (None if history was empty): a stream that joins now receives every
        later event, and starts from it (sent as its first id, ``delivery/stream.py``)."""
        return None

    @abstractmethod
    def problem(self) -> str | None:
        """Why the feed cannot deliver right now (disconnected, restarting), or None if it can."""

    @abstractmethod
    async def aclose(self) -> None: ...


class Broker(ABC):
    stream_slots: StreamSlots  # the open streams of each user, over every process of this broker
    rate_limits: RateLimits  # hits per window of each key (user and action), over the same

    @property
    def partitions(self) -> int:
        """How many partitions history has (core/positions.py): each its own order and ids."""
        return 1

    @abstractmethod
    def publish(self, draft: Draft, once: Once | None = None) -> Publication:
        """Store and deliver an event, with its new id; raises BrokerUnavailable.

        With ``once``: unless ``once.key`` published an event within ``once.seconds``; then that
        event, replayed, and nothing is published. Raises IdempotencyConflict if that was another
        event."""

    @abstractmethod
    async def apublish(self, draft: Draft, once: Once | None = None) -> Publication: ...

    @abstractmethod
    def history_after(
        self, partition: int, event_id: str | None, channels: Container[str] | None = None
    ) -> AsyncIterator[tuple[str, Iterable[Event]]]:
        """The stored events of ``partition`` after ``event_id`` (None: from the oldest), in
        order, page by page:
        ``(id of the page's last entry, its events on channels (all if None))``. Take a page's
        events before asking for the next page; a page may hold no events; only the current page
        is in memory. Raises HistoryGap if ``event_id`` is not (or no longer) in history, and
        BrokerUnavailable."""

    @abstractmethod
    async def latest_event_id(self, partition: int) -> str | None:
        """The id of the newest event in the partition's history, or None if it is empty."""

    @abstractmethod
    async def reset_point(self, partition: int) -> str:
        """Where a client that must reload its state resumes from, in ``partition``: the newest
        id in its history.
        If history is empty (a Redis restart without persistence), a marker entry is added, that
        no reader receives, so that the point is an id in history all the same: without one, the
        client would resume with no ``Last-Event-ID`` and silently miss what came meanwhile."""

    @abstractmethod
    def signal_access_change(self, change: AccessChange) -> None:
        """Send ``change`` to the feeds of every process (the sender's included).
        Raises BrokerUnavailable."""

    @abstractmethod
    def open_feed(self, sink: FeedSink) -> Feed: ...

    @abstractmethod
    def check(self) -> None:
        """Raise BrokerUnavailable unless the broker can be used right now."""
