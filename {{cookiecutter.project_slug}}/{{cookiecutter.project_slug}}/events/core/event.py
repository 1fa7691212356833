"""The event: what is published, stored in history, sent over Redis and written to clients.

The JSON envelope on Redis (documented in docs/events.md)::

    {"type": "message", "data": <any JSON>, "user": <pk or null>, "topic": <name or null>}

An event's id is its entry id in the history (Redis's ``XADD`` answer, or the in-process broker's
counter); an ``"id"`` field in an envelope is ignored, so no publisher can forge where a client
resumes. An event is parsed and encoded once per process; every client receiving it shares the
same bytes.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any

from ..exceptions import EventTooLarge, InvalidEvent, InvalidEventId
from .channels import NAME, NAME_RULE, channel_for
from .wire import encode_event

# Sent to a client whose missed events are gone: it should reload its state.
RESET_TYPE = "reset"
# Sent, as the last event of a stream, to a client whose access was taken away
# (access/revocation.py).
REVOKED_TYPE = "revoked"
_RESERVED_TYPES = {RESET_TYPE: "history resets", REVOKED_TYPE: "ended access"}
# Ids have the shape of Redis stream ids, "<milliseconds>-<sequence>", in both brokers: ASCII
# digits only (``\d`` would admit other scripts' digits, which Redis refuses), each part an unsigned
# 64-bit number.
EVENT_ID = re.compile(r"([0-9]{1,20})-([0-9]{1,20})")
_MAX_ID_PART = 2**64 - 1


def parse_event_id(event_id: object) -> tuple[int, int]:
    """The sortable form of an id; raises InvalidEventId for an id this project never hands out."""
    match = EVENT_ID.fullmatch(event_id) if isinstance(event_id, str) else None
    parts = (int(match[1]), int(match[2])) if match else None
    if parts is None or max(parts) > _MAX_ID_PART:
        raise InvalidEventId(
            f"Invalid event id {str(event_id)[:64]!r}: expected '<milliseconds>-<sequence>' "
            "(two numbers below 2**64), as sent in the stream's 'id:' lines."
        )
    return parts


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: str  # JSON text, exactly as clients receive it
    channel: str
    id: str | None = None
    _wire: bytes | None = field(default=None, init=False, repr=False, compare=False)
    _body: bytes | None = field(default=None, init=False, repr=False, compare=False)

    @property
    def wire(self) -> bytes:
        """The event as clients receive it, encoded on first use: every recipient shares these
        bytes, and an event that is only published (the one ``publish()`` returns) costs none."""
        wire = self._wire
        if wire is None:
            wire = encode_event(self.data, event_type=self.type, event_id=self.id)
            object.__setattr__(self, "_wire", wire)
        return wire

    @property
    def body_wire(self) -> bytes:
        """The event without its ``id:`` line, for streams that write their own id (a position
        over several partitions, core/positions.py); encoded on first use, then shared."""
        body = self._body
        if body is None:
            body = encode_event(self.data, event_type=self.type)
            object.__setattr__(self, "_body", body)
        return body

    @property
    def sort_key(self) -> tuple[int, int] | None:
        return parse_event_id(self.id) if self.id is not None else None


@dataclass(frozen=True, slots=True)
class Draft:
    """A validated event before the broker gives it an id."""

    type: str
    data: str
    channel: str
    envelope: str  # the JSON envelope without an id, as stored and published

    def with_id(self, event_id: str | None) -> Event:
        return Event(type=self.type, data=self.data, channel=self.channel, id=event_id)


def validate_type(event_type: object) -> str:
    if not isinstance(event_type, str) or not NAME.fullmatch(event_type):
        raise InvalidEvent(f"Invalid event type {event_type!r}: {NAME_RULE}.")
    if event_type in _RESERVED_TYPES:
        raise InvalidEvent(
            f"The event type {event_type!r} is reserved for {_RESERVED_TYPES[event_type]}."
        )
    return event_type


def make_draft(
    event_type: str,
    data: Any,
    *,
    user: object = None,
    topic: str | None = None,
    max_payload_bytes: int,
) -> Draft:
    """Validate and serialize an event once, so every later step reuses the same text."""
    user_pk = _primary_key(user)
    channel, data_json = _validated(event_type, data, user_pk, topic, max_payload_bytes)
    envelope = {"type": event_type, "data": data, "user": user_pk, "topic": topic}
    return Draft(type=event_type, data=data_json, channel=channel, envelope=_json_text(envelope))


def _validated(
    event_type: str, data: Any, user_pk: object, topic: str | None, max_payload_bytes: int
) -> tuple[str, str]:
    """The channel and the data's JSON text of a valid event; raises an EventError otherwise."""
    validate_type(event_type)
    channel = channel_for(user=user_pk, topic=topic)
    data_json = _json_text(data)
    size = len(data_json.encode())
    if size > max_payload_bytes:
        raise EventTooLarge(
            f"Event data is {size} bytes of JSON; the limit is {max_payload_bytes} bytes "
            "(EVENTS_MAX_PAYLOAD_BYTES)."
        )
    return channel, data_json


def _json_text(value: Any) -> str:
    """Compact JSON that is also valid UTF-8 (what clients and Redis receive)."""
    try:
        text = json.dumps(value, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
        # A lone surrogate ("\ud800" in JSON) decodes to a str that has no UTF-8 form.
        text.encode()
    except (TypeError, ValueError) as error:  # UnicodeEncodeError is a ValueError
        raise InvalidEvent(f"Event data must be JSON-serializable as UTF-8: {error}") from error
    except RecursionError:
        raise InvalidEvent("Event data is nested too deeply.") from None
    return text


def parse_envelope(
    raw: bytes | str, *, event_id: str | None = None, max_payload_bytes: int
) -> Event:
    """Parse an envelope read from Redis, with the id its history entry has (None: not in history).

    Raises InvalidEvent, InvalidEventId or EventTooLarge (all EventError) if it is unusable, and
    nothing else, whatever the bytes: the feed and replay rely on that to skip what they cannot use.
    """
    # Checked before decoding so that a huge message costs no parsing.
    if len(raw) > max_payload_bytes + 1024:
        raise EventTooLarge(
            f"Message of {len(raw)} bytes exceeds EVENTS_MAX_PAYLOAD_BYTES={max_payload_bytes}."
        )
    if event_id is not None:
        parse_event_id(event_id)
    try:
        envelope = json.loads(raw)
    except UnicodeDecodeError as error:
        raise InvalidEvent(f"Message is not UTF-8: {error}") from error
    except ValueError as error:
        raise InvalidEvent(f"Message is not JSON: {error}") from error
    except RecursionError:
        raise InvalidEvent("Message is nested too deeply.") from None
    if not isinstance(envelope, dict) or "type" not in envelope or "data" not in envelope:
        raise InvalidEvent('Message must be a JSON object with "type" and "data".')
    user = _user_key(envelope.get("user"))
    event_type = envelope["type"]
    # Built directly, without the envelope text a Draft carries: it was read, not published.
    channel, data_json = _validated(
        event_type,
        envelope["data"],
        user,
        _optional_topic(envelope.get("topic")),
        max_payload_bytes,
    )
    return Event(type=event_type, data=data_json, channel=channel, id=event_id)


def _user_key(user: object) -> int | str | None:
    if user is None or (isinstance(user, int) and not isinstance(user, bool)):
        return user
    if isinstance(user, str) and user.isprintable() and _has_utf8_form(user):
        return user
    raise InvalidEvent('"user" must be a user primary key (number or string) or null.')


def _has_utf8_form(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:  # a lone surrogate
        return False
    return True


def _optional_topic(topic: object) -> str | None:
    if topic is not None and not isinstance(topic, str):
        raise InvalidEvent('"topic" must be a topic name or null.')
    return topic


def _primary_key(user: object) -> int | str | None:
    # A user object or a raw primary key; numbers stay numbers in the JSON envelope.
    pk = getattr(user, "pk", user)
    if pk is None or (isinstance(pk, int) and not isinstance(pk, bool)):
        return pk
    return str(pk)
