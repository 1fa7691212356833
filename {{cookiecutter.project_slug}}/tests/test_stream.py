"""The event stream as a client sees it, over real HTTP, on both brokers."""

import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from .services import Daphne, LiveProject, api, daphne_server, publish
from .sse import Message, open_stream

pytestmark = pytest.mark.timeout(60)


@pytest.fixture
def alice(server: Daphne, live_project: LiveProject) -> Iterator[httpx.Client]:
    with api(server, live_project.tokens["alice"]) as client:
        yield client


@pytest.fixture
def bob(server: Daphne, live_project: LiveProject) -> Iterator[httpx.Client]:
    with api(server, live_project.tokens["bob"]) as client:
        yield client


@pytest.fixture
def publisher(server: Daphne, live_project: LiveProject) -> Iterator[httpx.Client]:
    with api(server, live_project.tokens["staff"]) as client:
        yield client


def publish_soon(publisher: httpx.Client, *events: tuple[str, dict]) -> threading.Thread:
    """Publish after the caller has started reading its stream."""

    def run() -> None:
        time.sleep(0.3)
        for event_type, fields in events:
            publish(publisher, event_type, **fields)

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_unauthenticated_client_gets_401_json(server: Daphne) -> None:
    response = httpx.get(
        f"{server.url}/api/events/stream/", headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 401
    assert response.headers["content-type"] == "application/json"
    assert response.json()["detail"] == "Authentication credentials were not provided."


def test_bad_token_gets_401_json(server: Daphne) -> None:
    with api(server, "not-a-token") as client:
        response = client.get("/api/events/stream/", headers={"Accept": "text/event-stream"})
    assert response.status_code == 401
    assert response.json()["detail"] == "Invalid token."


def test_stream_starts_with_retry_and_headers_that_disable_caching_and_buffering(
    alice: httpx.Client,
) -> None:
    with open_stream(alice) as stream:
        first, second = stream.take_all(2)
        headers = stream.response.headers
    assert first.retry == 3000
    assert second.comment == "connected"
    assert headers["cache-control"] == "no-cache"
    assert headers["x-accel-buffering"] == "no"


def test_heartbeats_are_comments_never_events(alice: httpx.Client) -> None:
    with open_stream(alice) as stream:
        messages = stream.take_all(5)
    assert [m.comment for m in messages[2:]] == ["ping", "ping", "ping"]
    assert all(m.event == "" for m in messages)


def test_private_events_reach_only_their_user(
    alice: httpx.Client, bob: httpx.Client, publisher: httpx.Client, live_project: LiveProject
) -> None:
    alice_pk, bob_pk = live_project.tokens["alice_pk"], live_project.tokens["bob_pk"]
    with open_stream(alice) as alice_stream, open_stream(bob) as bob_stream:
        publish_soon(
            publisher,
            ("secret", {"data": "for alice", "user": alice_pk}),
            ("secret", {"data": "for bob", "user": bob_pk}),
            ("everyone", {"data": "all"}),
        ).join()
        alice_sees = alice_stream.take(2)
        bob_sees = bob_stream.take(2)
    assert [(m.event, m.data) for m in alice_sees] == [
        ("secret", '"for alice"'),
        ("everyone", '"all"'),
    ]
    assert [(m.event, m.data) for m in bob_sees] == [("secret", '"for bob"'), ("everyone", '"all"')]


def test_topics_reach_only_their_subscribers(
    alice: httpx.Client, bob: httpx.Client, publisher: httpx.Client
) -> None:
    with open_stream(alice, topics=("news",)) as alice_stream, open_stream(bob) as bob_stream:
        publish_soon(
            publisher, ("headline", {"data": 1, "topic": "news"}), ("done", {"data": 2})
        ).join()
        assert [m.event for m in alice_stream.take(2)] == ["headline", "done"]
        assert [m.event for m in bob_stream.take(1)] == ["done"]


def test_events_carry_ids_in_publish_order(alice: httpx.Client, publisher: httpx.Client) -> None:
    with open_stream(alice) as stream:
        thread = threading.Thread(
            target=lambda: [publish(publisher, "count", n) for n in range(20)]
        )
        thread.start()
        received = stream.take(20)
        thread.join()
    assert [m.data for m in received] == [str(n) for n in range(20)]
    ids = [tuple(map(int, (m.id or "").split("-"))) for m in received]
    assert ids == sorted(ids)
    assert len(set(ids)) == 20


def test_staff_topics_are_forbidden_to_other_users(
    alice: httpx.Client, server: Daphne, live_project
) -> None:
    response = alice.get(
        "/api/events/stream/",
        params={"topic": ["news", "staff.alerts"]},
        headers={"Accept": "text/event-stream"},
    )
    assert response.status_code == 403
    assert response.json()["detail"] == "You may not read topic(s): staff.alerts."
    with (
        api(server, live_project.tokens["staff"]) as staff,
        open_stream(staff, topics=("staff.alerts",)) as stream,
    ):
        assert stream.take_all(1)[0].retry == 3000


@pytest.mark.parametrize(
    ("params", "field"),
    [
        ({"topic": [f"t{n}" for n in range(17)]}, "topic"),
        ({"topic": "bad\ntopic"}, "topic"),
        ({"last_event_id": "yesterday"}, "last_event_id"),
    ],
)
def test_bad_stream_parameters_get_400_naming_the_field(
    alice: httpx.Client, params: dict, field: str
) -> None:
    response = alice.get(
        "/api/events/stream/", params=params, headers={"Accept": "text/event-stream"}
    )
    assert response.status_code == 400
    assert field in response.json()["errors"]


@pytest.mark.parametrize(
    "last_event_id",
    [
        "12",
        # Each of these once passed the view's check and failed in Redis after the response had
        # started: the request hung and Daphne stopped its housekeeping.
        "\u0661\u0662-0",  # Arabic-Indic digits: digits to Python, not to Redis
        "18446744073709551616-0",  # 2**64: past Redis's 64-bit parts
        "1-18446744073709551616",
    ],
)
def test_bad_last_event_id_header_gets_400(alice: httpx.Client, last_event_id: str) -> None:
    response = alice.get(
        "/api/events/stream/",
        # Bytes: ids with characters outside ASCII go out as their UTF-8 bytes.
        headers={b"Accept": b"text/event-stream", b"Last-Event-ID": last_event_id.encode()},
    )
    assert response.status_code == 400
    assert "Last-Event-ID" in response.json()["errors"]


def test_the_largest_valid_last_event_id_gets_a_reset_not_an_error(alice: httpx.Client) -> None:
    largest = f"{2**64 - 1}-{2**64 - 1}"
    with open_stream(alice, last_event_id=largest) as stream:
        [reset] = stream.take(1)
    assert reset.event == "reset"


def test_publishing_needs_the_publish_permission(alice: httpx.Client) -> None:
    response = alice.post("/api/events/", json={"type": "x", "data": 1})
    assert response.status_code == 403
    assert "events.publish_event" in response.json()["detail"]


@pytest.mark.parametrize(
    "body",
    [
        {"type": "evil\nevent: admin", "data": 1},
        {"type": "reset", "data": 1},
        {"type": "note", "data": 1, "topic": "a b"},
        {"type": "note", "data": 1, "user": 1, "topic": "news"},
        {"type": "note", "data": 1, "user": 999999},
        {"type": "note"},
    ],
)
def test_invalid_publish_gets_400_and_publishes_nothing(
    publisher: httpx.Client, alice: httpx.Client, body: dict
) -> None:
    with open_stream(alice) as stream:
        response = publisher.post("/api/events/", json=body)
        assert response.status_code == 400, response.text
        marker = publish(publisher, "marker")
        [first] = stream.take(1)
    assert (first.event, first.id) == ("marker", marker)


def test_oversize_publish_gets_413_with_the_limit(publisher: httpx.Client) -> None:
    response = publisher.post("/api/events/", json={"type": "big", "data": "x" * 70_000})
    assert response.status_code == 413
    assert "limit is 65536 bytes" in response.json()["detail"]


def test_cross_origin_streams_only_for_allow_listed_origins(
    live_project: LiveProject, broker_settings: dict, tmp_path
) -> None:
    allowed = "https://app.example.com"
    with (
        daphne_server(
            live_project, tmp_path, EVENTS_CORS_ALLOWED_ORIGINS=allowed, **broker_settings
        ) as daphne,
        api(daphne, live_project.tokens["alice"]) as client,
    ):
        with open_stream(client, origin=allowed) as stream:
            headers = stream.response.headers
        assert headers["access-control-allow-origin"] == allowed
        assert headers["access-control-allow-credentials"] == "true"
        with open_stream(client, origin="https://evil.example.com") as stream:
            assert "access-control-allow-origin" not in stream.response.headers


def test_stream_ends_after_its_maximum_lifetime(
    live_project: LiveProject, broker_settings: dict, tmp_path
) -> None:
    with (
        daphne_server(
            live_project, tmp_path, EVENTS_STREAM_MAX_SECONDS="1", **broker_settings
        ) as daphne,
        api(daphne, live_project.tokens["alice"]) as client,
    ):
        started = time.monotonic()
        with open_stream(client, read_timeout=5) as stream:
            messages: list[Message] = list(stream)
        lasted = time.monotonic() - started
    assert messages[0].retry == 3000
    assert 0.5 < lasted < 5
