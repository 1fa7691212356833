"""The wire format and the envelope: what a client receives, and what the server refuses."""

import json

import pytest

from ..core.event import make_draft, parse_envelope, parse_event_id
from ..core.wire import HEARTBEAT, encode_comment, encode_event, encode_retry
from ..exceptions import EventTooLarge, InvalidEvent, InvalidEventId


def test_each_line_of_data_gets_its_own_data_field() -> None:
    wire = encode_event("one\ntwo\r\nthree\rfour", event_type="note", event_id="1-0")
    assert wire == b"id: 1-0\nevent: note\ndata: one\ndata: two\ndata: three\ndata: four\n\n"


def test_data_cannot_start_a_new_event_or_field() -> None:
    wire = encode_event("x\n\nid: 999-0\nevent: admin", event_type="note", event_id="1-0")
    assert wire == b"id: 1-0\nevent: note\ndata: x\ndata: \ndata: id: 999-0\ndata: event: admin\n\n"
    assert wire.count(b"\n\n") == 1


@pytest.mark.parametrize("field", ["event_type", "event_id"])
@pytest.mark.parametrize("bad", ["a\nb", "a\rb", "a\0b"])
def test_id_and_event_refuse_line_breaks_and_nul(field: str, bad: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        encode_event("{}", **{field: bad})


def test_heartbeat_is_a_comment_and_retry_a_field() -> None:
    assert HEARTBEAT == b": ping\n\n"
    assert encode_comment("a\nb") == b": a\n: b\n\n"
    assert encode_retry(3000) == b"retry: 3000\n\n"


def test_draft_is_addressed_and_serialized_once() -> None:
    draft = make_draft("note", {"a": [1, "é"]}, topic="news", max_payload_bytes=1024)
    assert draft.channel == "topic.news"
    assert draft.data == '{"a":[1,"é"]}'
    assert json.loads(draft.envelope) == {
        "type": "note",
        "data": {"a": [1, "é"]},
        "user": None,
        "topic": "news",
    }
    assert make_draft("note", 1, user=42, max_payload_bytes=10).channel == "user.42"
    assert make_draft("note", 1, max_payload_bytes=10).channel == "broadcast"


@pytest.mark.parametrize(
    ("event_type", "data", "address", "reason"),
    [
        ("bad\nname", 1, {}, "Invalid event type"),
        ("reset", 1, {}, "reserved"),
        ("note", 1, {"topic": "new\nline"}, "Invalid topic"),
        ("note", 1, {"user": 1, "topic": "news"}, "not both"),
        ("note", float("nan"), {}, "JSON"),
        ("note", object(), {}, "JSON"),
    ],
)
def test_invalid_events_are_refused_with_a_reason(
    event_type: str, data: object, address: dict, reason: str
) -> None:
    with pytest.raises(InvalidEvent, match=reason):
        make_draft(event_type, data, max_payload_bytes=100, **address)


def test_oversize_data_is_refused_with_both_sizes() -> None:
    with pytest.raises(EventTooLarge, match="12 bytes of JSON; the limit is 10 bytes"):
        make_draft("note", "x" * 10, max_payload_bytes=10)


@pytest.mark.parametrize(
    "raw",
    [
        b"not json",
        b"\xff\xfe{}",
        b"[1, 2]",
        b'{"type": "note"}',
        b'{"type": "bad type", "data": 1}',
        b'{"type": "note", "data": 1, "user": [1]}',
        b'{"type": "note", "data": 1, "user": true}',
        b'{"type": "note", "data": 1, "topic": 5}',
        b'{"type": "note", "data": "\\ud800"}',
        b'{"type": "note", "data": ' + b"[" * 100_000 + b"]" * 100_000 + b"}",
        b'{"type": "note", "data": "' + b"x" * 400_000 + b'"}',
    ],
)
def test_malformed_envelopes_are_rejected(raw: bytes) -> None:
    with pytest.raises((InvalidEvent, InvalidEventId, EventTooLarge)):
        parse_envelope(raw, max_payload_bytes=300_000)


def test_the_id_comes_from_history_and_never_from_the_envelope() -> None:
    raw = b'{"id": "99999999999999-0", "type": "note", "data": {"k": "v"}, "user": 7}'
    assert parse_envelope(raw, max_payload_bytes=1000).id is None
    event = parse_envelope(raw, event_id="5-1", max_payload_bytes=1000)
    assert (event.id, event.channel, event.data) == ("5-1", "user.7", '{"k":"v"}')
    assert event.wire == b'id: 5-1\nevent: note\ndata: {"k":"v"}\n\n'
    with pytest.raises(InvalidEventId):
        parse_envelope(raw, event_id="nope", max_payload_bytes=1000)


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "1",
        "1-",
        "-1",
        "a-1",
        "1-1-1",
        "1-0\n",
        "\u0661-0",  # an Arabic-Indic digit: a digit to Python, not to Redis
        "18446744073709551616-0",  # 2**64
        "0-18446744073709551616",
        "123456789012345678901-0",
    ],
)
def test_event_ids_have_one_shape(bad: str) -> None:
    with pytest.raises(InvalidEventId):
        parse_event_id(bad)


def test_event_ids_cover_the_whole_range_redis_accepts() -> None:
    assert parse_event_id("18446744073709551615-18446744073709551615") == (2**64 - 1, 2**64 - 1)


def test_event_ids_sort_numerically() -> None:
    assert parse_event_id("1700000000000-3") == (1700000000000, 3)
    assert parse_event_id("10-0") > parse_event_id("9-5")
