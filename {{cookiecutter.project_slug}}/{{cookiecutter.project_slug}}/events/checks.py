"""Settings mistakes found at startup (``manage.py check``, ``migrate``, ``runserver``), not by the
first request that needs them."""

from typing import Any

from django.conf import settings as django_settings
from django.core.checks import Error, register
from django.utils.module_loading import import_string

from .broker.rates import Rate
from .broker.redis.urls import check_redis_url
from .conf import event_settings
from .core.positions import MAX_PARTITIONS


@register()
def check_event_settings(**_: Any) -> list[Error]:
    settings = event_settings()
    errors = []
    for name, rate in (
        ("EVENTS_STREAM_RATE", settings.stream_rate),
        ("EVENTS_PUBLISH_RATE", settings.publish_rate),
        ("LOGIN_RATE", django_settings.LOGIN_RATE),
        ("LOGIN_ADDRESS_RATE", django_settings.LOGIN_ADDRESS_RATE),
    ):
        try:
            Rate.parse(rate)
        except ValueError:
            errors.append(
                Error(
                    f"{name}={rate!r} is not a rate.",
                    hint='Write it as "<number>/<s, min, hour or day>", e.g. "60/min", or leave '
                    "it empty for no limit.",
                    id="events.E001",
                )
            )
    try:
        import_string(settings.topic_authorizer)
    except ImportError as error:
        errors.append(
            Error(
                f"EVENTS_TOPIC_AUTHORIZER: {error}",
                hint="Name a function (user, topic) -> bool by its dotted path.",
                id="events.E002",
            )
        )
    if not 1 <= settings.partitions <= MAX_PARTITIONS:
        errors.append(
            Error(
                f"EVENTS_PARTITIONS={settings.partitions} is out of range.",
                hint=f"1 to {MAX_PARTITIONS}: 1 on one Redis, a few per Redis Cluster master.",
                id="events.E005",
            )
        )
    if settings.redis_url:
        try:
            check_redis_url(settings.redis_url)
        except ValueError as error:
            reason = str(error).rstrip(".")
            errors.append(
                Error(
                    f"REDIS_URL is not a Redis URL this project can use: {reason}.",
                    hint="Write it as redis://[:password@]host:port/<db> (rediss:// for TLS), "
                    "or, for Redis Sentinel, as redis+sentinel://[:password@]host:port"
                    "[,host:port...]/<service>[/<db>] (rediss+sentinel:// for TLS), or, for "
                    "Redis Cluster, as redis+cluster://[:password@]host:port[,host:port...] "
                    "(rediss+cluster:// for TLS); see docs/deployment.md.",
                    id="events.E003",
                )
            )
    return errors
