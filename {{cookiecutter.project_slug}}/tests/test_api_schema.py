"""The OpenAPI schema at /api/schema/ is valid, says what a real server answers, and a fuzzer
driven by it gets no server error from the publish endpoint."""

import socket
from collections.abc import Iterator

import httpx
import pytest
import schemathesis
from drf_spectacular.validation import validate_schema
from hypothesis import HealthCheck, given, settings

from .services import Daphne, LiveProject, RedisServer, api, daphne_server, publish

pytestmark = pytest.mark.timeout(180)

# Per minute: room for the calls below, then a 429.
PUBLISH_RATE = 30
STREAM_RATE = 20


@pytest.fixture(scope="module")
def daphne(
    live_project: LiveProject, redis_service: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Daphne]:
    with daphne_server(
        live_project,
        tmp_path_factory.mktemp("schema"),
        REDIS_URL=redis_service.url,
        EVENTS_REDIS_PREFIX="test-schema",
        EVENTS_PUBLIC_TOPICS="news",
        EVENTS_MAX_STREAMS_PER_USER="1",
        EVENTS_PUBLISH_RATE=f"{PUBLISH_RATE}/min",
        EVENTS_STREAM_RATE=f"{STREAM_RATE}/min",
        EVENTS_MAX_PAYLOAD_BYTES="1024",
    ) as server:
        yield server


def schema_of(server: Daphne) -> dict:
    response = httpx.get(f"{server.url}/api/schema/?format=json", timeout=10)
    assert response.status_code == 200, response.text
    return response.json()


def documented_statuses(schema: dict, path: str, method: str) -> set[int]:
    return {int(status) for status in schema["paths"][path][method]["responses"]}


def test_the_schema_is_served_and_valid_openapi(daphne: Daphne) -> None:
    schema = schema_of(daphne)
    validate_schema(schema)  # raises on anything OpenAPI 3.0 does not allow
    assert set(schema["paths"]) == {
        "/api/events/",
        "/api/events/stream/",
        "/api/events/tickets/",
        "/api/events/metrics/",
    }
    stream = schema["paths"]["/api/events/stream/"]["get"]
    assert "text/event-stream" in stream["responses"]["200"]["content"]
    assert {"Last-Event-ID", "topic", "ticket"} <= {p["name"] for p in stream["parameters"]}
    assert "reset" in stream["description"]


def test_the_docs_page_is_for_staff_outside_debug(
    daphne: Daphne, live_project: LiveProject
) -> None:
    assert httpx.get(f"{daphne.url}/api/docs/", timeout=10).status_code in (401, 403)
    with api(daphne, live_project.tokens["staff"]) as staff:
        page = staff.get("/api/docs/")
    assert page.status_code == 200
    assert "swagger-ui" in page.text


def test_every_documented_status_is_one_the_server_answers(
    daphne: Daphne, live_project: LiveProject, tmp_path
) -> None:
    """Each status the schema lists, produced by a real request (and nothing undocumented)."""
    schema = schema_of(daphne)
    seen: dict[tuple[str, str], set[int]] = {}

    def saw(path: str, method: str, response: httpx.Response) -> None:
        seen.setdefault((path, method), set()).add(response.status_code)

    def stream(client: httpx.Client, **params: str) -> None:
        with client.stream("GET", "/api/events/stream/", params=params) as response:
            saw("/api/events/stream/", "get", response)

    with (
        api(daphne, live_project.tokens["staff"]) as staff,
        api(daphne, live_project.tokens["alice"]) as alice,
        httpx.Client(base_url=daphne.url, timeout=10) as anonymous,
    ):
        # The stream: 200 held open while a second one is over the limit (429).
        with staff.stream("GET", "/api/events/stream/") as open_stream:
            saw("/api/events/stream/", "get", open_stream)
            stream(staff)
        stream(staff, topic="a b")
        stream(anonymous)
        stream(alice, topic="sports")
        # Tickets.
        tickets = "/api/events/tickets/"
        for client, body in (
            (staff, {"topics": ["news"]}),
            (staff, {"topics": "news"}),
            (anonymous, {}),
            (alice, {"topics": ["sports"]}),
        ):
            saw(tickets, "post", client.post(tickets, json=body))
        # Metrics.
        for client in (staff, anonymous, alice):
            saw("/api/events/metrics/", "get", client.get("/api/events/metrics/"))
        # Publishing.
        events = "/api/events/"
        key = {"Idempotency-Key": "schema-test"}
        for client, event, headers in (
            (staff, {"type": "one", "data": 1}, key),
            (staff, {"type": "one", "data": 1}, key),
            (staff, {"type": "one", "data": 2}, key),
            (staff, {"type": "bad type", "data": 1}, {}),
            (anonymous, {"type": "one", "data": 1}, {}),
            (alice, {"type": "one", "data": 1}, {}),
            (staff, {"type": "big", "data": "x" * 2000}, {}),
        ):
            saw(events, "post", client.post(events, json=event, headers=headers))
        for _ in range(PUBLISH_RATE):  # over the publish rate
            saw(events, "post", staff.post(events, json={"type": "many", "data": None}))
        for _ in range(STREAM_RATE):  # over the stream rate, which tickets share
            saw(tickets, "post", staff.post(tickets, json={"topics": []}))
    # 503: the same project, its Redis unreachable.
    unused = socket.socket()
    unused.bind(("127.0.0.1", 0))
    with (
        daphne_server(
            live_project,
            tmp_path,
            REDIS_URL=f"redis://127.0.0.1:{unused.getsockname()[1]}/0",
            EVENTS_STREAM_RATE="",
        ) as without_redis,
        api(without_redis, live_project.tokens["staff"]) as staff,
    ):
        saw("/api/events/", "post", staff.post("/api/events/", json={"type": "one", "data": 1}))
    unused.close()

    for (path, method), statuses in seen.items():
        assert statuses == documented_statuses(schema, path, method), (path, method)


def test_a_fuzzer_driven_by_the_schema_gets_no_server_error_from_publishing(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    token = live_project.tokens["staff"]
    statuses: set[int] = set()
    with daphne_server(
        live_project, tmp_path, REDIS_URL=redis_service.url, EVENTS_REDIS_PREFIX="test-fuzz"
    ) as server:
        schema = schemathesis.openapi.from_url(f"{server.url}/api/schema/?format=json")
        operation = schema["/api/events/"]["POST"]

        @settings(
            max_examples=150,
            deadline=None,
            database=None,
            suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
        )
        @given(case=operation.as_strategy())
        def publish_anything(case: schemathesis.Case) -> None:
            response = case.call(base_url=server.url, headers={"Authorization": f"Token {token}"})
            statuses.add(response.status_code)
            assert response.status_code < 500, (response.status_code, response.text)

        publish_anything()
        with api(server, token) as staff:
            publish(staff, "still-publishing")  # and nothing broke
    print(f"RELIABILITY: schema-driven publishes, statuses answered {sorted(statuses)}")
    assert 201 in statuses  # the fuzzer published, not only got refused
