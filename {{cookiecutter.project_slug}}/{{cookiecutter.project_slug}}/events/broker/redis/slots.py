"""Stream slots in Redis: per user, a sorted set of this user's open streams scored by expiry.

Every process renews the leases of the streams it holds every ``LEASE_SECONDS / 3``, in one
pipeline; Redis's own clock scores them (``TIME``), so the hosts' clocks need not agree. A renewal
writes every slot the process holds, whether Redis still has it or not: after a Redis that lost its
data (a restart without persistence, a flush), the open streams count again within one renewal.
A slot is given back only between two renewals (one lock per event loop), so that no renewal in
flight writes back a slot just given back.
"""

import asyncio
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis

from ..rates import OverRate, RateCheck
from ..slots import LEASE_SECONDS, Slot, StreamSlots
from .connection import REDIS_ERRORS, RedisConnection
from .rates import HIT_FUNCTION, RedisRateLimits, rate_key
from .unanswered import unanswered

logger = logging.getLogger(__name__)

# Counts the stream's rate (when KEYS[2], its key, is given; ``rates.py``), then drops expired
# slots and takes one if fewer than the limit are left: a stream's admission in one call. Returns 1
# (taken), 0 (the limit is reached) or, over the rate, minus the milliseconds to wait.
_ACQUIRE = (
    HIT_FUNCTION
    + """
if #KEYS > 1 then
  local wait = hit(KEYS[2], tonumber(ARGV[4]), tonumber(ARGV[5]), ARGV[3])
  if wait > 0 then return -wait end
end
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
)
# Renews (or writes again, if Redis lost them) the slots this process holds.
_RENEW = """
local expiry = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], expiry, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""


class _Held:
    """The slots held on one event loop, the task renewing them, and the lock that keeps a
    renewal and a release apart."""

    __slots__ = ("lock", "renewer", "slots")

    def __init__(self) -> None:
        self.slots: dict[Slot, None] = {}
        self.lock = asyncio.Lock()
        self.renewer: asyncio.Task[None] | None = None


class RedisStreamSlots(StreamSlots):
    def __init__(self, connection: RedisConnection, renew_every: float = LEASE_SECONDS / 3) -> None:
        self._connection = connection
        self._renew_every = renew_every
        self._process = uuid.uuid4().hex[:12]
        self._serial = 0
        self._acquire = connection.script(_ACQUIRE)
        self._rate_limits = RedisRateLimits(connection)
        self._unanswered = unanswered(connection.url)
        # Per event loop (one in a server).
        self._held: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, _Held]
        self._held = weakref.WeakKeyDictionary()

    def _key(self, user: str) -> str:
        return self._connection.key("streams", "user", user)

    def acquire(self, user: str, limit: int, rate: RateCheck | None = None) -> Slot | None:
        self._serial += 1  # under the GIL; uniqueness, not order, is what matters
        slot = Slot(user, f"{self._process}:{self._serial}")
        if self._unanswered.lately():  # see unanswered.py
            logger.debug("Stream limits not checked: Redis left a call unanswered lately")
            return slot
        keys = [self._key(user)]
        args: list[str | int] = [limit, LEASE_SECONDS, slot.name]
        if rate is not None and self._connection.is_cluster:
            # A cluster runs a script on the keys of one slot: there the user's rate and slots
            # are two calls, in the script's order.
            if wait := self._rate_limits.hit(rate.key, rate.rate):
                raise OverRate(wait)
        elif rate is not None:  # the slot's name, unique, names the hit too
            keys.append(rate_key(self._connection, rate.key))
            args += [rate.rate.limit, rate.rate.window_seconds * 1000]
        try:
            taken = self._acquire(keys=keys, args=args)
        except REDIS_ERRORS as error:
            if isinstance(error, redis.TimeoutError):
                self._unanswered.timed_out()
            logger.warning("Stream limits not checked: %s", error)
            return slot
        if taken < 0:
            raise OverRate(-taken / 1000)
        return slot if taken else None

    @asynccontextmanager
    async def hold(self, slot: Slot) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        held = self._held.get(loop)
        if held is None:
            held = self._held[loop] = _Held()
        held.slots[slot] = None
        if held.renewer is None or held.renewer.done():
            held.renewer = loop.create_task(self._renew_forever(held))
        try:
            yield
        finally:
            async with held.lock:
                del held.slots[slot]
                if not held.slots and held.renewer is not None:
                    held.renewer.cancel()  # nothing left to renew: no task outlives the streams
                    held.renewer = None  # the next slot held starts another
                try:
                    await self._connection.async_client().zrem(self._key(slot.user), slot.name)
                except REDIS_ERRORS as error:  # it expires by itself
                    logger.debug("Could not give back a stream slot: %s", error)

    async def _renew_forever(self, held: _Held) -> None:
        while held.slots:
            await asyncio.sleep(self._renew_every)
            async with held.lock:
                by_user: dict[str, list[str]] = {}
                for slot in held.slots:
                    by_user.setdefault(slot.user, []).append(slot.name)
                try:
                    client = self._connection.async_client()
                    async with client.pipeline(transaction=False) as pipe:
                        for user, names in by_user.items():
                            pipe.eval(_RENEW, 1, self._key(user), LEASE_SECONDS, *names)
                        await pipe.execute()
                except (*REDIS_ERRORS, OSError) as error:
                    logger.warning("Could not renew stream slots: %s", error)
