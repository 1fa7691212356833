"""The event stream's settings, read from Django settings (which read them from the environment).

Below every layer: any module may read them; this one imports nothing of the app."""

from dataclasses import dataclass
from functools import cache

from django.conf import settings
from django.core.signals import setting_changed
from django.dispatch import receiver


@dataclass(frozen=True, slots=True)
class EventSettings:
    redis_url: str
    redis_prefix: str
    history_length: int
    partitions: int
    heartbeat_seconds: float
    retry_milliseconds: int
    max_payload_bytes: int
    max_topics_per_stream: int
    client_queue_size: int
    client_max_backlog_bytes: int
    client_send_timeout_seconds: float
    redis_health_check_seconds: float
    shutdown_reconnect_window_seconds: float
    shutdown_grace_seconds: float
    stream_max_seconds: float
    cors_allowed_origins: tuple[str, ...]
    public_topics: tuple[str, ...]
    topic_authorizer: str
    max_streams_per_user: int
    stream_rate: str | None
    publish_rate: str | None
    ticket_seconds: int
    idempotency_seconds: int
    publish_replicas: int
    publish_replica_timeout_milliseconds: int


@cache
def event_settings() -> EventSettings:
    """Read once: a stream's request asks several times, and reading them all costs about as
    much as a Redis round trip. Read again when a test overrides a setting.

    Their defaults, and the environment variables that set them, are in ``config/settings.py``
    only: a setting missing there is an error, not a second default."""
    return EventSettings(
        redis_url=settings.REDIS_URL,
        redis_prefix=settings.EVENTS_REDIS_PREFIX,
        history_length=settings.EVENTS_HISTORY_LENGTH,
        partitions=settings.EVENTS_PARTITIONS,
        heartbeat_seconds=settings.EVENTS_HEARTBEAT_SECONDS,
        retry_milliseconds=settings.EVENTS_RETRY_MILLISECONDS,
        max_payload_bytes=settings.EVENTS_MAX_PAYLOAD_BYTES,
        max_topics_per_stream=settings.EVENTS_MAX_TOPICS_PER_STREAM,
        client_queue_size=settings.EVENTS_CLIENT_QUEUE_SIZE,
        client_max_backlog_bytes=settings.EVENTS_CLIENT_MAX_BACKLOG_BYTES,
        client_send_timeout_seconds=settings.EVENTS_CLIENT_SEND_TIMEOUT_SECONDS,
        redis_health_check_seconds=settings.EVENTS_REDIS_HEALTH_CHECK_SECONDS,
        shutdown_reconnect_window_seconds=settings.EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS,
        shutdown_grace_seconds=settings.EVENTS_SHUTDOWN_GRACE_SECONDS,
        stream_max_seconds=settings.EVENTS_STREAM_MAX_SECONDS,
        cors_allowed_origins=tuple(settings.EVENTS_CORS_ALLOWED_ORIGINS),
        public_topics=tuple(settings.EVENTS_PUBLIC_TOPICS),
        topic_authorizer=settings.EVENTS_TOPIC_AUTHORIZER,
        max_streams_per_user=settings.EVENTS_MAX_STREAMS_PER_USER,
        stream_rate=settings.EVENTS_STREAM_RATE or None,
        publish_rate=settings.EVENTS_PUBLISH_RATE or None,
        ticket_seconds=settings.EVENTS_TICKET_SECONDS,
        idempotency_seconds=settings.EVENTS_IDEMPOTENCY_SECONDS,
        publish_replicas=settings.EVENTS_PUBLISH_REPLICAS,
        publish_replica_timeout_milliseconds=settings.EVENTS_PUBLISH_REPLICA_TIMEOUT_MILLISECONDS,
    )


@receiver(setting_changed)
def _read_again(**_: object) -> None:
    event_settings.cache_clear()
