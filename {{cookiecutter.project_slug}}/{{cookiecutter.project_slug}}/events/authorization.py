"""Who may read which topic. Projects replace the rule with ``EVENTS_TOPIC_AUTHORIZER``."""

from collections.abc import Callable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from django.utils.module_loading import import_string

from .conf import event_settings

TopicAuthorizer = Callable[[AbstractBaseUser | AnonymousUser, str], bool]

STAFF_TOPIC_PREFIX = "staff."


def default_topic_authorizer(user: AbstractBaseUser | AnonymousUser, topic: str) -> bool:
    """Signed-in users may read every topic, except that ``staff.*`` topics are for staff only."""
    return bool(getattr(user, "is_staff", False)) or not topic.startswith(STAFF_TOPIC_PREFIX)


def topic_authorizer() -> TopicAuthorizer:
    return import_string(event_settings().topic_authorizer)
