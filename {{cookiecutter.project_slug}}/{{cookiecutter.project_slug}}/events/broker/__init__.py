"""The configured broker: Redis when ``REDIS_URL`` is set, otherwise one inside this process."""

from functools import lru_cache

from ..conf import event_settings
from .base import Broker
from .memory import InMemoryBroker
from .redis import RedisBroker

__all__ = ["Broker", "get_broker"]


def get_broker() -> Broker:
    settings = event_settings()
    return _broker(
        settings.redis_url,
        settings.redis_prefix,
        settings.history_length,
        settings.max_payload_bytes,
        settings.redis_health_check_seconds,
    )


@lru_cache(maxsize=4)
def _broker(
    redis_url: str,
    prefix: str,
    history_length: int,
    max_payload_bytes: int,
    health_check_seconds: float,
) -> Broker:
    # Cached per configuration: one broker (and one set of connections) per process.
    if redis_url:
        return RedisBroker(
            redis_url,
            prefix=prefix,
            history_length=history_length,
            max_payload_bytes=max_payload_bytes,
            health_check_seconds=health_check_seconds,
        )
    return InMemoryBroker(history_length)
