"""Whether Redis lately left a call of this process unanswered: the checks a stream request makes
on its way in then let it through without asking Redis, for a few seconds.

Those checks (its rate limit, its open-streams slot) run on the one thread that every stream
request's setup shares (``delivery/handler.py``), and let a request through when Redis cannot be
asked. A frozen Redis (stopped, or cut off with its connections left open) answers nothing: each
setup would wait out its socket timeouts in turn, stream after stream, holding up the others. After
a timeout, they skip Redis for ``QUIET_SECONDS``; then one asks again. The stream itself then finds
out, on the event loop, whether the broker works.
"""

import functools
import threading
import time
from collections.abc import Callable

QUIET_SECONDS = 5.0


class Unanswered:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._lock = threading.Lock()
        self._quiet_until = float("-inf")

    def lately(self) -> bool:
        """Whether Redis left a call unanswered less than ``QUIET_SECONDS`` ago."""
        return self._clock() < self._quiet_until

    def timed_out(self) -> None:
        """A call got no answer in time."""
        with self._lock:
            self._quiet_until = self._clock() + QUIET_SECONDS


@functools.cache
def unanswered(redis_url: str) -> Unanswered:
    """The one record of this process for the Redis at ``redis_url`` (the cache's and the
    broker's: both are ``REDIS_URL``)."""
    return Unanswered()
