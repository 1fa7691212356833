"""Where an event goes: one user, one topic, or everyone.

A channel is a short string: ``broadcast``, ``user.<pk>`` or ``topic.<name>``. The same names are
used for Redis Pub/Sub channels (behind a prefix) and for routing inside a process.
"""

import re

from ..exceptions import InvalidEvent

BROADCAST = "broadcast"
# The channel of the marker entries in history (added to an empty one, of events or of access
# changes, and where events were lost): no stream reads it.
RESET_MARKER = "reset-marker"
# Where processes tell each other to recheck open streams (broker.base.AccessChange): every feed
# listens to it; no stream does, and nothing on it is stored.
CONTROL = "control"
_USER_PREFIX = "user."
_TOPIC_PREFIX = "topic."

# Topic names and event types travel in URLs, Redis channel names, logs and the SSE ``event:``
# field (a browser's addEventListener() name): one safe, short alphabet for both.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
NAME_RULE = "use 1-64 letters, digits, '_', '.', ':' or '-', starting with a letter or digit"


def user_channel(user_pk: object) -> str:
    return f"{_USER_PREFIX}{user_pk}"


def topic_channel(topic: str) -> str:
    validate_topic(topic)
    return f"{_TOPIC_PREFIX}{topic}"


def validate_topic(topic: str) -> str:
    if not isinstance(topic, str) or not NAME.fullmatch(topic):
        raise InvalidEvent(f"Invalid topic {topic!r}: {NAME_RULE}.")
    return topic


def channel_for(*, user: object = None, topic: str | None = None) -> str:
    """The channel of an event addressed to ``user``, to ``topic``, or (neither) to everyone."""
    if user is not None and topic is not None:
        raise InvalidEvent("An event goes to one user or one topic, not both.")
    if user is not None:
        return user_channel(user)
    if topic is not None:
        return topic_channel(topic)
    return BROADCAST
