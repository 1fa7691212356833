"""Graceful shutdown: on SIGTERM, end every open stream with a spread-out reconnect delay.

Without it, Daphne cancels every application at once and exits; its clients all reconnect after
the same ``retry:``, in one burst. Under Daphne (Twisted), ``install()`` registers a hook that
runs when the server starts shutting down, before Daphne cancels its applications:

1. the process stops taking streams: ``/readyz`` answers 503, and a stream that opens now gets
   only the goodbye below (a 200, so that EventSource reconnects instead of giving up);
2. every open stream gets ``: server shutting down`` and a ``retry:`` drawn at random between
   ``EVENTS_RETRY_MILLISECONDS`` and that plus ``EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS``, and
   its connection is closed; clients reconnect with their ``Last-Event-ID``, spread over the
   window, to another replica, and miss nothing;
3. the hook waits until those bytes have left, at most ``EVENTS_SHUTDOWN_GRACE_SECONDS``; then
   Daphne exits as usual.
"""

import asyncio
import logging
import random
import sys

from .backpressure import StreamSend
from .conf import EventSettings, event_settings
from .wire import encode_comment, encode_retry

logger = logging.getLogger(__name__)

_FLUSH_POLL_SECONDS = 0.05

_open_streams: set[StreamSend] = set()
_draining = False


def is_draining() -> bool:
    return _draining


def goodbye(settings: EventSettings) -> bytes:
    window = settings.shutdown_reconnect_window_seconds * 1000
    retry = settings.retry_milliseconds + round(random.uniform(0, window))
    return encode_retry(retry) + encode_comment("server shutting down, reconnect")


def track(stream: StreamSend) -> None:
    _open_streams.add(stream)


def untrack(stream: StreamSend) -> None:
    _open_streams.discard(stream)


def install() -> None:
    """Hook into Daphne's shutdown; does nothing under other servers."""
    if "twisted.internet.reactor" not in sys.modules:  # never install a reactor ourselves
        return
    from twisted.internet import reactor

    # Registered before Daphne registers its own hook (the application is imported first), so
    # this one runs first.
    reactor.addSystemEventTrigger("before", "shutdown", _drain_deferred)


def _drain_deferred():  # type: ignore[no-untyped-def]  # a Twisted Deferred
    from twisted.internet.defer import Deferred

    return Deferred.fromFuture(asyncio.ensure_future(drain(event_settings())))


async def drain(settings: EventSettings) -> None:
    global _draining
    _draining = True
    ended = [stream for stream in list(_open_streams) if stream.finish_now(goodbye(settings))]
    logger.info("Shutting down: ended %d streams", len(ended))
    for _ in range(round(settings.shutdown_grace_seconds / _FLUSH_POLL_SECONDS)):
        if not any(stream.transport and stream.transport.connected for stream in ended):
            break
        await asyncio.sleep(_FLUSH_POLL_SECONDS)
