"""The event stream's settings, read from Django settings (which read them from the environment)."""

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


@cache
def event_settings() -> EventSettings:
    """Read once: a stream's request asks several times, and reading them all costs about as
    much as a Redis round trip. Read again when a test overrides a setting."""
    return EventSettings(
        redis_url=getattr(settings, "REDIS_URL", ""),
        redis_prefix=getattr(settings, "EVENTS_REDIS_PREFIX", "events"),
        history_length=getattr(settings, "EVENTS_HISTORY_LENGTH", 10_000),
        heartbeat_seconds=getattr(settings, "EVENTS_HEARTBEAT_SECONDS", 15.0),
        retry_milliseconds=getattr(settings, "EVENTS_RETRY_MILLISECONDS", 3_000),
        max_payload_bytes=getattr(settings, "EVENTS_MAX_PAYLOAD_BYTES", 64 * 1024),
        max_topics_per_stream=getattr(settings, "EVENTS_MAX_TOPICS_PER_STREAM", 16),
        client_queue_size=getattr(settings, "EVENTS_CLIENT_QUEUE_SIZE", 1_000),
        client_max_backlog_bytes=getattr(settings, "EVENTS_CLIENT_MAX_BACKLOG_BYTES", 1024 * 1024),
        client_send_timeout_seconds=getattr(settings, "EVENTS_CLIENT_SEND_TIMEOUT_SECONDS", 10.0),
        redis_health_check_seconds=getattr(settings, "EVENTS_REDIS_HEALTH_CHECK_SECONDS", 3.0),
        shutdown_reconnect_window_seconds=getattr(
            settings, "EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS", 10.0
        ),
        shutdown_grace_seconds=getattr(settings, "EVENTS_SHUTDOWN_GRACE_SECONDS", 3.0),
        stream_max_seconds=getattr(settings, "EVENTS_STREAM_MAX_SECONDS", 3_600.0),
        cors_allowed_origins=tuple(getattr(settings, "EVENTS_CORS_ALLOWED_ORIGINS", ())),
        public_topics=tuple(getattr(settings, "EVENTS_PUBLIC_TOPICS", ())),
        topic_authorizer=getattr(
            settings,
            "EVENTS_TOPIC_AUTHORIZER",
            f"{__package__}.authorization.default_topic_authorizer",
        ),
        max_streams_per_user=getattr(settings, "EVENTS_MAX_STREAMS_PER_USER", 8),
        stream_rate=getattr(settings, "EVENTS_STREAM_RATE", "60/min") or None,
        publish_rate=getattr(settings, "EVENTS_PUBLISH_RATE", "600/min") or None,
        ticket_seconds=getattr(settings, "EVENTS_TICKET_SECONDS", 30),
        idempotency_seconds=getattr(settings, "EVENTS_IDEMPOTENCY_SECONDS", 86_400),
    )


@receiver(setting_changed)
def _read_again(**_: object) -> None:
    event_settings.cache_clear()
