"""Properties of the envelope parser and the wire encoder, for any input (hypothesis).

The Redis feed and the replay skip, and count, every message ``parse_envelope`` refuses with an
``EventError``; any other exception would end streams or the feed, so the parser must be total.
What the encoder writes must read back, through a parser that follows the SSE spec (httpx-sse's),
as exactly the event that was meant: nothing a publisher sends can forge another event or field.
"""

import codecs
import itertools
import json
import re
from collections import Counter
from collections.abc import Iterator, Sequence

import pytest
from httpx_sse._decoders import SSEDecoder, SSELineDecoder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ..core.channels import NAME
from ..core.event import RESET_TYPE, Event, parse_envelope, parse_event_id
from ..core.wire import HEARTBEAT, encode_comment, encode_event
from ..exceptions import EventError, InvalidEvent, InvalidEventId

# The same examples on every run, nothing stored between runs, a bounded count: fit for CI.
PROPERTIES = settings(
    derandomize=True,
    database=None,
    max_examples=300,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow],
)
MAX_ID_PART = 2**64 - 1

# --- A spec-compliant reader ------------------------------------------------------------------


def read_stream(wire: bytes, cuts: Sequence[int] = ()) -> list[tuple[str, str, str]]:
    """(event type, last event id, data) of each event a browser would dispatch from ``wire``.

    The bytes are cut at ``cuts`` and fed chunk by chunk, as the network delivers them: a CRLF or
    a UTF-8 character split between chunks must not change what is read.
    """
    decoder = codecs.getincrementaldecoder("utf-8")()
    lines, events = SSELineDecoder(), SSEDecoder()
    bounds = [0, *sorted(cuts), len(wire)]
    texts = [decoder.decode(wire[start:end]) for start, end in itertools.pairwise(bounds)]
    texts.append(decoder.decode(b"", final=True))
    read, has_data = [], False
    for line in [line for text in texts if text for line in lines.decode(text)] + lines.flush():
        # httpx-sse also dispatches on a blank line after an id or event field alone; the spec
        # dispatches only if a data field came since the last blank line.
        has_data = has_data or line.partition(":")[0] == "data"
        sse = events.decode(line)
        if sse is not None and has_data:
            read.append((sse.event, sse.id, sse.data))
        has_data = has_data and bool(line)
    return read


def as_read(data: str) -> str:
    """``data`` as a client reads it: CR, LF and CRLF all end a line (HTML spec 9.2.6), and a
    multi-line ``data`` is joined back with LF, so each line break comes back as one LF."""
    return re.sub(r"\r\n|\r|\n", "\n", data)


# --- Strategies -------------------------------------------------------------------------------

# Line breaks the SSE spec knows (CR, LF) and NUL, among characters that other line splitters
# (str.splitlines) treat as breaks but SSE does not, and the characters a field line is made of.
TRICKY = st.sampled_from(list("\r\n\0 :\x0b\x0c\x1c\x1d\x1e\x85\u2028\u2029\ufeffé€😀"))
# Lone surrogates included: a JSON "\ud800" decodes to one, and Redis may hold any bytes.
ANY_CHARACTER = st.characters(exclude_categories=())
any_text = st.text(st.one_of(TRICKY, ANY_CHARACTER), max_size=40)
event_types = st.from_regex(NAME, fullmatch=True)
topics = event_types  # one alphabet for both
event_ids = st.builds("{}-{}".format, st.integers(0, MAX_ID_PART), st.integers(0, MAX_ID_PART))

# JSON text with what a JSON serializer never writes but a message on Redis may hold: Python's
# extensions (NaN, Infinity), numbers no float or int can hold (1e999; more digits than the 4300
# Python converts), escaped and raw lone surrogates, duplicate keys.
odd_literals = st.sampled_from(
    [
        "NaN",
        "-Infinity",
        "1e999",
        "-1e999",
        "1e-999",
        "-0",
        "9" * 5_000,
        '"\\ud800"',
        '"\\udfff\\ud800"',
        '"a\\ud83d"',
        '"\\u0000"',
        '"\\r\\n"',
    ]
)
json_scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(),
    any_text,
)


def json_text(value: object, ascii_only: bool) -> str:
    return json.dumps(value, ensure_ascii=ascii_only)


scalar_texts = st.builds(json_text, json_scalars, st.booleans())
json_texts = st.recursive(
    scalar_texts | odd_literals,
    lambda children: st.one_of(
        st.lists(children, max_size=4).map(lambda items: f"[{','.join(items)}]"),
        st.lists(st.tuples(scalar_texts | odd_literals, children), max_size=4).map(
            lambda pairs: "{" + ",".join(f"{key}:{value}" for key, value in pairs) + "}"
        ),
    ),
    max_leaves=12,
)
# Nesting around the parser's recursion limit and far past it.
deep_json = st.builds(
    lambda depth, bracket, leaf: bracket[0] * depth + leaf + bracket[1] * depth,
    st.sampled_from([2, 64, 500, 1_000, 5_000, 100_000]),
    st.sampled_from([("[", "]"), ('{"a":', "}")]),
    scalar_texts,
)


def envelope_text(fields: dict[str, str]) -> str:
    return "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in fields.items()) + "}"


# Envelopes with "type" and "data", mostly well formed so that many parse, each field sometimes of
# the wrong type, and sometimes an "id" field, which must never become the event's id.
envelopes = st.fixed_dictionaries(
    {
        "type": st.one_of(event_types.map(json.dumps), st.just('"reset"'), json_texts),
        "data": st.one_of(json_texts, deep_json),
    },
    optional={
        "user": st.one_of(
            st.integers(-(2**70), 2**70).map(str),
            st.builds(json_text, any_text, st.booleans()),
            json_texts,
        ),
        "topic": st.one_of(topics.map(json.dumps), json_texts),
        "id": event_ids.map(json.dumps),
    },
).map(envelope_text)
# Well-formed envelopes: a valid type, JSON data, at most one address.
json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda children: (
        st.lists(children, max_size=4) | st.dictionaries(st.text(), children, max_size=4)
    ),
    max_leaves=12,
)
good_envelopes = st.builds(
    lambda event_type, data, address: json.dumps({"type": event_type, "data": data, **address}),
    event_types,
    json_values,
    st.one_of(
        st.just({}),
        st.fixed_dictionaries({"user": st.integers(-(2**70), 2**70) | st.text(max_size=8)}),
        st.fixed_dictionaries({"topic": topics}),
    ),
)
# As bytes in the encodings json.loads detects, lone surrogates written out as such ("CESU-8").
encoded_envelopes = st.builds(
    lambda text, encoding: text.encode(encoding, "surrogatepass"),
    st.one_of(good_envelopes, envelopes, json_texts, deep_json),
    st.sampled_from(["utf-8", "utf-8", "utf-8", "utf-16", "utf-32"]),
)
messages = st.one_of(
    good_envelopes,
    encoded_envelopes,
    envelopes,
    st.binary(max_size=64),
    any_text,
    json_texts,
    deep_json,
)
payload_limits = st.one_of(st.just(65_536), st.integers(0, 10**6), st.sampled_from([0, 16]))
any_event_ids = st.one_of(
    st.none(),
    event_ids,
    any_text,
    st.builds("{}-{}".format, st.integers(0, 10**20), st.integers(0, 10**20)),
)

# One defect in an otherwise good envelope: (field, JSON text replacing it). Each is something a
# message on Redis can hold; before the parser was made total, the surrogates in data raised
# UnicodeEncodeError, the deep nesting RecursionError, and a bool "user" became channel "user.True".
DEFECTS = [
    ("data", '"\\ud800"'),
    ("data", '{"\\udfff":1}'),
    ("data", '["a\\ud83d"]'),
    ("type", '"\\ud800"'),
    ("topic", '"\\ud800"'),
    ("user", '"\\ud800"'),
    ("user", "true"),
    ("user", "1.5"),
    ("user", "[1]"),
    ("user", '{"pk":1}'),
    ("topic", "5"),
    ("topic", "[]"),
    ("topic", '"a\\nb"'),
    ("type", "5"),
    ("type", "null"),
    ("type", '"reset"'),
    ("type", '"a\\nb"'),
    ("data", "NaN"),
    ("data", "-Infinity"),
    ("data", "1e999"),
    ("data", "9" * 5_000),
    ("data", "[" * 100_000 + "]" * 100_000),
    ("data", '{"a":' * 100_000 + "1" + "}" * 100_000),
]
good_fields = st.fixed_dictionaries(
    {"type": event_types.map(json.dumps), "data": json_values.map(json.dumps)},
    optional={"user": st.integers(0, 2**70).map(str), "topic": topics.map(json.dumps)},
).filter(lambda fields: not {"user", "topic"} <= fields.keys())


# --- The envelope parser ----------------------------------------------------------------------


def assert_consistent(
    event: Event, raw: bytes | str, event_id: str | None, max_payload_bytes: int
) -> None:
    """``event`` is what ``raw`` says, addressed as it says, and reads back from its own bytes."""
    assert isinstance(event, Event)
    envelope = json.loads(raw)
    assert event.id == event_id  # from the history entry, never from the envelope's "id"
    assert event.type == envelope["type"]
    assert NAME.fullmatch(event.type)
    assert event.type != RESET_TYPE
    user, topic = envelope.get("user"), envelope.get("topic")
    if user is not None:
        assert type(user) in (int, str)  # a primary key: not a bool, float, list or object
        assert topic is None
        assert event.channel == f"user.{user}"
    elif topic is not None:
        assert NAME.fullmatch(topic)
        assert event.channel == f"topic.{topic}"
    else:
        assert event.channel == "broadcast"
    # The data is the envelope's, as JSON text that is valid UTF-8, on one line, within the limit.
    assert json.loads(event.data) == envelope["data"]
    assert len(event.data.encode()) <= max_payload_bytes
    assert "\r" not in event.data
    assert "\n" not in event.data
    assert read_stream(event.wire) == [(event.type, event.id or "", event.data)]


def parse_or_refuse(
    raw: bytes | str, event_id: str | None, max_payload_bytes: int, outcomes: Counter[str]
) -> Event | None:
    """The event parsed from ``raw`` (checked consistent), or None if refused with an EventError."""
    try:
        event = parse_envelope(raw, event_id=event_id, max_payload_bytes=max_payload_bytes)
    except EventError as error:
        outcomes[type(error).__name__] += 1
        return None
    outcomes["Event"] += 1
    assert_consistent(event, raw, event_id, max_payload_bytes)
    return event


def test_any_message_parses_to_a_consistent_event_or_raises_an_event_error() -> None:
    outcomes: Counter[str] = Counter()

    @PROPERTIES
    @given(raw=messages, event_id=any_event_ids, max_payload_bytes=payload_limits)
    def parse_anything(raw: bytes | str, event_id: str | None, max_payload_bytes: int) -> None:
        parse_or_refuse(raw, event_id, max_payload_bytes, outcomes)

    parse_anything()
    print(
        f"RELIABILITY: parse_envelope, any message: {sum(outcomes.values())} inputs, {dict(outcomes)}"
    )
    # Only worth something if the inputs reached both ends: events, and each kind of refusal.
    assert outcomes["Event"] >= 30
    assert (
        min(outcomes["InvalidEvent"], outcomes["InvalidEventId"], outcomes["EventTooLarge"]) >= 10
    )


@pytest.mark.parametrize(
    ("field", "value"), DEFECTS, ids=[f"{field}={value[:12]}" for field, value in DEFECTS]
)
@settings(PROPERTIES, max_examples=10)
@given(fields=good_fields, event_id=st.none() | event_ids)
def test_an_envelope_with_one_defect_is_refused(
    field: str, value: str, fields: dict[str, str], event_id: str | None
) -> None:
    assert parse_or_refuse(envelope_text(fields), event_id, 1_000_000, Counter()) is not None
    with pytest.raises(InvalidEvent):
        parse_envelope(
            envelope_text({**fields, field: value}), event_id=event_id, max_payload_bytes=1_000_000
        )


@settings(PROPERTIES, max_examples=100)
@given(fields=good_fields, field_id=any_event_ids.map(json.dumps), event_id=st.none() | event_ids)
def test_an_id_field_in_an_envelope_never_becomes_the_event_id(
    fields: dict[str, str], field_id: str, event_id: str | None
) -> None:
    raw = envelope_text({**fields, "id": field_id})
    event = parse_or_refuse(raw, event_id, 1_000_000, Counter())
    assert event is not None
    assert event.id == event_id


# --- The wire encoder -------------------------------------------------------------------------

# UTF-8 text (no lone surrogates: event data is JSON text, checked to encode), often trying to
# start a field or an event of its own after a line break.
plain_texts = st.text(st.one_of(TRICKY, st.characters(codec="utf-8")), max_size=30)
data_texts = st.one_of(
    plain_texts,
    st.builds(
        "".join,
        st.tuples(
            plain_texts,
            st.sampled_from(["\n", "\r", "\r\n", "\n\n", "\r\r"]),
            st.sampled_from(["data: ", "data:", "id: 1-0", "event: admin", "retry: 1", ":"]),
            plain_texts,
        ),
    ),
)
# Any value without CR, LF or NUL is a legal event type or id; a type must not be empty, which
# would read as "message".
field_texts = st.text(st.one_of(TRICKY, st.characters()).filter(lambda c: c not in "\r\n\0"))
wire_types = st.one_of(st.none(), event_types, field_texts.filter(bool))
wire_ids = st.one_of(st.none(), event_ids, field_texts)


@st.composite
def stream_parts(draw: st.DrawFn) -> tuple[bytes, tuple[str, str | None, str] | None]:
    """The bytes of one part of a stream, and the event a client must read from it (or None)."""
    kind = draw(st.sampled_from(["encode_event", "Event.wire", "comment", "heartbeat"]))
    if kind == "heartbeat":
        return HEARTBEAT, None
    if kind == "comment":
        return encode_comment(draw(data_texts)), None
    data = draw(data_texts)
    event_type: str | None
    if kind == "Event.wire":
        event_type, event_id = draw(event_types), draw(st.none() | event_ids)
        wire = Event(type=event_type, data=data, channel="broadcast", id=event_id).wire
    else:
        event_type, event_id = draw(wire_types), draw(wire_ids)
        wire = encode_event(data, event_type=event_type, event_id=event_id)
    return wire, (event_type or "message", event_id, as_read(data))


def expected_reads(parts: list[tuple[str, str | None, str]]) -> Iterator[tuple[str, str, str]]:
    """An event without an id reads with the last id seen (the spec keeps it for reconnects)."""
    last_id = ""
    for event_type, event_id, data in parts:
        last_id = last_id if event_id is None else event_id
        yield event_type, last_id, data


@PROPERTIES
@given(parts=st.lists(stream_parts(), min_size=1, max_size=6), data=st.data())
def test_encoded_events_and_comments_read_back_as_exactly_those_events(
    parts: list[tuple[bytes, tuple[str, str | None, str] | None]], data: st.DataObject
) -> None:
    wire = b"".join(part for part, _ in parts)
    cuts = data.draw(st.lists(st.integers(0, len(wire)), max_size=8), label="cuts")
    intended = [event for _, event in parts if event is not None]
    assert read_stream(wire, cuts) == list(expected_reads(intended))


@PROPERTIES
@given(text=data_texts)
def test_comments_and_heartbeats_never_dispatch_an_event(text: str) -> None:
    assert read_stream(encode_comment(text) + HEARTBEAT) == []


@PROPERTIES
@given(
    field=st.sampled_from(["event_type", "event_id"]),
    value=st.builds(
        lambda before, breaker, after: before + breaker + after,
        field_texts,
        st.sampled_from(["\r", "\n", "\r\n", "\0"]),
        field_texts,
    ),
)
def test_an_event_type_or_id_with_a_line_break_or_nul_is_refused(field: str, value: str) -> None:
    with pytest.raises(ValueError, match="CR, LF or NUL"):
        encode_event("{}", **{field: value})


# --- Event ids --------------------------------------------------------------------------------

# Digits of any script (Python's int() and \d take them all; Redis only ASCII), id-like shapes
# with other separators, and numbers on both sides of 2**64.
any_digits = st.text(st.sampled_from("0123456789") | st.characters(categories=["Nd"]), max_size=22)
id_like_texts = st.one_of(
    st.builds(
        lambda first, separator, second: f"{first}{separator}{second}",
        any_digits,
        st.sampled_from(["-", "-", "--", " -", "+", "\u2010", "-+"]),
        any_digits,
    ),
    st.builds("{}-{}".format, st.integers(0, 10**20), st.integers(0, 10**20)),
    any_text,
)


def redis_accepts(text: str) -> bool:
    """Whether ``text`` is a stream id as Redis writes them: ASCII digits on each side of one "-",
    each part at most 2**64 - 1 (20 digits; Redis writes no leading zeros)."""
    first, separator, second = text.partition("-")
    parts = (first, second)
    return (
        separator == "-"
        and all(part.isascii() and part.isdigit() and len(part) <= 20 for part in parts)
        and all(int(part) <= MAX_ID_PART for part in parts)
    )


@PROPERTIES
@given(text=id_like_texts)
def test_an_event_id_parses_to_two_64_bit_numbers_only_in_redis_format(text: str) -> None:
    try:
        parts = parse_event_id(text)
    except InvalidEventId:
        assert not redis_accepts(text)
        return
    assert redis_accepts(text)
    assert parts == tuple(int(part) for part in text.split("-"))
    assert all(0 <= part <= MAX_ID_PART for part in parts)


@PROPERTIES
@given(milliseconds=st.integers(0, MAX_ID_PART), sequence=st.integers(0, MAX_ID_PART))
def test_every_id_redis_hands_out_parses_to_its_two_numbers(
    milliseconds: int, sequence: int
) -> None:
    assert parse_event_id(f"{milliseconds}-{sequence}") == (milliseconds, sequence)
