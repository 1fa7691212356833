"""What one user may do per minute: DRF throttles whose rates are ``EVENTS_*`` settings.

Counters live in Django's cache: Redis when ``REDIS_URL`` is set, so that every process counts
together. The open-streams limit is elsewhere (``broker/slots.py``): a rate cannot say how many
streams are open now.
"""

import logging

import redis
from rest_framework.request import Request
from rest_framework.throttling import UserRateThrottle
from rest_framework.views import APIView

from ..access.shared_cache import shared_cache
from ..broker.redis.unanswered import unanswered
from ..conf import event_settings

logger = logging.getLogger(__name__)


class _EventRateThrottle(UserRateThrottle):
    setting: str  # the EventSettings field holding the rate, e.g. "60/min" (None: no limit)

    def __init__(self) -> None:
        # DRF's cache is one per request: through it, a Redis connection per open stream.
        self.cache = shared_cache()
        super().__init__()

    def get_rate(self) -> str | None:
        rate: str | None = getattr(event_settings(), self.setting)
        return rate

    def allow_request(self, request: Request, view: APIView) -> bool:
        redis_url = event_settings().redis_url
        redis_unanswered = unanswered(redis_url) if redis_url else None
        if redis_unanswered is not None and redis_unanswered.lately():  # see unanswered.py
            logger.debug(
                "Rate limit %s not checked: Redis left a call unanswered lately", self.scope
            )
            return True
        try:
            return super().allow_request(request, view)
        except Exception as error:
            # The cache is down: a rate limit must not take the API down with it. Publishing and
            # streaming need the broker, which the same outage reports with a clear 503.
            if redis_unanswered is not None and isinstance(error, redis.TimeoutError):
                redis_unanswered.timed_out()
            logger.warning("Rate limit %s not checked: %s", self.scope, error)
            return True


class StreamRateThrottle(_EventRateThrottle):
    """New streams per user (``EVENTS_STREAM_RATE``); tickets count as streams too."""

    scope = "events.stream"
    setting = "stream_rate"


class PublishRateThrottle(_EventRateThrottle):
    """Publishes per user (``EVENTS_PUBLISH_RATE``)."""

    scope = "events.publish"
    setting = "publish_rate"
