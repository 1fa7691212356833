"""Messages that cannot be used (on Redis, in history) are skipped, counted and logged, never fatal.

Anyone who can write to Redis can send anything; one warning per message would let a flood of bad
messages flood the log too, so warnings are limited to one per ``WARNING_INTERVAL_SECONDS``, each
saying how many were skipped since the last one.
"""

import logging
import threading
import time

from . import metrics

logger = logging.getLogger(__name__)

WARNING_INTERVAL_SECONDS = 10.0

_lock = threading.Lock()
_skipped_total = 0
_skipped_unlogged = 0
_last_warning = float("-inf")


def report_malformed(source: str, where: object, reason: object) -> None:
    """Count one skipped message; log it unless a warning was logged less than the interval ago."""
    global _skipped_total, _skipped_unlogged, _last_warning
    metrics.malformed_skipped.inc()
    with _lock:
        _skipped_total += 1
        _skipped_unlogged += 1
        now = time.monotonic()
        if now - _last_warning < WARNING_INTERVAL_SECONDS:
            return
        count, _skipped_unlogged, _last_warning = _skipped_unlogged, 0, now
    logger.warning(
        "Skipped malformed %s %s: %s (%d skipped since the last warning)",
        source,
        str(where)[:100],
        str(reason)[:300],
        count,
    )


def malformed_total() -> int:
    """Messages skipped by this process since it started."""
    return _skipped_total
