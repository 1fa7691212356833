"""Publishing events from Python: views, signals, workers, management commands."""

import functools
import logging
from typing import Any

from django.db import transaction

from .broker import get_broker
from .broker.base import Once
from .conf import event_settings
from .event import Draft, Event, make_draft
from .exceptions import EventError

logger = logging.getLogger(__name__)


def publish(
    event_type: str,
    data: Any = None,
    *,
    user: object = None,
    topic: str | None = None,
    key: str | None = None,
) -> Event:
    """Send an event to ``user`` (a user or primary key), to ``topic``, or (neither) to everyone.

    Returns the event with its id. With ``key`` (an idempotency key), the event is published at
    most once within ``EVENTS_IDEMPOTENCY_SECONDS``: calling again with the same key returns the
    first event, and publishes nothing. Raises ``InvalidEvent`` or ``EventTooLarge`` for a bad
    event, ``IdempotencyConflict`` if ``key`` was used for another event, and
    ``BrokerUnavailable`` when it could not be stored (nothing is dropped silently).
    """
    draft = _draft(event_type, data, user, topic)
    if key is None:
        return get_broker().publish(draft)
    return get_broker().publish_once(draft, _once(key)).event


async def apublish(
    event_type: str,
    data: Any = None,
    *,
    user: object = None,
    topic: str | None = None,
    key: str | None = None,
) -> Event:
    """``publish`` for async code."""
    draft = _draft(event_type, data, user, topic)
    if key is None:
        return await get_broker().apublish(draft)
    return (await get_broker().apublish_once(draft, _once(key))).event


def publish_on_commit(
    event_type: str,
    data: Any = None,
    *,
    user: object = None,
    topic: str | None = None,
    key: str | None = None,
    using: str | None = None,
) -> None:
    """``publish`` once the current transaction commits, and not at all if it rolls back (outside
    a transaction: now). A client then never hears of a change that did not happen.

    The event is checked now (``InvalidEvent``, ``EventTooLarge`` are raised here); a failure
    to publish after the commit can no longer reach the caller: it is logged.
    """
    draft = _draft(event_type, data, user, topic)
    once = None if key is None else _once(key)
    transaction.on_commit(functools.partial(_publish_committed, draft, once), using=using)


def _publish_committed(draft: Draft, once: Once | None) -> None:
    try:
        if once is None:
            get_broker().publish(draft)
        else:
            get_broker().publish_once(draft, once)
    except EventError:
        logger.exception("An event of a committed transaction was not published: %s", draft.type)


def _draft(event_type: str, data: Any, user: object, topic: str | None) -> Draft:
    max_payload_bytes = event_settings().max_payload_bytes
    return make_draft(event_type, data, user=user, topic=topic, max_payload_bytes=max_payload_bytes)


def _once(key: str) -> Once:
    return Once(key, event_settings().idempotency_seconds)
