"""Bodies the publish API cannot accept, over real HTTP against Daphne, on both brokers.

Each must get a 4xx with a JSON reason a publisher can act on, never a 500 (a traceback in the
log and a client left guessing), and must publish nothing: a stream opened before the request
receives only a marker published after it.
"""

import json
from collections import Counter
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from .services import Daphne, LiveProject, api, publish
from .sse import open_stream

pytestmark = pytest.mark.timeout(60)

JSON = "application/json"
# Django's default DATA_UPLOAD_MAX_MEMORY_SIZE (2.5 MiB), which the project keeps.
DATA_UPLOAD_MAX_MEMORY_SIZE = 2_621_440


@dataclass(frozen=True)
class Case:
    name: str
    body: bytes
    status: int
    # Where the reason is: "detail", a field name or "non_field_errors"; and a phrase it contains.
    key: str
    phrase: str
    content_type: str | None = JSON

    def __str__(self) -> str:
        return self.name


def object_text(pairs: Iterable[tuple[str, str]]) -> str:
    """A JSON object from values given as JSON text, so that any text can go in, valid or not."""
    return "{" + ",".join(f"{json.dumps(name)}:{value}" for name, value in pairs) + "}"


def envelope(**fields: str) -> bytes:
    return object_text(fields.items()).encode()


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


# Replaced by alice's primary key: bodies addressed to her reach the stream that watches for leaks.
ALICE = "<alice>"
CASES = [
    Case("deep-100", nested(100).encode(), 400, "detail", "nested deeper than 64"),
    Case("deep-1000-data", envelope(type='"x"', data=nested(1_000)), 400, "detail", "nested"),
    Case("deep-100000-open", b"[" * 100_000, 400, "detail", "nested deeper than 64"),
    Case("deep-100000-data", envelope(type='"x"', data=nested(100_000)), 400, "detail", "nested"),
    Case("surrogate-data", envelope(type='"x"', data=r'"\ud800"'), 400, "detail", "UTF-8"),
    Case("surrogate-key", envelope(type='"x"', data=r'{"\udfff":1}'), 400, "detail", "UTF-8"),
    Case("surrogate-type", envelope(type=r'"a\ud800"', data="1"), 400, "type", "Surrogate"),
    Case(
        "surrogate-topic",
        envelope(type='"x"', data="1", topic=r'"\ud800"'),
        400,
        "topic",
        "Surrogate",
    ),
    Case("invalid-utf8", b'{"type":"x","data":"\xff\xfe"}', 400, "detail", "utf-8"),
    Case("nan", envelope(type='"x"', data="NaN"), 400, "detail", "NaN"),
    Case("infinity", envelope(type='"x"', data="-Infinity"), 400, "detail", "Infinity"),
    Case("array", b"[1, 2]", 400, "non_field_errors", "Expected a dictionary"),
    Case("string", b'"note"', 400, "non_field_errors", "Expected a dictionary"),
    Case("null", b"null", 400, "non_field_errors", "No data"),
    Case("empty", b"", 400, "data", "required"),
    Case("1e999-data", envelope(type='"x"', data="1e999"), 400, "data", "JSON"),
    Case("1e999-user", envelope(type='"x"', data="1", user="1e999"), 400, "user", ""),
    Case("-1e999-user", envelope(type='"x"', data="1", user="-1e999"), 400, "user", ""),
    Case("huge-int-user", envelope(type='"x"', data="1", user="9" * 40), 400, "user", "not exist"),
    Case(
        "5000-digit-user",
        envelope(type='"x"', data="1", user="9" * 5_000),
        400,
        "detail",
        "digits",
    ),
    # A float primary key must not be truncated to another user's (1.5 -> 1).
    Case("float-user", envelope(type='"x"', data="1", user=f"{ALICE}.5"), 400, "user", ""),
    Case("list-user", envelope(type='"x"', data="1", user=f"[{ALICE}]"), 400, "user", "type"),
    Case("bool-user", envelope(type='"x"', data="1", user="true"), 400, "user", "type"),
    Case(
        "newline-topic",
        envelope(type='"x"', data="1", topic=r'"news\nx"'),
        400,
        "topic",
        "Invalid topic",
    ),
    # Not silently published to "news" / as "note": the name asked for is not a valid one.
    Case(
        "trailing-newline-topic",
        envelope(type='"x"', data="1", topic=r'"news\n"'),
        400,
        "topic",
        "Invalid topic",
    ),
    Case("trailing-newline-type", envelope(type=r'"note\n"', data="1"), 400, "type", "Invalid"),
    Case("reset-type", envelope(type='"reset"', data="1"), 400, "type", "reserved"),
    Case("list-type", envelope(type='["note"]', data="1"), 400, "type", "string"),
    Case(
        "over-payload-limit",
        envelope(type='"x"', data=json.dumps("x" * 1_000_000)),
        413,
        "detail",
        "limit is 65536 bytes",
    ),
    Case(
        "over-upload-limit",
        envelope(type='"x"', data=json.dumps("x" * (DATA_UPLOAD_MAX_MEMORY_SIZE + 1))),
        413,
        "detail",
        "",
    ),
    Case(
        "text-plain",
        envelope(type='"x"', data="1"),
        415,
        "detail",
        "Unsupported media type",
        "text/plain",
    ),
    Case(
        "form",
        b"type=x&data=1",
        415,
        "detail",
        "Unsupported media type",
        "application/x-www-form-urlencoded",
    ),
    Case("no-content-type", envelope(type='"x"', data="1"), 415, "detail", "Unsupported", None),
    Case(
        "rot13-charset",
        envelope(type='"x"', data="1"),
        400,
        "detail",
        "Unsupported charset",
        "application/json; charset=rot13",
    ),
]


@pytest.fixture
def alice(server: Daphne, live_project: LiveProject) -> Iterator[httpx.Client]:
    with api(server, live_project.tokens["alice"]) as client:
        yield client


@pytest.fixture
def publisher(server: Daphne, live_project: LiveProject) -> Iterator[httpx.Client]:
    with api(server, live_project.tokens["staff"]) as client:
        yield client


def post(
    server: Daphne, client: httpx.Client, body: bytes, content_type: str | None
) -> httpx.Response:
    """POST ``body``; fails with the server's traceback if answering it logged one."""
    logged_before = len(server.log())
    headers = {} if content_type is None else {"Content-Type": content_type}
    response = client.post("/api/events/", content=body, headers=headers)
    logged = server.log()[logged_before:]
    assert "Traceback" not in logged, f"{response.status_code} with a traceback:\n{logged}"
    assert response.status_code < 500, response.text
    return response


def reasons(response: httpx.Response) -> dict[str, str]:
    """The error's reasons as {"detail" or a field: message}, from the API's one error shape."""
    assert response.headers["content-type"] == JSON, response.text[:300]
    body = response.json()
    assert set(body) <= {"detail", "code", "errors"}, body
    fields = {field: " ".join(messages) for field, messages in body.get("errors", {}).items()}
    return {"detail": body["detail"], **fields}


@pytest.mark.parametrize("case", CASES, ids=str)
def test_an_unacceptable_body_gets_a_4xx_with_a_reason_and_publishes_nothing(
    case: Case,
    server: Daphne,
    live_project: LiveProject,
    alice: httpx.Client,
    publisher: httpx.Client,
) -> None:
    body = case.body.replace(ALICE.encode(), live_project.tokens["alice_pk"].encode())
    # The stream hears everything the bad bodies could reach: broadcasts, alice, topic "news".
    with open_stream(alice, topics=("news",)) as stream:
        response = post(server, publisher, body, case.content_type)
        marker = publish(publisher, "marker")
        [first] = stream.take(1)
    assert (first.event, first.id) == ("marker", marker), f"{case} published {first}"
    assert response.status_code == case.status, response.text[:300]
    found = reasons(response)
    assert case.key in found, found
    assert found[case.key].strip(), found
    assert case.phrase in found[case.key], found
    print(
        f"RELIABILITY: publish body {case} ({len(body)} bytes): {response.status_code} "
        f"{found[case.key][:80]!r}"
    )


# --- Schema-free fuzzing ------------------------------------------------------------------------

# JSON text that a JSON serializer never writes but a client can send.
ODD_LITERALS = ["NaN", "Infinity", "1e999", "-1e999", "9" * 5_000, r'"\ud800"', r'"\u0000"', "-0"]
FIELDS = ["type", "data", "user", "topic", "id"]

scalars = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False),
    st.text(max_size=20),
).map(json.dumps) | st.sampled_from(ODD_LITERALS)
values = st.recursive(
    scalars,
    lambda children: st.one_of(
        st.lists(children, max_size=3).map(lambda items: f"[{','.join(items)}]"),
        st.lists(st.tuples(st.text(max_size=5), children), max_size=3).map(object_text),
    ),
    max_leaves=8,
)
# Objects with the API's fields (and others), each holding anything, sometimes nested too deep.
json_objects = st.lists(
    st.tuples(
        st.sampled_from(FIELDS) | st.text(max_size=5),
        values | st.sampled_from([nested(70), nested(5_000)]),
    ),
    max_size=5,
).map(object_text)
# Valid events with up to two fields replaced by anything, so that bodies get past the parser and
# the serializer too.
NAME = r"[a-z][a-z0-9_.:-]{0,8}"
valid_events = st.fixed_dictionaries(
    {
        "type": st.from_regex(NAME, fullmatch=True).map(json.dumps),
        "data": st.one_of(st.none(), st.integers(), st.text(max_size=10)).map(json.dumps),
    },
    optional={"topic": st.from_regex(NAME, fullmatch=True).map(json.dumps)},
)
near_valid_objects = st.builds(
    lambda fields, replaced: object_text({**fields, **dict(replaced)}.items()),
    valid_events,
    st.lists(
        st.tuples(
            st.sampled_from(FIELDS),
            values | st.sampled_from(["1", '"1"', "1.0", "1e999", r'"news\n"', r'" note"']),
        ),
        max_size=2,
    ),
)
bodies = st.one_of(
    near_valid_objects.map(str.encode),
    json_objects.map(str.encode),
    values.map(str.encode),
    st.binary(max_size=100),
)


def test_no_body_makes_the_server_fail(server: Daphne, live_project: LiveProject) -> None:
    """Whatever the body, the answer is never a 5xx and is JSON; the log shows no traceback."""
    statuses: Counter[int] = Counter()
    with api(server, live_project.tokens["staff"]) as client:

        @settings(
            derandomize=True,
            database=None,
            max_examples=50,
            deadline=None,
            suppress_health_check=[HealthCheck.too_slow],
        )
        @given(body=bodies)
        def post_anything(body: bytes) -> None:
            response = post(server, client, body, JSON)
            statuses[response.status_code] += 1
            if response.status_code >= 400:
                reasons(response)

        post_anything()
    print(
        f"RELIABILITY: fuzzed publish bodies: {sum(statuses.values())}, statuses {dict(statuses)}"
    )
    # Some bodies were events: the fuzzing reached past the parser and the serializer.
    assert statuses[201] >= 5
