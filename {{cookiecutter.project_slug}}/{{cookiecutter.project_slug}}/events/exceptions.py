"""Errors the event stream raises, each with a message a caller can show as is."""


class EventError(Exception):
    """Base class for every error of the events app."""


class BrokerUnavailable(EventError):
    """The broker (Redis) cannot be reached, so nothing was published or read."""


class EventTooLarge(EventError):
    """An event's data is larger than ``EVENTS_MAX_PAYLOAD_BYTES``."""


class InvalidEvent(EventError):
    """An event is malformed: bad JSON, wrong schema, bad name, bad address."""


class IdempotencyConflict(EventError):
    """An idempotency key already used for a different event."""


class InvalidEventId(EventError):
    """A ``Last-Event-ID`` that is not an id this project hands out."""
