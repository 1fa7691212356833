"""Graceful shutdown: on SIGTERM, end every open stream with a spread-out reconnect delay.

Left to itself, Daphne stops at once on SIGTERM: it cancels every request, streams and others
alike, and exits. Stream clients would all reconnect after the same ``retry:``, in one burst, and
a publish in flight would get no answer (a 502 from nginx) although its event may be out. Under
Daphne (Twisted), ``install()`` takes over SIGTERM once the server has started, and then:

1. the process stops taking streams: ``/readyz`` answers 503, and a stream that opens now gets
   only the goodbye below (a 200, so that EventSource reconnects instead of giving up);
2. every open stream gets ``: server shutting down`` and a ``retry:`` drawn at random between
   ``EVENTS_RETRY_MILLISECONDS`` and that plus ``EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS``, and
   its connection is closed; clients reconnect with their ``Last-Event-ID``, spread over the
   window, to another replica, and miss nothing;
3. it waits until those bytes have left and the other requests in flight have been answered, at
   most ``EVENTS_SHUTDOWN_GRACE_SECONDS``; then it stops the server as Daphne would have.

Any other way the server stops (SIGINT, say) still ends the streams as in 2, from a hook that runs
before Daphne cancels its requests.

One ``GracefulShutdown`` per process (``process_shutdown()``) holds that state: the streams
register themselves with it (``stream.py``), the router counts the other requests
(``handler.py``), and ``/readyz`` asks whether it is draining.
"""

import asyncio
import functools
import logging
import random
import signal
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, Protocol

from ..conf import EventSettings, event_settings
from ..core.wire import encode_comment, encode_retry

logger = logging.getLogger(__name__)

_POLL_SECONDS = 0.05


class Drainable(Protocol):
    """An open stream as the shutdown sees it (``stream.EventStream``)."""

    def end_for_shutdown(self, goodbye: bytes) -> bool:
        """Send ``goodbye`` as the stream's last bytes and close it; returns whether it did (a
        stream whose response has not started yet sees ``draining`` instead)."""

    @property
    def flushing(self) -> bool:
        """Whether its last bytes are still leaving."""


class GracefulShutdown:
    def __init__(self) -> None:
        self.draining = False
        self._streams: set[Drainable] = set()
        self._requests_in_flight = 0  # other than streams

    def goodbye(self, settings: EventSettings) -> bytes:
        window = settings.shutdown_reconnect_window_seconds * 1000
        retry = settings.retry_milliseconds + round(random.uniform(0, window))
        return encode_retry(retry) + encode_comment("server shutting down, reconnect")

    def track(self, stream: Drainable) -> None:
        self._streams.add(stream)

    def untrack(self, stream: Drainable) -> None:
        self._streams.discard(stream)

    @contextmanager
    def answering(self) -> Iterator[None]:
        """Around a request other than a stream: a graceful shutdown answers it before stopping."""
        self._requests_in_flight += 1
        try:
            yield
        finally:
            self._requests_in_flight -= 1

    def install(self) -> None:
        """Hook into Daphne's start and shutdown; does nothing under other servers."""
        if "twisted.internet.reactor" not in sys.modules:  # never install a reactor ourselves
            return
        reactor = _twisted_reactor()
        # After startup, Twisted has installed its own SIGTERM handler (reactor.stop): replace it.
        reactor.addSystemEventTrigger("after", "startup", self._take_over_sigterm)
        # Registered before Daphne registers its own shutdown hook (the application is imported
        # first), so this one runs first.
        reactor.addSystemEventTrigger("before", "shutdown", self._drain_deferred)

    def _take_over_sigterm(self) -> None:
        reactor = _twisted_reactor()

        def on_sigterm(signum: int, frame: object) -> None:
            if not self.draining:  # a second SIGTERM changes nothing: the first one's is bounded
                reactor.callFromThread(lambda: asyncio.ensure_future(self._stop_gracefully()))

        signal.signal(signal.SIGTERM, on_sigterm)

    async def _stop_gracefully(self) -> None:
        settings = event_settings()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + settings.shutdown_grace_seconds
        await self.drain(settings)
        await _wait(lambda: self._requests_in_flight > 0, deadline - loop.time())
        _twisted_reactor().stop()

    def _drain_deferred(self):  # type: ignore[no-untyped-def]  # a Twisted Deferred
        from twisted.internet.defer import Deferred

        return Deferred.fromFuture(asyncio.ensure_future(self.drain(event_settings())))

    async def drain(self, settings: EventSettings) -> None:
        """End every open stream with the goodbye; wait (within the grace) until its bytes left."""
        self.draining = True
        ended = [s for s in list(self._streams) if s.end_for_shutdown(self.goodbye(settings))]
        if ended:
            logger.info("Shutting down: ended %d streams", len(ended))
        await _wait(
            lambda: any(stream.flushing for stream in ended), settings.shutdown_grace_seconds
        )


@functools.cache
def process_shutdown() -> GracefulShutdown:
    """This process's shutdown (one per process, as its server)."""
    return GracefulShutdown()


async def _wait(condition: Callable[[], bool], at_most: float) -> None:
    for _ in range(round(at_most / _POLL_SECONDS)):
        if not condition():
            return
        await asyncio.sleep(_POLL_SECONDS)


def _twisted_reactor() -> Any:
    # The installed reactor, typed through zope interfaces that mypy does not read: Any.
    from twisted.internet import reactor

    return reactor
