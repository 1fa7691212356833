"""The OpenAPI schema at /api/schema/ is valid, says what a real server answers, and a fuzzer
driven by it finds no answer that breaks it, on any operation."""

import os
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from drf_spectacular.validation import validate_schema

from .services import (
    PROJECT_DIR,
    Daphne,
    LiveProject,
    RedisServer,
    api,
    daphne_server,
    gunicorn_server,
    publish,
)

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


def test_every_refusal_has_the_one_error_shape(daphne: Daphne, live_project: LiveProject) -> None:
    """Whichever step refuses (parser, authentication, negotiation, validation of a nested field,
    a body Twisted would have parsed itself), the answer is JSON: a detail sentence, a code, and
    the fields at fault."""
    # Bob for tickets: the staff user's stream rate is the next test's to spend.
    token = {"Authorization": f"Token {live_project.tokens['bob']}"}
    tickets = f"{daphne.url}/api/events/tickets/"
    staff = {"Authorization": f"Token {live_project.tokens['staff']}"}  # who may publish
    refusals = {
        "empty multipart body": httpx.post(
            tickets,
            content=b"--c637--\r\n",
            headers={**token, "Content-Type": "multipart/form-data; boundary=c637"},
        ),
        "malformed JSON": httpx.post(tickets, content=b"{", headers={**token, **JSON}),
        "no credentials": httpx.post(tickets, json={}),
        "unknown format": httpx.get(f"{daphne.url}/api/events/metrics/?format=yaml", headers=token),
        "empty format": httpx.get(f"{daphne.url}/api/events/metrics/?format=", headers=token),
        "a topic too long": httpx.post(tickets, json={"topics": ["t" * 65]}, headers=token),
        "no data": httpx.post(f"{daphne.url}/api/events/", json={"type": "x"}, headers=staff),
        # Refused by Twisted, before Django: a URL, a header, all headers too long for it.
        "a URL over 16 KiB": httpx.get(
            f"{daphne.url}/api/events/metrics/", params={"x": "x" * 17_000}, headers=token
        ),
        "a header over 16 KiB": httpx.get(
            f"{daphne.url}/api/events/metrics/", headers={**token, "X-Padding": "x" * 17_000}
        ),
        "headers over 16 KiB in all": httpx.get(
            f"{daphne.url}/api/events/metrics/",
            headers={**token, **{f"X-Padding-{n}": "x" * 1_000 for n in range(20)}},
        ),
    }
    for name, response in refusals.items():
        assert 400 <= response.status_code < 500, (name, response.status_code)
        assert response.headers["content-type"] == "application/json", name
        body = response.json()
        assert set(body) <= {"detail", "code", "errors"}, (name, body)
        assert body["detail"].strip(), (name, body)
        assert body["code"].strip(), (name, body)
        print(f"RELIABILITY: {name}: {response.status_code} {body}")
    assert refusals["empty multipart body"].status_code == 415
    assert refusals["unknown format"].status_code == 406
    assert refusals["empty format"].status_code == 406
    assert refusals["a URL over 16 KiB"].status_code == 414
    assert refusals["a header over 16 KiB"].status_code == 431
    assert refusals["headers over 16 KiB in all"].status_code == 400
    assert refusals["a topic too long"].json()["errors"] == {
        "topics.0": ["Ensure this field has no more than 64 characters."]
    }
    assert refusals["no data"].json() == {
        "detail": "data: This field is required.",
        "code": "invalid",
        "errors": {"data": ["This field is required."]},
    }


def test_every_documented_status_is_one_the_server_answers(
    daphne: Daphne, live_project: LiveProject, tmp_path
) -> None:
    """Each status the schema lists, produced by a real request (and nothing undocumented)."""
    schema = schema_of(daphne)
    seen: dict[tuple[str, str], set[int]] = {}

    def saw(path: str, method: str, response: httpx.Response) -> None:
        seen.setdefault((path, method), set()).add(response.status_code)

    def stream(client: httpx.Client, headers: dict[str, str] | None = None, **params: str) -> None:
        with client.stream(
            "GET", "/api/events/stream/", params=params, headers=headers
        ) as response:
            saw("/api/events/stream/", "get", response)

    xml = {"Accept": "application/xml"}  # a format no operation answers: 406
    long_url = {"padding": "x" * 17_000}  # a request line over Twisted's 16 KiB: 414
    long_header = {"X-Padding": "x" * 17_000}  # a header line over it: 431
    form = {"Content-Type": "application/x-www-form-urlencoded"}  # a body they do not take: 415
    too_large = b"[" + b"0," * 2_000_000 + b"0]"  # over DATA_UPLOAD_MAX_MEMORY_SIZE: 413

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
        stream(staff, headers=xml)
        stream(staff, padding=long_url["padding"])
        stream(staff, headers=long_header)
        # Tickets.
        tickets = "/api/events/tickets/"
        for client, body in (
            (staff, {"topics": ["news"]}),
            (staff, {"topics": "news"}),
            (anonymous, {}),
            (alice, {"topics": ["sports"]}),
        ):
            saw(tickets, "post", client.post(tickets, json=body))
        saw(tickets, "post", staff.post(tickets, json={}, headers=xml))
        saw(tickets, "post", staff.post(tickets, content=b"topics=news", headers=form))
        saw(tickets, "post", staff.post(tickets, content=too_large, headers=JSON))
        saw(tickets, "post", staff.post(tickets, json={}, params=long_url))
        saw(tickets, "post", staff.post(tickets, json={}, headers=long_header))
        # Metrics.
        for client in (staff, anonymous, alice):
            saw("/api/events/metrics/", "get", client.get("/api/events/metrics/"))
        saw("/api/events/metrics/", "get", staff.get("/api/events/metrics/", headers=xml))
        saw("/api/events/metrics/", "get", staff.get("/api/events/metrics/", params=long_url))
        metrics = staff.get("/api/events/metrics/", headers=long_header)
        saw("/api/events/metrics/", "get", metrics)
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
            (staff, {"type": "one", "data": 1}, xml),
        ):
            saw(events, "post", client.post(events, json=event, headers=headers))
        saw(events, "post", staff.post(events, content=b"type=one&data=1", headers=form))
        saw(events, "post", staff.post(events, json={}, params=long_url))
        saw(events, "post", staff.post(events, json={}, headers=long_header))
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


JSON = {"Content-Type": "application/json"}


# The fuzzer's own settings: what it may see refused although the request was valid.
FUZZ_CONFIG = Path(__file__).with_name("schemathesis.toml")
# The same cases every time, ten times as many in the proof (`make proofs`) as in the suite.
FUZZ_SEED = 2026


@pytest.mark.parametrize(
    "examples",
    [
        pytest.param(20, id="fixed-seed"),
        pytest.param(200, id="large", marks=[pytest.mark.proof, pytest.mark.timeout(1800)]),
    ],
)
def test_schemathesis_finds_no_failure_on_any_operation(
    examples: int, live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> None:
    """Every operation, every check (status codes, content types, headers and bodies against the
    schema, valid requests accepted, invalid ones refused, methods, authentication), and the
    stateful run the schema's links allow (a ticket issued, then its stream opened). Against
    Daphne, and against gunicorn too in a bake that serves the API with it."""
    settings = {
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": "test-fuzz",
        # Every topic readable and no rate: requests get past the refusals that other tests
        # prove, to what is behind them. Streams end at once (the fuzzer reads them whole).
        "EVENTS_PUBLIC_TOPICS": "*",
        "EVENTS_STREAM_RATE": "",
        "EVENTS_PUBLISH_RATE": "",
        "EVENTS_MAX_STREAMS_PER_USER": "0",
        "EVENTS_STREAM_MAX_SECONDS": "0.2",
    }
    seed = FUZZ_SEED + examples
    (tmp_path / "daphne").mkdir()
    with daphne_server(live_project, tmp_path / "daphne", **settings) as daphne:
        fuzz(daphne.url, live_project, tmp_path / "daphne", seed, examples)
        with api(daphne, live_project.tokens["staff"]) as staff:
            publish(staff, "still-publishing")  # and nothing broke
    if (PROJECT_DIR / "gunicorn.conf.py").exists():
        with gunicorn_server(live_project, tmp_path / "gunicorn", **settings) as url:
            # The stream is Daphne's in this topology (nginx routes it there).
            fuzz(url, live_project, tmp_path / "gunicorn", seed, examples, "/api/events/stream/")


def fuzz(
    url: str,
    live_project: LiveProject,
    directory: Path,
    seed: int,
    examples: int,
    *excluded_paths: str,
) -> None:
    schema = directory / "schema.json"
    response = httpx.get(f"{url}/api/schema/?format=json", timeout=10)
    assert response.status_code == 200, response.text
    schema.write_bytes(response.content)
    excluded = [argument for path in excluded_paths for argument in ("--exclude-path", path)]
    if excluded_paths:  # the stream's link cannot be followed
        excluded += ["--phases", "examples,coverage,fuzzing"]
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "schemathesis.cli",
            "--config-file",
            str(FUZZ_CONFIG),
            "run",
            str(schema),
            "--url",
            url,
            "--header",
            f"Authorization: Token {live_project.tokens['staff']}",
            "--checks",
            "all",
            # Replaced by valid_requests_accepted (schema_fuzzing.py).
            "--exclude-checks",
            "positive_data_acceptance",
            "--seed",
            str(seed),
            "--max-examples",
            str(examples),
            "--workers",
            "1",
            *excluded,
        ],
        env={
            **os.environ,
            "SCHEMATHESIS_HOOKS": "tests.schema_fuzzing",
            "FUZZ_USER_KEY": live_project.tokens["alice_pk"],
            "NO_COLOR": "1",
        },
        cwd=PROJECT_DIR,
        capture_output=True,
        text=True,
        timeout=1500,
    )
    summary = result.stdout[result.stdout.rfind("Test cases:") :].strip()
    print(f"RELIABILITY: schemathesis against {url}, seed {seed}: {summary}")
    assert result.returncode == 0, result.stdout[-20_000:] + result.stderr[-5_000:]
    if not excluded_paths:  # the ticket's link to the stream was followed
        assert "Stateful (not applicable)" not in result.stdout, result.stdout[-5_000:]
