"""Rate limits in Redis (``../rates.py``): per key, a sorted set of the hits in the window, scored
by Redis's own clock in milliseconds (``TIME``: the hosts' clocks need not agree). One script
drops the hits that left the window, checks the count and adds the new hit: no two requests can
both take the last place.
"""

import itertools
import logging
import uuid

import redis

from ..rates import Rate, RateLimits
from .connection import REDIS_ERRORS, RedisConnection
from .unanswered import unanswered

logger = logging.getLogger(__name__)

# A Lua function, also part of the stream admission script (slots.py): counts a hit named ``name``
# of ``key`` and returns 0 if fewer than ``limit`` were counted in the last ``window`` milliseconds;
# otherwise counts nothing and returns the milliseconds until the oldest hit leaves the window.
HIT_FUNCTION = """
local function hit(key, limit, window, name)
  local time = redis.call('TIME')
  local now = tonumber(time[1]) * 1000 + math.floor(tonumber(time[2]) / 1000)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', now - window)
  if redis.call('ZCARD', key) >= limit then
    local oldest = redis.call('ZRANGE', key, 0, 0, 'WITHSCORES')
    if oldest[2] == nil then return window end
    return math.max(tonumber(oldest[2]) + window - now, 1)
  end
  redis.call('ZADD', key, now, name)
  redis.call('PEXPIRE', key, window)
  return 0
end
"""
_HIT = HIT_FUNCTION + "return hit(KEYS[1], tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3])"


def rate_key(connection: RedisConnection, key: str) -> str:
    """Where the hits of ``key`` are kept."""
    return connection.key("rate", key)


class RedisRateLimits(RateLimits):
    def __init__(self, connection: RedisConnection) -> None:
        self._connection = connection
        self._hit = connection.script(_HIT)
        self._unanswered = unanswered(connection.url)
        # A hit's name, unique over every process: two hits in the same millisecond both count.
        self._process = uuid.uuid4().hex[:12]
        self._serial = itertools.count()  # thread-safe: next() on it is one C call

    def hit(self, key: str, rate: Rate) -> float:
        if self._unanswered.lately():  # see unanswered.py
            logger.debug("Rate limit %s not checked: Redis left a call unanswered lately", key)
            return 0.0
        try:
            wait_milliseconds = self._hit(
                keys=[rate_key(self._connection, key)],
                args=[
                    rate.limit,
                    rate.window_seconds * 1000,
                    f"{self._process}:{next(self._serial)}",
                ],
            )
        except REDIS_ERRORS as error:
            if isinstance(error, redis.TimeoutError):
                self._unanswered.timed_out()
            logger.warning("Rate limit %s not checked: %s", key, error)
            return 0.0
        return int(wait_milliseconds) / 1000
