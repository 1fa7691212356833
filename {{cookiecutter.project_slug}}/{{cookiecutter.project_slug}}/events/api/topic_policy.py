"""The topic policy of both endpoints that name topics (the stream and its tickets): how many,
well-formed, and readable by the user; refused with a 400 or a 403 that says which."""

from collections.abc import Iterable

from django.contrib.auth.models import AbstractBaseUser, AnonymousUser
from rest_framework.exceptions import PermissionDenied, ValidationError

from ..access.topics import denied_topics
from ..conf import event_settings
from ..core.channels import validate_topic
from ..exceptions import InvalidEvent


def readable_topics(
    user: AbstractBaseUser | AnonymousUser, topics: Iterable[str], *, field: str
) -> list[str]:
    """``topics`` without repeats, if there are at most ``EVENTS_MAX_TOPICS_PER_STREAM``, each
    well-formed and readable by ``user``; otherwise a ValidationError on ``field`` (400) or
    PermissionDenied (403)."""
    wanted = list(dict.fromkeys(topics))
    limit = event_settings().max_topics_per_stream
    if len(wanted) > limit:
        raise ValidationError({field: [f"At most {limit} topics per stream."]})
    try:
        wanted = [validate_topic(topic) for topic in wanted]
    except InvalidEvent as error:
        raise ValidationError({field: [str(error)]}) from error
    denied = denied_topics(user, wanted)
    if denied:
        raise PermissionDenied(f"You may not read topic(s): {', '.join(denied)}.")
    return wanted
