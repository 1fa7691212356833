"""Publishing events from Python: views, signals, workers, management commands."""

from typing import Any

from .broker import get_broker
from .conf import event_settings
from .event import Draft, Event, make_draft


def publish(
    event_type: str, data: Any = None, *, user: object = None, topic: str | None = None
) -> Event:
    """Send an event to ``user`` (a user or primary key), to ``topic``, or (neither) to everyone.

    Returns the event with its id. Raises ``InvalidEvent`` or ``EventTooLarge`` for a bad event,
    and ``BrokerUnavailable`` when it could not be stored (nothing is dropped silently).
    """
    return get_broker().publish(_draft(event_type, data, user, topic))


async def apublish(
    event_type: str, data: Any = None, *, user: object = None, topic: str | None = None
) -> Event:
    """``publish`` for async code."""
    return await get_broker().apublish(_draft(event_type, data, user, topic))


def _draft(event_type: str, data: Any, user: object, topic: str | None) -> Draft:
    max_payload_bytes = event_settings().max_payload_bytes
    return make_draft(event_type, data, user=user, topic=topic, max_payload_bytes=max_payload_bytes)
