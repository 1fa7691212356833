"""The per-process fan-out hub: one broker feed shared by every client of this process.

Each connected client is a ``Subscriber`` with a bounded buffer. The hub keeps, per channel, the
set of subscribers that want it, so routing one event costs O(recipients), and it subscribes the
feed to a channel when the first subscriber needs it and unsubscribes when the last one leaves.
Events arrive already parsed and encoded; all recipients share the same bytes.

A subscriber that is keeping up, on Daphne, is written to by the hub itself (``Subscriber.attach``):
``deliver`` adds each event's bytes to its outbox, and once per turn of the event loop the hub
writes every outbox to its connection, all the events of a burst in one write. There is no
wake-up of the stream's coroutine, which then only sends heartbeats and notices the end. A subscriber that
falls behind (or is replaying, or on another server) gets a bounded queue that its coroutine
drains, with flow control (``daphne.py``).

When a user's access may have changed (a control message, ``access/revocation.py``), the hub
rechecks that user's subscribers (``access/recheck.py``: in worker threads, since the checks query
the database) and ends those whose access is gone; when the feed could not tell which changes it
missed, it rechecks them all.
"""

import asyncio
import logging
import time
import weakref
from collections.abc import Callable, Collection, Iterable

from ..access.recheck import StreamAccess, recheck
from ..broker import get_broker
from ..broker.base import AccessChange, Broker, Feed
from ..core.channels import user_channel
from ..core.event import Event, parse_event_id
from ..core.positions import partition_of
from ..telemetry import metrics
from .position import Reset, StreamPosition

logger = logging.getLogger(__name__)

# The hub writes a subscriber's outbox at once when it holds this much, not only once per turn.
_MAX_OUTBOX_BYTES = 64 * 1024


class Subscriber:
    """One client's view of the hub: the channels it reads and the events waiting for it.

    Waiting events are bounded by count (``capacity``) and by their bytes (``max_bytes``, 0: no
    limit): the events are shared with every other recipient, but a client that stopped reading
    is the one keeping them alive.
    """

    __slots__ = (
        "_capacity",
        "_max_bytes",
        "_outbox",
        "_outbox_bytes",
        "_pending",
        "_pending_bytes",
        "_waiter",
        "_writer",
        "access",
        "channels",
        "overflowed",
        "position",
        "revoked",
        "sent",
        "starts",
    )

    def __init__(
        self,
        channels: frozenset[str],
        capacity: int,
        max_bytes: int = 0,
        access: StreamAccess | None = None,
    ) -> None:
        self.channels = channels
        self.access = access
        self.overflowed = False
        self.revoked: str | None = None  # why its access ended, if it did
        self.sent = 0  # live events handed to it (for its stream's log line)
        self._capacity = capacity
        self._max_bytes = max_bytes
        # A list and a bare future, not a deque and an asyncio.Event: a stream holds them all its
        # life, and those hold a 64-slot block each (over a kilobyte per stream together).
        self._pending: list[Event | Reset] = []
        self._pending_bytes = 0
        self._waiter: asyncio.Future[None] | None = None  # set while next_batch waits
        self._writer: Callable[[bytes], bool] | None = None
        self._outbox: list[bytes] = []
        self._outbox_bytes = 0
        # With several partitions: where the stream is in those it reads, sent as each event's
        # id (None with one partition: an event's own id is the stream's position).
        self.position: StreamPosition | None = None
        # Where it joined each partition it reads (the partition's newest id then, None if its
        # history was empty), set by the hub, read once by its stream.
        self.starts: dict[int, str | None] | None = None

    def joined(self, partition: int, point: str | None) -> None:
        """It receives every event of ``partition``'s channels it reads after ``point``: where
        it started there is the earliest such point (None, an empty history, is earliest)."""
        starts = self.starts
        if starts is None:
            starts = self.starts = {}
        elif partition in starts:
            known = starts[partition]
            if known is None or (
                point is not None and parse_event_id(point) >= parse_event_id(known)
            ):
                return
        starts[partition] = point

    def wire_of(self, item: Event | Reset) -> bytes:
        """``item`` as this client receives it: with its id, or its stream's position."""
        position = self.position
        return item.wire if position is None else position.wire_of(item)

    def attach(self, writer: Callable[[bytes], bool]) -> bool:
        """Have the hub write events with ``writer`` (see ``flush``) while it returns True (the
        client keeps up); returns False, and does nothing, while events wait in the queue: they
        go first."""
        if self._pending or self.ended:
            return False
        self._writer = writer
        return True

    def detach(self) -> None:
        """Back to the queue; what the outbox holds is written first, so nothing overtakes it."""
        self.flush()
        self._writer = None

    def offer(self, item: Event | Reset) -> bool:
        """Take an event; returns True when the hub must ``flush`` this subscriber (its outbox,
        empty until now, holds it)."""
        if self.overflowed or self.revoked:
            return False
        self.sent += 1
        if self._writer is not None:
            wire = self.wire_of(item)
            self._outbox.append(wire)
            self._outbox_bytes += len(wire)
            if self._outbox_bytes >= _MAX_OUTBOX_BYTES:  # a long burst: no big copies
                self.flush()
                return False
            return len(self._outbox) == 1
        self._pending_bytes += len(item.wire)
        if len(self._pending) >= self._capacity or 0 < self._max_bytes < self._pending_bytes:
            # The client is not keeping up; its stream ends and it resumes by id from history.
            self.overflowed = True
            self._pending.clear()
            self._pending_bytes = 0
        else:
            self._pending.append(item)
        self._wake()
        return False

    def flush(self) -> None:
        """Write the outbox to the client, in one write."""
        if not self._outbox or self._writer is None:
            return
        data = self._outbox[0] if len(self._outbox) == 1 else b"".join(self._outbox)
        self._outbox.clear()
        self._outbox_bytes = 0
        try:
            keeping_up = self._writer(data)
        except Exception:  # one client's connection must not stop delivery to the others
            logger.exception("Writing events to a client failed")
            keeping_up = False
        if not keeping_up:
            # Behind (or over): the stream's coroutine takes over, with flow control.
            self._writer = None
            self._wake()

    def revoke(self, reason: str) -> None:
        """End this subscriber's stream: nothing more reaches it, not even what is waiting."""
        self.revoked = reason
        self._writer = None
        self._outbox.clear()
        self._outbox_bytes = 0
        self._pending.clear()
        self._pending_bytes = 0
        self._wake()

    @property
    def ended(self) -> bool:
        return self.overflowed or self.revoked is not None

    async def next_batch(self, within: float) -> list[Event | Reset] | None:
        """Everything waiting, or None if nothing arrived within ``within`` seconds."""
        if not self._pending and not self.ended:
            self._waiter = asyncio.get_running_loop().create_future()
            try:
                async with asyncio.timeout(within):
                    await self._waiter
            except TimeoutError:
                return None
            finally:
                self._waiter = None
        batch, self._pending = self._pending, []
        self._pending_bytes = 0
        return batch

    def _wake(self) -> None:
        if self._waiter is not None and not self._waiter.done():
            self._waiter.set_result(None)


class Hub:
    def __init__(self, broker: Broker) -> None:
        self.broker = broker
        self._feed: Feed = broker.open_feed(self)
        self._subscribers: dict[str, set[Subscriber]] = {}
        # A channel's first subscriber subscribes the feed; later ones wait for the same future.
        self._ready: dict[str, asyncio.Future[str | None]] = {}
        self._rechecks: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references
        self._recheck_all: asyncio.Task[None] | None = None
        self._recheck_all_again = False
        # Subscribers whose outbox holds events, written once per turn of the loop (see _flush),
        # and the events offered in this turn (their latency is observed then).
        self._unflushed: list[Subscriber] = []
        self._offered: list[Event] = []
        self._flush_scheduled = False

    @property
    def subscriber_count(self) -> int:
        return len(self._all_subscribers())

    @property
    def channel_count(self) -> int:
        return len(self._subscribers)

    def problem(self) -> str | None:
        """Why this process cannot deliver events right now, or None (see the feeds' problem())."""
        return self._feed.problem()

    async def join(
        self,
        channels: Iterable[str],
        capacity: int,
        max_bytes: int = 0,
        access: StreamAccess | None = None,
    ) -> Subscriber:
        """Register a subscriber; returns once every event published afterwards will reach it."""
        subscriber = Subscriber(frozenset(channels), capacity, max_bytes, access)
        try:
            for channel in subscriber.channels:
                await self._add(channel, subscriber)
        except BaseException:
            await self.leave(subscriber)
            raise
        return subscriber

    async def leave(self, subscriber: Subscriber) -> None:
        for channel in subscriber.channels:
            subscribers = self._subscribers.get(channel)
            if subscribers is None or subscriber not in subscribers:
                continue
            subscribers.discard(subscriber)
            if not subscribers:
                del self._subscribers[channel]
                self._ready.pop(channel, None)
                await self._feed.unsubscribe(channel)

    async def _add(self, channel: str, subscriber: Subscriber) -> None:
        partition = self._partition_of(channel)
        subscribers = self._subscribers.get(channel)
        if subscribers is not None:
            ready = self._ready[channel]
            if ready.done() and not ready.exception():
                # Before it is added: every event it is offered comes after this. (Not where
                # the channel's subscription started, long before: a stream resuming from there
                # would be sent what was published before it came.)
                subscriber.joined(partition, self._feed.watermark(partition))
                subscribers.add(subscriber)
                return
            subscribers.add(subscriber)
            subscriber.joined(partition, await asyncio.shield(ready))
            return
        self._subscribers[channel] = {subscriber}
        ready = self._ready[channel] = asyncio.ensure_future(self._feed.subscribe(channel))
        # Its waiters may all be gone (clients that gave up) when it fails: not an error of its own.
        ready.add_done_callback(_retrieve_exception)
        try:
            subscriber.joined(partition, await asyncio.shield(ready))
        except BaseException:
            if self._ready.get(channel) is ready and ready.done():
                # Failed for every subscriber waiting on it: let the next one try again.
                self._ready.pop(channel, None)
                self._subscribers.pop(channel, None)
            raise

    def _partition_of(self, channel: str) -> int:
        return partition_of(channel, self.broker.partitions)

    # FeedSink: called by the broker's feed, on the event loop.
    def deliver(self, event: Event) -> None:
        subscribers = self._subscribers.get(event.channel)
        if subscribers:
            self._offer(event, subscribers)
            self._offered.append(event)
            metrics.delivered.inc(len(subscribers))  # once per event, not per client

    def lost_events(self, partition: int, reset_point: str) -> None:
        subscribers = self._all_subscribers()
        if self.broker.partitions > 1:
            subscribers = {
                s for s in subscribers if s.position is not None and partition in s.position.reading
            }
        self._offer(Reset(reset_point, partition), subscribers)
        metrics.resets_sent.inc(len(subscribers))

    def watermark(self, partition: int) -> str | None:
        """See Feed.watermark."""
        return self._feed.watermark(partition)

    def _offer(self, item: Event | Reset, subscribers: Collection[Subscriber]) -> None:
        unflushed = self._unflushed
        for subscriber in subscribers:
            if subscriber.offer(item):
                unflushed.append(subscriber)
        if not self._flush_scheduled:
            # After the feed's current read: the other events it holds join the same writes.
            asyncio.get_running_loop().call_soon(self._flush)
            self._flush_scheduled = True

    def _flush(self) -> None:
        self._flush_scheduled = False
        subscribers, self._unflushed = self._unflushed, []
        for subscriber in subscribers:
            subscriber.flush()
        offered, self._offered = self._offered, []
        now = time.time()
        for event in offered:
            if event.sort_key is not None:  # its id's milliseconds: when the broker stored it
                metrics.delivery_latency.observe(max(0.0, now - event.sort_key[0] / 1000))

    def access_changed(self, change: AccessChange) -> None:
        subscribers = [
            subscriber
            for subscriber in self._subscribers.get(user_channel(change.user), ())
            if subscriber.access is not None and not subscriber.ended
        ]
        self._recheck(subscribers, change)

    def access_may_have_changed(self) -> None:
        # Never two at once: while every stream is rechecked, another call makes that run once
        # more when it is done (a flapping connection would otherwise pile up database queries).
        if self._recheck_all is not None and not self._recheck_all.done():
            self._recheck_all_again = True
            return
        self._recheck_all = asyncio.create_task(self._recheck_every_stream())

    async def _recheck_every_stream(self) -> None:
        again = True
        while again:
            self._recheck_all_again = False
            subscribers = [s for s in self._all_subscribers() if not s.ended]
            await recheck(subscribers, None)
            again = self._recheck_all_again

    def _recheck(self, subscribers: list[Subscriber], change: AccessChange | None) -> None:
        if subscribers:
            task = asyncio.create_task(recheck(subscribers, change))
            self._rechecks.add(task)
            task.add_done_callback(self._rechecks.discard)

    def _all_subscribers(self) -> set[Subscriber]:
        # Every stream reads the broadcast channel, but a union keeps this true for any mix.
        return {s for subscribers in list(self._subscribers.values()) for s in subscribers}

    async def aclose(self) -> None:
        """Close the feed: the hub delivers nothing more (it is replaced, see ``get_hub``)."""
        await self._feed.aclose()


def _retrieve_exception(future: "asyncio.Future[str | None]") -> None:
    if not future.cancelled():
        future.exception()


_hubs: "weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, Hub]" = weakref.WeakKeyDictionary()


def running_hubs() -> list[tuple[asyncio.AbstractEventLoop, Hub]]:
    """Every hub of this process with its event loop (one in a server process)."""
    return list(_hubs.items())


def get_hub() -> Hub:
    """The hub of the running event loop (one per server process), for the configured broker.

    When the broker changed (a test overrode its settings), the old hub's feed is closed: its
    connection and subscriptions would otherwise outlive it."""
    loop = asyncio.get_running_loop()
    broker = get_broker()
    hub = _hubs.get(loop)
    if hub is None or hub.broker is not broker:
        if hub is not None:
            _closing.add(closing := loop.create_task(hub.aclose()))
            closing.add_done_callback(_closing.discard)
        hub = _hubs[loop] = Hub(broker)
    return hub


_closing: set["asyncio.Task[None]"] = set()  # held: the loop keeps weak references to tasks
