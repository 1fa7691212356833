"""Publishing: the one path every event takes to the broker, from Python (views, signals,
workers), from the REST API (``api/views.py``) and from ``manage.py publish_event``.

Each attempt is validated once (``core/event.make_draft``), published once (the broker's single
script: with an idempotency key, at most once per key), and counted once in
``events_published_total`` by how it ended: ``ok``, ``duplicate``, ``refused`` or
``unavailable``. The API counts its own refusals before an event reaches this module
(authentication, permission, rate, body) with ``count_refused``.
"""

import functools
import logging
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from django.db import transaction

from .broker import get_broker
from .broker.base import Once, Publication
from .conf import event_settings
from .core.event import Draft, Event, make_draft
from .exceptions import BrokerUnavailable, EventError
from .telemetry import metrics

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
    return publish_with_outcome(event_type, data, user=user, topic=topic, key=key).event


def publish_with_outcome(
    event_type: str,
    data: Any = None,
    *,
    user: object = None,
    topic: str | None = None,
    key: str | None = None,
) -> Publication:
    """``publish``, telling also whether the event was published now or before under ``key``."""
    with _counted() as count:
        return count(get_broker().publish(_draft(event_type, data, user, topic), _once(key)))


async def apublish(
    event_type: str,
    data: Any = None,
    *,
    user: object = None,
    topic: str | None = None,
    key: str | None = None,
) -> Event:
    """``publish`` for async code."""
    with _counted() as count:
        draft = _draft(event_type, data, user, topic)
        return count(await get_broker().apublish(draft, _once(key))).event


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
    transaction.on_commit(functools.partial(_publish_committed, draft, _once(key)), using=using)


def _publish_committed(draft: Draft, once: Once | None) -> None:
    try:
        with _counted() as count:
            count(get_broker().publish(draft, once))
    except EventError:
        logger.exception("An event of a committed transaction was not published: %s", draft.type)


def count_refused() -> None:
    """Count a publish refused before it reached this module (by the API's checks)."""
    metrics.published.labels("refused").inc()


@contextmanager
def _counted() -> Iterator[Callable[[Publication], Publication]]:
    """Count one publish by how it ends: ``count(publication)`` for one that reached the broker,
    or the error it raised."""
    try:
        yield _count_published
    except BrokerUnavailable:
        metrics.published.labels("unavailable").inc()
        raise
    except EventError:
        count_refused()
        raise


def _count_published(publication: Publication) -> Publication:
    metrics.published.labels("duplicate" if publication.replayed else "ok").inc()
    return publication


def _draft(event_type: str, data: Any, user: object, topic: str | None) -> Draft:
    max_payload_bytes = event_settings().max_payload_bytes
    return make_draft(event_type, data, user=user, topic=topic, max_payload_bytes=max_payload_bytes)


def _once(key: str | None) -> Once | None:
    return None if key is None else Once(key, event_settings().idempotency_seconds)
