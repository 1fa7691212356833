"""Publishing events from Python: views, signals, workers, management commands."""

import functools
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from django.db import transaction

from . import instruments
from .broker import get_broker
from .broker.base import Once
from .conf import event_settings
from .event import Draft, Event, make_draft
from .exceptions import BrokerUnavailable, EventError

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
    with counted_publish() as count:
        draft = _draft(event_type, data, user, topic)
        if key is None:
            return get_broker().publish(draft)
        publication = get_broker().publish_once(draft, _once(key))
        count.replayed = publication.replayed
        return publication.event


async def apublish(
    event_type: str,
    data: Any = None,
    *,
    user: object = None,
    topic: str | None = None,
    key: str | None = None,
) -> Event:
    """``publish`` for async code."""
    with counted_publish() as count:
        draft = _draft(event_type, data, user, topic)
        if key is None:
            return await get_broker().apublish(draft)
        publication = await get_broker().apublish_once(draft, _once(key))
        count.replayed = publication.replayed
        return publication.event


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
        with counted_publish() as count:
            if once is None:
                get_broker().publish(draft)
            else:
                count.replayed = get_broker().publish_once(draft, once).replayed
    except EventError:
        logger.exception("An event of a committed transaction was not published: %s", draft.type)


class _PublishCount:
    replayed = False


@contextmanager
def counted_publish() -> Iterator[_PublishCount]:
    """Count one publish in ``events_published_total`` by how it ends (set ``replayed`` when an
    idempotency key was seen before)."""
    count = _PublishCount()
    try:
        yield count
    except BrokerUnavailable:
        instruments.published.labels("unavailable").inc()
        raise
    except EventError:
        instruments.published.labels("refused").inc()
        raise
    instruments.published.labels("duplicate" if count.replayed else "ok").inc()


def _draft(event_type: str, data: Any, user: object, topic: str | None) -> Draft:
    max_payload_bytes = event_settings().max_payload_bytes
    return make_draft(event_type, data, user=user, topic=topic, max_payload_bytes=max_payload_bytes)


def _once(key: str) -> Once:
    return Once(key, event_settings().idempotency_seconds)
