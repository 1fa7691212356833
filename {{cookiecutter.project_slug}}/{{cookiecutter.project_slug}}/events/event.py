"""The event: what is published, stored in history, sent over Redis and written to clients.

The JSON envelope on Redis (documented in docs/events.md)::

    {"type": "message", "data": <any JSON>, "user": <pk or null>, "topic": <name or null>}

Events published through this project also carry ``"id"``: their id in the Redis stream history.
An event is parsed and encoded once per process; every client receiving it shares the same bytes.
"""

import json
import re
from dataclasses import dataclass, field
from typing import Any

from .channels import channel_for
from .exceptions import EventTooLarge, InvalidEvent, InvalidEventId
from .wire import encode_event

# Event names become the SSE ``event:`` field and the browser's addEventListener() name.
EVENT_TYPE = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]{0,63}")
# Sent to a client whose missed events are gone: it should reload its state.
RESET_TYPE = "reset"
# Ids have the shape of Redis stream ids, "<milliseconds>-<sequence>", in both brokers.
EVENT_ID = re.compile(r"\d{1,20}-\d{1,20}")


def parse_event_id(event_id: str) -> tuple[int, int]:
    """The sortable form of an id; raises InvalidEventId for an id this project never hands out."""
    if not isinstance(event_id, str) or not EVENT_ID.fullmatch(event_id):
        raise InvalidEventId(
            f"Invalid event id {event_id!r}: expected '<milliseconds>-<sequence>', "
            "as sent in the stream's 'id:' lines."
        )
    milliseconds, sequence = event_id.split("-")
    return int(milliseconds), int(sequence)


@dataclass(frozen=True, slots=True)
class Event:
    type: str
    data: str  # JSON text, exactly as clients receive it
    channel: str
    id: str | None = None
    wire: bytes = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(
            self, "wire", encode_event(self.data, event_type=self.type, event_id=self.id)
        )

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
    if not isinstance(event_type, str) or not EVENT_TYPE.fullmatch(event_type):
        raise InvalidEvent(
            f"Invalid event type {event_type!r}: use 1-64 letters, digits, '_', '.', ':' or '-'."
        )
    if event_type == RESET_TYPE:
        raise InvalidEvent(f"The event type {RESET_TYPE!r} is reserved for history resets.")
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
    validate_type(event_type)
    user_pk = _primary_key(user)
    channel = channel_for(user=user_pk, topic=topic)
    try:
        data_json = json.dumps(data, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except (TypeError, ValueError) as error:
        raise InvalidEvent(f"Event data must be JSON-serializable: {error}") from error
    size = len(data_json.encode())
    if size > max_payload_bytes:
        raise EventTooLarge(
            f"Event data is {size} bytes of JSON; the limit is {max_payload_bytes} bytes "
            "(EVENTS_MAX_PAYLOAD_BYTES)."
        )
    envelope = {"type": event_type, "data": data, "user": user_pk, "topic": topic}
    envelope_json = json.dumps(envelope, ensure_ascii=False, separators=(",", ":"))
    return Draft(type=event_type, data=data_json, channel=channel, envelope=envelope_json)


def parse_envelope(
    raw: bytes | str, *, event_id: str | None = None, max_payload_bytes: int
) -> Event:
    """Parse an envelope read from Redis; raises InvalidEvent or EventTooLarge if it is unusable."""
    # Checked before decoding so that a huge message costs no parsing.
    if len(raw) > max_payload_bytes + 1024:
        raise EventTooLarge(
            f"Message of {len(raw)} bytes exceeds EVENTS_MAX_PAYLOAD_BYTES={max_payload_bytes}."
        )
    try:
        envelope = json.loads(raw)
    except UnicodeDecodeError as error:
        raise InvalidEvent(f"Message is not UTF-8: {error}") from error
    except ValueError as error:
        raise InvalidEvent(f"Message is not JSON: {error}") from error
    if not isinstance(envelope, dict) or "type" not in envelope or "data" not in envelope:
        raise InvalidEvent('Message must be a JSON object with "type" and "data".')
    event_id = envelope.get("id", event_id)
    if event_id is not None:
        parse_event_id(event_id)
    user = envelope.get("user")
    if user is not None and not isinstance(user, int | str):
        raise InvalidEvent('"user" must be a user primary key (number or string) or null.')
    draft = make_draft(
        envelope["type"],
        envelope["data"],
        user=user,
        topic=envelope.get("topic"),
        max_payload_bytes=max_payload_bytes,
    )
    return draft.with_id(event_id)


def _primary_key(user: object) -> int | str | None:
    # A user object or a raw primary key; numbers stay numbers in the JSON envelope.
    pk = getattr(user, "pk", user)
    if pk is None or (isinstance(pk, int) and not isinstance(pk, bool)):
        return pk
    return str(pk)
