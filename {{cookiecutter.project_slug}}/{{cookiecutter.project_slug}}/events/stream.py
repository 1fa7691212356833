"""One client's event stream: replay what it missed, then live events, heartbeats in between.

The order of operations is what makes replay exact: the client joins the hub first (after which
no new event can be missed), then reads history after its ``Last-Event-ID``, then sends live events,
skipping those the replay already sent.
"""

import asyncio
import logging
import random
from collections.abc import AsyncIterator

from .conf import EventSettings
from .event import Event, parse_event_id
from .exceptions import BrokerUnavailable
from .hub import Hub, Reset, Subscriber, get_hub
from .wire import HEARTBEAT, encode_comment, encode_retry

logger = logging.getLogger(__name__)

# Streams end a little before their maximum lifetime, at random, so that clients of a replica
# reconnect spread out in time and rebalance across replicas.
_LIFETIME_JITTER = 0.1


async def event_stream(
    channels: frozenset[str],
    last_event_id: str | None,
    settings: EventSettings,
) -> AsyncIterator[bytes]:
    # Looked up here, not by the caller: the view runs in a worker thread, and the hub belongs to
    # the event loop that iterates this generator.
    hub = get_hub()
    retry = encode_retry(settings.retry_milliseconds)
    try:
        subscriber = await hub.join(channels, settings.client_queue_size)
    except BrokerUnavailable as error:
        logger.warning("Stream closed at start: %s", error)
        yield retry + encode_comment("broker unavailable, reconnect later")
        return
    # Nothing is sent before the client is subscribed: Daphne sends the response headers with the
    # first chunk, so a browser's "open" means that no event published afterwards can be missed.
    try:
        replay_end = None
        if last_event_id is not None:
            replay, replay_end = await _replay(hub, channels, last_event_id)
            # One chunk per event: a long replay is never one big buffer, and a client that stops
            # reading during it is cut off like any other (see backpressure.py).
            yield retry + replay[0]
            for wire in replay[1:]:
                yield wire
        else:
            yield retry + encode_comment("connected")
        async for chunk in _live(subscriber, replay_end, settings):
            yield chunk
    finally:
        await hub.leave(subscriber)


async def _replay(
    hub: Hub, channels: frozenset[str], last_event_id: str
) -> tuple[list[bytes], tuple[int, int] | None]:
    """What a resuming client missed (at least one chunk), and the id where replay ended."""
    missed = await hub.broker.events_after(last_event_id)
    if missed is None:
        latest = await hub.broker.latest_event_id()
        # Live events up to the newest in history are part of the state the client reloads.
        return [Reset(latest).wire], parse_event_id(latest) if latest else None
    visible = [event.wire for event in missed if event.channel in channels]
    # Live events up to here were replayed, or were sent before the client reconnected.
    replay_end = missed[-1].sort_key if missed else parse_event_id(last_event_id)
    return visible or [encode_comment("up to date")], replay_end


async def _live(
    subscriber: Subscriber, replay_end: tuple[int, int] | None, settings: EventSettings
) -> AsyncIterator[bytes]:
    loop = asyncio.get_running_loop()
    deadline = None
    if settings.stream_max_seconds > 0:
        lifetime = settings.stream_max_seconds * (1 - _LIFETIME_JITTER * random.random())
        deadline = loop.time() + lifetime
    while not subscriber.overflowed:
        wait = settings.heartbeat_seconds
        if deadline is not None:
            wait = min(wait, deadline - loop.time())
            if wait <= 0:
                return  # the client reconnects with Last-Event-ID, possibly to another replica
        batch = await subscriber.next_batch(wait)
        if batch is None:
            if deadline is None or loop.time() < deadline:
                yield HEARTBEAT
            continue
        if replay_end is not None:
            batch, replay_end = _skip_replayed(batch, replay_end)
        chunk = b"".join(item.wire for item in batch)
        if chunk:
            yield chunk
    logger.info("Disconnected a client that fell %d events behind", settings.client_queue_size)


def _skip_replayed(
    batch: list[Event | Reset], replay_end: tuple[int, int]
) -> tuple[list[Event | Reset], tuple[int, int] | None]:
    """Drop live events the replay already sent; after the first newer one, stop checking."""
    kept: list[Event | Reset] = []
    for index, item in enumerate(batch):
        if isinstance(item, Reset) or item.id is None:
            kept.append(item)
        elif item.sort_key > replay_end:
            return kept + batch[index:], None
    return kept, replay_end
