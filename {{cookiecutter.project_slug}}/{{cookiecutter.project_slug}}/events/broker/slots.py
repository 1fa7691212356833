"""How many streams each user has open, over every process: the per-user stream limit.

A stream takes a slot when it is accepted (``acquire``, in the view) and gives it back when it
ends (``hold``, around the stream). A slot is a lease: one that no stream holds (its stream never
started: the client left while the view ran) expires after ``LEASE_SECONDS``. With Redis, the
process holding slots renews them, so that the slots of a process that crashed expire too instead
of counting forever (``redis/slots.py``). In one process (no Redis) they are kept in memory.
"""

import threading
import time
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

from .rates import MemoryRateLimits, OverRate, RateCheck, RateLimits

# A crashed process's streams stop counting against their users after this long.
LEASE_SECONDS = 30


@dataclass(frozen=True, slots=True)
class Slot:
    user: str
    name: str  # unique among the user's slots


class StreamSlots(ABC):
    @abstractmethod
    def acquire(self, user: str, limit: int, rate: RateCheck | None = None) -> Slot | None:
        """A slot for one more stream of ``user``, or None if ``limit`` are taken. With ``rate``,
        its hit is counted in the same step, first: over the rate, raises OverRate and takes
        nothing. Fails open (a slot that counts nowhere, a hit not counted) when the counts
        cannot be read: the stream itself then finds out whether the broker works."""

    @abstractmethod
    def hold(self, slot: Slot) -> AbstractAsyncContextManager[None]:
        """``async with slots.hold(slot):`` around the stream: the slot is kept while it runs and
        given back when it ends. A slot never held (its stream never started) expires."""


class MemoryStreamSlots(StreamSlots):
    """Slots in this process's memory. Taken, a slot is a lease of ``LEASE_SECONDS``, as in
    Redis; held by its stream, it lasts as long as the stream (the process holding it is this
    one, alive)."""

    def __init__(
        self, rate_limits: RateLimits | None = None, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self._lock = threading.Lock()  # acquired in request threads, released on the event loop
        self._rate_limits = rate_limits or MemoryRateLimits()
        self._clock = clock
        # Per user, each slot's expiry, or None while its stream holds it.
        self._slots: dict[str, dict[str, float | None]] = {}
        self._serial = 0

    def acquire(self, user: str, limit: int, rate: RateCheck | None = None) -> Slot | None:
        if rate is not None and (wait := self._rate_limits.hit(rate.key, rate.rate)):
            raise OverRate(wait)
        with self._lock:
            now = self._clock()
            slots = self._slots.setdefault(user, {})
            for name, expiry in list(slots.items()):
                if expiry is not None and expiry <= now:  # taken by a stream that never started
                    del slots[name]
            if len(slots) >= limit:
                return None
            self._serial += 1
            slot = Slot(user, str(self._serial))
            slots[slot.name] = now + LEASE_SECONDS
            return slot

    @asynccontextmanager
    async def hold(self, slot: Slot) -> AsyncIterator[None]:
        with self._lock:
            self._slots.setdefault(slot.user, {})[slot.name] = None
        try:
            yield
        finally:
            with self._lock:
                slots = self._slots.get(slot.user, {})
                slots.pop(slot.name, None)
                if not slots:
                    self._slots.pop(slot.user, None)
