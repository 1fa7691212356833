"""Rate limits counted exactly, over every process: how many hits a key had in the last window,
checked and counted in one step.

DRF's throttles read a key's history from the cache and write it back in two steps, so requests
that arrive together each read the same history and each pass: 105 tickets were issued in a
burst against a limit of 60 per minute. Here the check and the count are one step: a Lua script in
Redis (``redis/rates.py``), or a lock in this process (no Redis). A limit of N per window admits
exactly N hits in any window, however many arrive at once.
"""

import threading
import time
from abc import ABC, abstractmethod
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

# DRF's units: the first letter of the period counts ("60/min", "1000/hour", "5/s").
_PERIOD_SECONDS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


@dataclass(frozen=True, slots=True)
class Rate:
    limit: int  # hits admitted per window
    window_seconds: int

    @classmethod
    def parse(cls, text: str | None) -> "Rate | None":
        """``"<number>/<s, min, hour or day>"`` as DRF writes rates; None or "" for no limit.
        Raises ValueError for anything else."""
        if not text:
            return None
        number, _, period = text.partition("/")
        if not number.isascii() or not number.isdigit() or period[:1] not in _PERIOD_SECONDS:
            raise ValueError(f"{text!r} is not a rate")
        return cls(int(number), _PERIOD_SECONDS[period[0]])


@dataclass(frozen=True, slots=True)
class RateCheck:
    """A hit of ``key`` to count at ``rate``, in the same step as taking a stream slot
    (``slots.py``): a stream's admission is one call to Redis."""

    key: str
    rate: Rate


class OverRate(Exception):
    """The rate of a ``RateCheck`` refused the hit: nothing was taken."""

    def __init__(self, wait_seconds: float) -> None:
        super().__init__(f"over the rate; retry in {wait_seconds:.0f} s")
        self.wait_seconds = wait_seconds


class RateLimits(ABC):
    @abstractmethod
    def hit(self, key: str, rate: Rate) -> float:
        """Counts a hit of ``key`` and returns 0 if fewer than ``rate.limit`` were counted in the
        last window; otherwise counts nothing and returns the seconds until the oldest one leaves
        the window. Fails open (0, counting nothing) when the count cannot be read: a rate limit
        must not take the API down with it."""


class MemoryRateLimits(RateLimits):
    """The hits of this process, in memory: exact within the process."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()  # views run in threads
        self._hits: dict[str, deque[float]] = {}

    def hit(self, key: str, rate: Rate) -> float:
        with self._lock:
            now = self._clock()
            hits = self._hits.setdefault(key, deque())
            while hits and hits[0] <= now - rate.window_seconds:
                hits.popleft()
            if len(hits) >= rate.limit:
                return hits[0] + rate.window_seconds - now if hits else rate.window_seconds
            hits.append(now)
            self._forget_idle(now, rate.window_seconds)
            return 0.0

    def _forget_idle(self, now: float, window_seconds: int) -> None:
        # Keys whose newest hit left the window go, so that memory follows the active users.
        if len(self._hits) > 1024:
            for key in [k for k, hits in self._hits.items() if hits[-1] <= now - window_seconds]:
                del self._hits[key]
