"""A broker inside one process: for development, tests and the demo, with Redis's semantics.

Ids, bounded history, channels and replay behave as with Redis, but events never leave the process,
so it is only right for a single server process (``runserver`` or one Daphne).
"""

import asyncio
import itertools
import threading
import time
from collections import deque
from collections.abc import AsyncIterator, Container, Iterable

from ..core.channels import RESET_MARKER
from ..core.event import Draft, Event, parse_event_id
from ..exceptions import IdempotencyConflict
from .base import (
    HISTORY_PAGE_SIZE,
    AccessChange,
    Broker,
    Feed,
    FeedSink,
    HistoryGap,
    Once,
    Publication,
    envelope_digest,
)
from .rates import MemoryRateLimits
from .slots import MemoryStreamSlots


class InMemoryBroker(Broker):
    def __init__(self, history_length: int) -> None:
        self._history: deque[Event] = deque(maxlen=max(history_length, 1))
        # publish() may run in a worker thread (sync views) while feeds live on the event loop.
        self._lock = threading.Lock()
        self._last_id = (0, 0)
        self._feeds: set[_MemoryFeed] = set()
        self.rate_limits = MemoryRateLimits()
        self.stream_slots = MemoryStreamSlots(self.rate_limits)
        # Idempotency keys seen: digest -> (event id, envelope digest, expiry), oldest first.
        self._seen: dict[str, tuple[str, str, float]] = {}

    def publish(self, draft: Draft, once: Once | None = None) -> Publication:
        with self._lock:  # reentrant: one publish with its idempotency key, atomically
            if once is not None:
                seen = self._seen_before(draft, once)
                if seen is not None:
                    return seen
            event = draft.with_id(self._next_id())
            self._history.append(event)
            # Scheduled under the lock, so feeds see events in id order whatever thread publishes.
            for feed in self._feeds:
                feed.deliver_threadsafe(event)
            if once is not None:
                assert event.id is not None  # published events have ids
                expiry = time.monotonic() + once.seconds
                self._seen[once.digest] = (event.id, envelope_digest(draft), expiry)
        return Publication(event, replayed=False)

    async def apublish(self, draft: Draft, once: Once | None = None) -> Publication:
        return self.publish(draft, once)

    def _seen_before(self, draft: Draft, once: Once) -> Publication | None:
        """The event ``once.key`` published, if it did within ``once.seconds``."""
        now = time.monotonic()
        while self._seen:  # expired keys go, oldest first (insertion order = expiry order)
            oldest = next(iter(self._seen))
            if self._seen[oldest][2] > now:
                break
            del self._seen[oldest]
        seen = self._seen.get(once.digest)
        if seen is None:
            return None
        if seen[1] != envelope_digest(draft):
            raise IdempotencyConflict(
                "This idempotency key was used for another event: use a new key for a new event."
            )
        return Publication(draft.with_id(seen[0]), replayed=True)

    async def history_after(
        self, partition: int, event_id: str | None, channels: Container[str] | None = None
    ) -> AsyncIterator[tuple[str, Iterable[Event]]]:
        after = None if event_id is None else parse_event_id(event_id)
        while True:
            with self._lock:
                page = self._page_after(after)
            if page is None:
                raise HistoryGap(event_id)
            if not page:
                return
            last = page[-1]
            assert last.id is not None  # stored events have ids
            after = parse_event_id(last.id)
            yield (
                last.id,
                [event for event in page if channels is None or event.channel in channels],
            )
            await asyncio.sleep(0)

    def _page_after(self, after: tuple[int, int] | None) -> list[Event] | None:
        """Up to a page of events after ``after`` (None: the oldest); None if it is not in history."""
        if after is None:
            return list(itertools.islice(self._history, HISTORY_PAGE_SIZE))
        for index, event in enumerate(self._history):
            if event.sort_key == after:
                stop = index + 1 + HISTORY_PAGE_SIZE
                return list(itertools.islice(self._history, index + 1, stop))
        return None

    async def latest_event_id(self, partition: int = 0) -> str | None:
        with self._lock:
            return self._newest_id()

    def _newest_id(self) -> str | None:
        """With the lock held."""
        return self._history[-1].id if self._history else None

    async def reset_point(self, partition: int = 0) -> str:
        with self._lock:
            if not self._history:  # a marker no reader receives: see Broker.reset_point
                self._history.append(Event("marker", "{}", RESET_MARKER, self._next_id()))
            newest = self._history[-1].id
        assert newest is not None  # stored events have ids
        return newest

    def signal_access_change(self, change: AccessChange) -> None:
        with self._lock:
            for feed in self._feeds:
                feed.access_changed_threadsafe(change)

    def open_feed(self, sink: FeedSink) -> Feed:
        feed = _MemoryFeed(self, sink, asyncio.get_running_loop())
        with self._lock:
            self._feeds.add(feed)
        return feed

    def check(self) -> None:
        """Always usable: it lives in this process."""

    def _next_id(self) -> str:
        now = (int(time.time() * 1000), 0)
        self._last_id = now if now > self._last_id else (self._last_id[0], self._last_id[1] + 1)
        return f"{self._last_id[0]}-{self._last_id[1]}"

    def _forget(self, feed: "_MemoryFeed") -> None:
        with self._lock:
            self._feeds.discard(feed)


class _MemoryFeed(Feed):
    def __init__(self, broker: InMemoryBroker, sink: FeedSink, loop: asyncio.AbstractEventLoop):
        self._broker = broker
        self._sink = sink
        self._loop = loop
        self.channels: set[str] = set()

    def deliver_threadsafe(self, event: Event) -> None:
        self._loop.call_soon_threadsafe(self._deliver_if_subscribed, event)

    def access_changed_threadsafe(self, change: AccessChange) -> None:
        self._loop.call_soon_threadsafe(self._sink.access_changed, change)

    def _deliver_if_subscribed(self, event: Event) -> None:
        if event.channel in self.channels:
            self._sink.deliver(event)

    async def subscribe(self, channel: str) -> str | None:
        # Under the publishers' lock: every event after this id is delivered to the channel.
        with self._broker._lock:
            self.channels.add(channel)
            return self._broker._newest_id()

    def watermark(self, partition: int) -> str | None:
        with self._broker._lock:
            return self._broker._newest_id()

    async def unsubscribe(self, channel: str) -> None:
        with self._broker._lock:
            self.channels.discard(channel)

    def problem(self) -> None:
        return None  # nothing to lose a connection to

    async def aclose(self) -> None:
        self._broker._forget(self)
