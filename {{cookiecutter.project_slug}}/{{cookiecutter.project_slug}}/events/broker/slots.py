"""How many streams each user has open, over every process: the per-user stream limit.

A stream takes a slot when it is accepted (``acquire``, in the view) and gives it back when it
ends (``hold``, around the stream). With Redis, slots are leases that the process holding them
renews: the slots of a process that crashed expire within ``LEASE_SECONDS`` instead of counting
forever. In one process (no Redis) a slot is a count in memory.
"""

import threading
from abc import ABC, abstractmethod
from collections.abc import AsyncIterator
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from dataclasses import dataclass

# A crashed process's streams stop counting against their users after this long.
LEASE_SECONDS = 30


@dataclass(frozen=True, slots=True)
class Slot:
    user: str
    name: str  # unique among the user's slots


class StreamSlots(ABC):
    @abstractmethod
    def acquire(self, user: str, limit: int) -> Slot | None:
        """A slot for one more stream of ``user``, or None if ``limit`` are taken. Fails open (a
        slot that counts nowhere) when the count cannot be read: the stream itself then finds
        out whether the broker works."""

    @abstractmethod
    def hold(self, slot: Slot) -> AbstractAsyncContextManager[None]:
        """``async with slots.hold(slot):`` around the stream: the slot is kept while it runs and
        given back when it ends. A slot never held (its stream never started) expires."""


class MemoryStreamSlots(StreamSlots):
    def __init__(self) -> None:
        self._lock = threading.Lock()  # acquired in request threads, released on the event loop
        self._open: dict[str, int] = {}
        self._serial = 0

    def acquire(self, user: str, limit: int) -> Slot | None:
        with self._lock:
            if self._open.get(user, 0) >= limit:
                return None
            self._open[user] = self._open.get(user, 0) + 1
            self._serial += 1
            return Slot(user, str(self._serial))

    @asynccontextmanager
    async def hold(self, slot: Slot) -> AsyncIterator[None]:
        try:
            yield
        finally:
            with self._lock:
                left = self._open.get(slot.user, 1) - 1
                if left > 0:
                    self._open[slot.user] = left
                else:
                    self._open.pop(slot.user, None)
