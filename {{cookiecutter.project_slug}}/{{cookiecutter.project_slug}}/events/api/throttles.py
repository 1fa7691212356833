"""What one user may do per minute: DRF throttles whose rates are ``EVENTS_*`` settings, counted
exactly by the broker over every process (``broker/rates.py``).

DRF's own throttles count in the cache in two steps (read the history, write it back), which lets
a burst of concurrent requests through; these keep DRF's rates ("60/min") and its cache keys (the
user, or the client's address when anonymous) and hand the counting to the broker. The open-streams
limit is elsewhere (``broker/slots.py``): a rate cannot say how many streams are open now.
"""

from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from ..broker import get_broker
from ..broker.rates import Rate, RateCheck
from ..conf import event_settings


class _EventRateThrottle(UserRateThrottle):
    setting: str  # the EventSettings field holding the rate, e.g. "60/min" (None: no limit)

    def __init__(self) -> None:
        super().__init__()
        self._rate = Rate.parse(self.rate)
        self._wait = 0.0

    def parse_rate(self, rate: str | None) -> tuple[int | None, int | None]:
        parsed = Rate.parse(rate)
        return (None, None) if parsed is None else (parsed.limit, parsed.window_seconds)

    def get_rate(self) -> str | None:
        rate: str | None = getattr(event_settings(), self.setting)
        return rate

    def rate_check(self, request: Request, view: APIView) -> RateCheck | None:
        """The hit this request counts (None: not limited), for DRF's check below or for a
        stream's admission, where it is counted with the stream's slot (``views.py``)."""
        key = None if self._rate is None else self.get_cache_key(request, view)
        return None if self._rate is None or key is None else RateCheck(key, self._rate)

    def allow_request(self, request: Request, view: APIView) -> bool:
        check = self.rate_check(request, view)
        if check is None:
            return True
        self._wait = get_broker().rate_limits.hit(check.key, check.rate)
        return self._wait == 0

    def wait(self) -> float | None:
        return self._wait


class StreamRateThrottle(_EventRateThrottle):
    """New streams per user (``EVENTS_STREAM_RATE``); tickets count as streams too. The stream
    view counts its hit itself, with its slot (``rate_check``)."""

    scope = "events.stream"
    setting = "stream_rate"


class PublishRateThrottle(_EventRateThrottle):
    """Publishes per user (``EVENTS_PUBLISH_RATE``)."""

    scope = "events.publish"
    setting = "publish_rate"
