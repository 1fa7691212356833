"""A stream's position in the partitions of history: what it sends as ids and resumes from."""

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ..api.schema import _EVENT_ID_SCHEMA
from ..core.positions import MAX_PARTITIONS, Position, partition_of
from ..exceptions import InvalidEventId

ids = st.builds(lambda ms, seq: f"{ms}-{seq}", st.integers(0, 2**64 - 1), st.integers(0, 2**64 - 1))


def test_one_partition_keeps_the_plain_id() -> None:
    position = Position.parse("1732450000000-3", 1)
    assert position.format() == "1732450000000-3"
    assert position.after(0) == "1732450000000-3"
    assert not position.lost


@given(
    partitions=st.integers(2, MAX_PARTITIONS),
    entries=st.dictionaries(st.integers(0, MAX_PARTITIONS - 1), ids, min_size=1, max_size=18),
)
def test_a_position_reads_back_as_it_was_written(partitions: int, entries: dict) -> None:
    entries = {partition % partitions: event_id for partition, event_id in entries.items()}
    written = Position(partitions, entries).format()
    assert len(written) <= 1024
    assert set(written) <= set("p0123456789-_.")  # nothing a URL or a header must escape
    assert Position.parse(written, partitions) == Position(partitions, entries)


def test_a_position_names_only_the_partitions_the_stream_reads() -> None:
    position = Position(16, {3: "5-0", 7: "9-1", 12: "2-2"})
    assert position.format(reading=[12, 3]) == "p16.3_5-0.12_2-2"


@pytest.mark.parametrize(
    ("text", "partitions"),
    [
        ("p16.3_5-0", 8),  # another EVENTS_PARTITIONS
        ("5-0", 16),  # written with one partition, read with several
        ("p16.3_5-0", 1),  # the other way round
        ("p16.16_5-0", 16),  # a partition it cannot have
        ("p16.3_5-0.3_6-0", 16),  # a partition named twice
    ],
)
def test_a_position_of_another_layout_is_lost_not_refused(text: str, partitions: int) -> None:
    position = Position.parse(text, partitions)
    assert position.lost
    assert position.after(0) is None


TOO_LONG = "p16." + ".".join("3_1-0" for _ in range(400))


@pytest.mark.parametrize(
    "text",
    [
        *("", "p16", "p16.", "p16.3-5-0", "p16.3_5", "p16.x_5-0", "p.3_5-0"),
        *("q16.3_5-0", "p16.3_18446744073709551616-0", TOO_LONG),
    ],
)
def test_a_malformed_position_is_refused(text: str) -> None:
    with pytest.raises(InvalidEventId):
        Position.parse(text, 16)


def test_a_position_moves_forward_only_in_each_partition() -> None:
    position = Position(16, {3: "5-0"})
    assert not position.advance(3, "4-9")
    assert position.advance(3, "5-1")
    assert position.advance(7, "1-0")  # a partition it did not name: any event is new
    assert position.format() == "p16.3_5-1.7_1-0"
    assert not position.is_new(3, (5, 1))
    assert position.is_new(3, (5, 2))


def test_channels_map_to_the_same_partition_in_every_process() -> None:
    # CRC-32, not Python's hash(), which is salted per process.
    assert partition_of("topic.news", 16) == 10
    assert {partition_of(f"topic.t{n}", 16) for n in range(200)} == set(range(16))


@given(
    st.from_regex(str(_EVENT_ID_SCHEMA["pattern"]), fullmatch=True).filter(
        lambda text: len(text) <= 2048  # the schema's maxLength
    ),
    st.sampled_from([1, 16]),
)
def test_every_id_the_api_schema_allows_is_read_not_refused(text: str, partitions: int) -> None:
    """The schema is what clients (and schemathesis) are told: an id it allows is never a 400;
    one the server did not write for this layout starts the stream with a reset."""
    assert _EVENT_ID_SCHEMA["maxLength"] == 2048  # as filtered above
    Position.parse(text, partitions)
