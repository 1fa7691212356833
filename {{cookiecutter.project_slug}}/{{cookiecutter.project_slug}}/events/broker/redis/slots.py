"""Stream slots in Redis: per user, a sorted set of this user's open streams scored by expiry.

Every process renews the leases of the streams it holds every ``LEASE_SECONDS / 3``, in one
pipeline; Redis's own clock scores them (``TIME``), so the hosts' clocks need not agree.
"""

import asyncio
import logging
import uuid
import weakref
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import redis

from ..slots import LEASE_SECONDS, Slot, StreamSlots
from .connection import RedisConnection

logger = logging.getLogger(__name__)

# Drops expired slots, then takes one if fewer than the limit are left.
_ACQUIRE = """
local now = tonumber(redis.call('TIME')[1])
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', now)
if redis.call('ZCARD', KEYS[1]) >= tonumber(ARGV[1]) then return 0 end
redis.call('ZADD', KEYS[1], now + tonumber(ARGV[2]), ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[2])
return 1
"""
# Renews the slots still there (XX: a slot given back meanwhile stays given back).
_RENEW = """
local expiry = tonumber(redis.call('TIME')[1]) + tonumber(ARGV[1])
for i = 2, #ARGV do redis.call('ZADD', KEYS[1], 'XX', expiry, ARGV[i]) end
redis.call('EXPIRE', KEYS[1], ARGV[1])
"""


class RedisStreamSlots(StreamSlots):
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._process = uuid.uuid4().hex[:12]
        self._serial = 0
        self._acquire = connection.script(_ACQUIRE)
        # Per event loop (one in a server): the slots held there, and the task renewing them.
        self._held: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, dict[Slot, None]]
        self._held = weakref.WeakKeyDictionary()
        self._renewers: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Task[None]]
        self._renewers = weakref.WeakKeyDictionary()

    def _key(self, user: str) -> str:
        return self._connection.key("streams", "user", user)

    def acquire(self, user: str, limit: int) -> Slot | None:
        self._serial += 1  # under the GIL; uniqueness, not order, is what matters
        slot = Slot(user, f"{self._process}:{self._serial}")
        try:
            taken = self._acquire(keys=[self._key(user)], args=[limit, LEASE_SECONDS, slot.name])
        except redis.RedisError as error:
            logger.warning("Stream limit not checked: %s", error)
            return slot
        return slot if taken else None

    @asynccontextmanager
    async def hold(self, slot: Slot) -> AsyncIterator[None]:
        loop = asyncio.get_running_loop()
        held = self._held.setdefault(loop, {})
        held[slot] = None
        renewer = self._renewers.get(loop)
        if renewer is None or renewer.done():
            self._renewers[loop] = loop.create_task(self._renew_forever(held))
        try:
            yield
        finally:
            held.pop(slot, None)
            renewer = self._renewers.get(loop)
            if not held and renewer is not None:
                renewer.cancel()  # nothing left to renew: no task outlives the streams
            try:
                await self._connection.async_client().zrem(self._key(slot.user), slot.name)
            except redis.RedisError as error:  # it expires by itself
                logger.debug("Could not give back a stream slot: %s", error)

    async def _renew_forever(self, held: dict[Slot, None]) -> None:
        while held:
            await asyncio.sleep(LEASE_SECONDS / 3)
            by_user: dict[str, list[str]] = {}
            for slot in list(held):
                by_user.setdefault(slot.user, []).append(slot.name)
            try:
                async with self._connection.async_client().pipeline(transaction=False) as pipe:
                    for user, names in by_user.items():
                        pipe.eval(_RENEW, 1, self._key(user), LEASE_SECONDS, *names)
                    await pipe.execute()
            except (redis.RedisError, OSError) as error:
                logger.warning("Could not renew stream slots: %s", error)
