"""Who may read which topic: nobody, unless a rule allows it.

The default rules (``default_topic_authorizer``): a ``staff.*`` topic is for staff only; any other
topic is readable by every signed-in user when it matches a pattern of ``EVENTS_PUBLIC_TOPICS``
(shell-style: ``news``, ``news.*``); every other topic is denied. A project with real rules names
its own function in ``EVENTS_TOPIC_AUTHORIZER`` (docs/events.md has one based on Django
permissions), and calls ``recheck_streams(user)`` (``revocation.py``) when what the rule reads
changes, so that open streams lose a topic as soon as the user does.
"""

from collections.abc import Callable, Iterable
from fnmatch import fnmatchcase
from typing import cast

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils.module_loading import import_string

from ..conf import event_settings

TopicAuthorizer = Callable[[AbstractBaseUser | AnonymousUser, str], bool]

STAFF_TOPIC_PREFIX = "staff."


def default_topic_authorizer(user: AbstractBaseUser | AnonymousUser, topic: str) -> bool:
    """Staff topics for staff; public topics for everyone signed in; nothing else."""
    if topic.startswith(STAFF_TOPIC_PREFIX):
        return bool(getattr(user, "is_staff", False))
    return is_public_topic(topic)


def is_public_topic(topic: str) -> bool:
    """Whether ``topic`` matches a pattern of ``EVENTS_PUBLIC_TOPICS``."""
    return any(fnmatchcase(topic, pattern) for pattern in event_settings().public_topics)


def topic_authorizer() -> TopicAuthorizer:
    return cast(TopicAuthorizer, import_string(event_settings().topic_authorizer))


def denied_topics(user: AbstractBaseUser | AnonymousUser, topics: Iterable[str]) -> list[str]:
    """The topics of ``topics`` that ``user`` may not read, by the configured rule."""
    may_read = topic_authorizer()
    return [topic for topic in topics if not may_read(user, topic)]
