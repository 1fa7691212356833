"""The broker: stores events with ids in a bounded history and carries them to every process.

``get_broker()`` is the configured one: Redis when ``REDIS_URL`` is set (``redis/``), otherwise
one inside this process (``memory.py``). ``base.py`` is the contract both keep; ``slots.py`` the
open-streams limit and ``rates.py`` the rate limits both count.

Imports ``core``, ``telemetry``, ``conf`` and ``exceptions``; nothing of the layers above.
"""

from functools import lru_cache

from django.conf import settings as django_settings

from ..conf import event_settings
from .base import Broker
from .memory import InMemoryBroker
from .redis.broker import RedisBroker, Replication
from .redis.connection import RedisConnection
from .redis.signing import signing_keys

__all__ = ["Broker", "get_broker"]


def get_broker() -> Broker:
    settings = event_settings()
    return _broker(
        settings.redis_url,
        settings.redis_prefix,
        settings.history_length,
        settings.partitions,
        settings.max_payload_bytes,
        settings.redis_health_check_seconds,
        signing_keys(django_settings.SECRET_KEY, django_settings.SECRET_KEY_FALLBACKS),
        Replication(settings.publish_replicas, settings.publish_replica_timeout_milliseconds),
    )


@lru_cache(maxsize=4)
def _broker(
    redis_url: str,
    prefix: str,
    history_length: int,
    partitions: int,
    max_payload_bytes: int,
    health_check_seconds: float,
    id_signing_keys: tuple[str, ...],
    replication: Replication,
) -> Broker:
    # Cached per configuration: one broker (and one set of connections) per process.
    if redis_url:
        connection = RedisConnection(
            redis_url,
            prefix=prefix,
            history_length=history_length,
            partitions=partitions,
            max_payload_bytes=max_payload_bytes,
            health_check_seconds=health_check_seconds,
            signing_keys=id_signing_keys,
        )
        return RedisBroker(connection, replication)
    return InMemoryBroker(history_length)
