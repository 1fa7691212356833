"""What one stream tells the operators: a log line when it opens, one when it ends, and metrics.

Never a line per event: a process delivers thousands of events per second. The end line says why
the stream ended (an ``EndReason``), how long it lasted and how many events it was sent. Reasons
other than ``CLIENT`` (the client went away) are the server's doing and count in
``events_clients_evicted_total``.
"""

import logging
import secrets
import time

from . import metrics
from .metrics import EndReason

logger = logging.getLogger(__name__)


class StreamRecord:
    __slots__ = ("_opened_at", "live", "replayed", "resumed", "stream_id", "user_id")

    def __init__(self, user_id: str | None, resumed: bool) -> None:
        self.stream_id = secrets.token_hex(8)
        self.user_id = user_id
        self.resumed = resumed  # it came with a Last-Event-ID
        self.replayed = 0
        self.live = 0
        self._opened_at: float | None = None

    def opened(self) -> None:
        """The client is subscribed: from now on it misses nothing."""
        self._opened_at = time.monotonic()
        metrics.streams_opened.inc()
        logger.info(
            "Stream %s opened for user %s",
            self.stream_id,
            self.user_id,
            extra={**self._fields(), "resumed": self.resumed},
        )

    def ended(self, reason: EndReason) -> None:
        if reason is not EndReason.CLIENT:
            metrics.clients_evicted.labels(reason.value).inc()
        if self._opened_at is None:
            return  # refused at the start: its own warning says why
        duration = time.monotonic() - self._opened_at
        metrics.stream_duration.observe(duration)
        logger.info(
            "Stream %s ended (%s) after %.1fs, %d events sent",
            self.stream_id,
            reason.value,
            duration,
            self.replayed + self.live,
            extra={
                **self._fields(),
                "reason": reason.value,
                "duration_seconds": round(duration, 3),
                "events_sent": self.replayed + self.live,
                "events_replayed": self.replayed,
            },
        )

    def _fields(self) -> dict[str, object]:
        return {"stream_id": self.stream_id, "user_id": self.user_id}
