"""The generated project behind nginx, as deployed, on loopback: no containers needed.

For each HTTP topology, nginx (rendered from the generated template) proxies to two Daphne
processes (and to gunicorn for everything but the streams, in daphne+gunicorn), sharing one Redis:

- a browser receives events published through the API, each in well under a second (nginx does
  not buffer the stream);
- an event published through one Daphne reaches a client of the other;
- a browser whose Daphne stops reconnects through nginx to the other one and receives every
  event published while it was away;
- over https, ten pages of one browser stream at once from one origin, over HTTP/2 (HTTP/1.1
  would leave the seventh waiting for one of six connections), and an event published once
  reaches all ten; Django alone sends Strict-Transport-Security, once, and only over https.

And, with four Daphne processes behind nginx: 4,000 streams spread over the four, and one event
published once reaches every one of them (the figures are printed, not asserted).
"""

import asyncio
import json
import resource
import shutil
import ssl
import statistics
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from .helpers import project_python
from .topology.browser import arrival_ms, chromium, log_in, record_arrivals
from .topology.crowd import Crowd
from .topology.processes import Server
from .topology.sse import open_stream
from .topology.stack import (
    HSTS_SECONDS,
    PASSWORD,
    RETRY_MILLISECONDS,
    USERNAME,
    Stack,
    loopback_stack,
)

pytestmark = [pytest.mark.slow, pytest.mark.timeout(600)]

# Functional, not a benchmark: a buffering proxy holds a small event until its buffer fills
# (never, for a quiet stream), while a passing one forwards it within milliseconds.
MAX_LATENCY_MS = 1000
LATENCY_SAMPLES = 5
EXPECT_TIMEOUT_MS = 10_000


@pytest.fixture(scope="module", params=["daphne", "daphne+gunicorn"])
def stack(
    request: pytest.FixtureRequest,
    baked,
    redis_server: str,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[Stack]:
    topology = request.param
    directory = tmp_path_factory.mktemp(f"topology-{topology.replace('+', '-')}")
    # A copy: running the project writes bytecode, and bakes are shared by other tests.
    project = Path(shutil.copytree(baked(http_topology=topology), directory / "project"))
    python = project_python(project)
    with loopback_stack(project, python, topology, redis_server, directory) as running:
        yield running


@pytest.fixture(scope="module")
def browser() -> Iterator[Browser]:
    with chromium() as launched:
        yield launched


@pytest.fixture
def page(browser: Browser, stack: Stack) -> Iterator[Page]:
    """The demo page, logged in through nginx, its stream open; closed after the test."""
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    context = browser.new_context()
    try:
        demo = context.new_page()
        log_in(demo, stack.url, USERNAME, PASSWORD)
        expect(demo.locator("#status")).to_have_attribute("data-state", "open")
        record_arrivals(demo)
        yield demo
    finally:
        context.close()


def publish(base_url: str, stack: Stack, data: object) -> str:
    """Publish a "notice" to everyone through the server at ``base_url``; returns its id."""
    response = httpx.post(
        f"{base_url}/api/events/",
        json={"type": "notice", "data": data},
        headers=stack.auth,
        timeout=10,
    )
    assert response.status_code == 201, response.text
    return response.json()["id"]


def publish_until_shown(page: Page, stack: Stack) -> str:
    """Publish until the page shows an event; returns the id of the one shown.

    The page reports "open" as soon as its response starts, which may be a moment before the
    server has subscribed it to events: one published in between never reaches it.
    """
    deadline = time.monotonic() + 10
    while True:
        event_id = publish(stack.url, stack, {"step": "first"})
        try:
            arrival_ms(page, event_id, timeout_ms=500)
            return event_id
        except PlaywrightTimeoutError:
            if time.monotonic() > deadline:
                raise


def open_streams(server: Server, stack: Stack) -> int:
    response = httpx.get(f"{server.url}/api/events/metrics/", headers=stack.auth, timeout=10)
    assert response.status_code == 200, response.text
    return response.json()["streams"]


def serving_daphne(stack: Stack) -> Server:
    """The Daphne holding the only open stream (closed streams take a moment to be counted out)."""
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        counts = [open_streams(daphne, stack) for daphne in stack.daphnes]
        if sorted(counts) == [0, 1]:
            return stack.daphnes[counts.index(1)]
        time.sleep(0.1)
    raise AssertionError(f"expected one open stream on one Daphne, got {counts}")


def test_browser_receives_events_through_nginx_in_well_under_a_second(
    stack: Stack, page: Page
) -> None:
    publish_until_shown(page, stack)
    latencies = []
    for n in range(LATENCY_SAMPLES):
        published_ms = time.time() * 1000
        event_id = publish(stack.url, stack, {"n": n})
        latencies.append(arrival_ms(page, event_id, timeout_ms=5000) - published_ms)
    print(f"publish -> shown through nginx, ms: {[round(ms) for ms in latencies]}")
    assert max(latencies) < MAX_LATENCY_MS, latencies
    newest = page.locator("#events li").first
    expect(newest.locator(".type")).to_have_text("notice")
    expect(newest.locator(".data")).to_have_text(f'{{\n  "n": {LATENCY_SAMPLES - 1}\n}}')


def test_an_event_published_through_one_daphne_reaches_a_client_of_the_other(
    stack: Stack,
) -> None:
    first, second = stack.daphnes
    for reader, writer in [(first, second), (second, first)]:
        with open_stream(reader.url, stack.auth) as events:
            data = {"from": writer.name, "to": reader.name}
            event_id = publish(writer.url, stack, data)
            received = next(events)
        assert (received.id, received.type, json.loads(received.data)) == (
            event_id,
            "notice",
            data,
        )


def test_a_browser_whose_daphne_stops_resumes_on_the_other_without_missing_events(
    stack: Stack, page: Page
) -> None:
    status = page.locator("#status")
    rows = page.locator("#events li")
    serving = serving_daphne(stack)
    other = next(daphne for daphne in stack.daphnes if daphne is not serving)
    before = publish_until_shown(page, stack)
    shown_before = rows.count()  # more than one if an earlier attempt arrived late

    serving.stop()
    try:
        expect(status).to_have_attribute("data-state", "reconnecting")
        # Through nginx, which sends the requests to whichever server is still up.
        missed = [publish(stack.url, stack, {"step": "missed", "n": n}) for n in range(3)]
        # Still away (it waits RETRY_MILLISECONDS): these can only arrive by replay.
        assert status.get_attribute("data-state") == "reconnecting", (
            f"the browser reconnected within {RETRY_MILLISECONDS} ms, before the events were "
            "published: this test proves nothing unless publishing is quicker"
        )

        expect(status).to_have_attribute("data-state", "open")
        expect(rows).to_have_count(shown_before + len(missed))
        newest = [rows.nth(i).get_attribute("data-event-id") for i in range(len(missed) + 1)]
        assert newest == [*reversed(missed), before]
        expect(page.locator("#last-event-id")).to_have_text(missed[-1])
        assert open_streams(other, stack) == 1
    finally:
        serving.start()  # on the same port, for the tests after this one


# --- HTTP/2: more streams of one origin than HTTP/1.1's six connections ------------------------

# Chromium opens at most six HTTP/1.1 connections per origin: a seventh page streaming from it
# would wait for one of them to close.
HTTP2_PAGES = 10


def wait_for_streams(stack: Stack, count: int, timeout: float) -> list[int]:
    """Wait until the Daphnes together hold ``count`` subscribed streams; returns each one's."""
    deadline = time.monotonic() + timeout
    while True:
        counts = [open_streams(daphne, stack) for daphne in stack.daphnes]
        if sum(counts) == count:
            return counts
        if time.monotonic() > deadline:
            raise AssertionError(f"expected {count} open streams, the Daphnes hold {counts}")
        time.sleep(0.1)


def test_ten_pages_stream_from_one_origin_over_http2(stack: Stack, browser: Browser) -> None:
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    # The certificate is the test's own, self-signed.
    context = browser.new_context(ignore_https_errors=True)
    try:
        pages = [context.new_page() for _ in range(HTTP2_PAGES)]
        log_in(pages[0], stack.tls_url, USERNAME, PASSWORD)
        for page in pages[1:]:
            page.goto(f"{stack.tls_url}/")
        for page in pages:
            expect(page.locator("#status")).to_have_attribute("data-state", "open")
            record_arrivals(page)
        protocols = [
            page.evaluate("performance.getEntriesByType('navigation')[0].nextHopProtocol")
            for page in pages
        ]
        assert protocols == ["h2"] * HTTP2_PAGES
        # Each page's stream subscribed (the page says "open" a moment before), all at once.
        wait_for_streams(stack, HTTP2_PAGES, timeout=10)

        event_id = publish(stack.url, stack, {"to": "every page"})
        for page in pages:
            arrival_ms(page, event_id, timeout_ms=EXPECT_TIMEOUT_MS)
    finally:
        context.close()


def test_django_sends_strict_transport_security_once_and_only_over_https(stack: Stack) -> None:
    trusted = ssl.create_default_context(cafile=stack.certificate.certificate)
    over_https = httpx.get(f"{stack.tls_url}/healthz", verify=trusted)
    assert over_https.status_code == 200
    assert over_https.headers.get_list("strict-transport-security") == [
        f"max-age={HSTS_SECONDS}; includeSubDomains; preload"
    ]
    over_http = httpx.get(f"{stack.url}/healthz")
    assert "strict-transport-security" not in over_http.headers


# --- Several Daphne processes: thousands of streams, one event --------------------------------

DAPHNES = 4
STREAMS = 4000
# Clients arrive 2.5 ms apart (400 per second), as users do, not in one burst of connections.
STREAM_STAGGER_SECONDS = 0.0025
# Bounds of the waits (not measured figures): opening every stream, delivering the event.
OPEN_TIMEOUT_SECONDS = 180
DELIVERY_TIMEOUT_SECONDS = 60


@pytest.fixture(scope="module")
def four_daphnes(
    baked, redis_server: str, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    # Per stream: one socket in this process, two in nginx, one in a Daphne; each process has
    # its own limit, which the servers started below inherit from this one.
    raise_open_file_limit(needed=2 * STREAMS + 256)
    directory = tmp_path_factory.mktemp("topology-four-daphnes")
    project = Path(shutil.copytree(baked(http_topology="daphne"), directory / "project"))
    with loopback_stack(
        project,
        project_python(project),
        "daphne",
        redis_server,
        directory,
        # Two connections per stream (the client's, the upstream's), and room for the rest.
        nginx_worker_connections=2 * STREAMS + 1024,
        daphnes=DAPHNES,
    ) as running:
        yield running


def raise_open_file_limit(needed: int) -> None:
    """Raise this process's soft limit of open files to its hard limit (the processes it starts
    afterwards inherit it); fail unless ``needed`` fit."""
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < needed:
        raise AssertionError(f"{needed} open files needed, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


async def crowd_receives_one_event(stack: Stack) -> dict[str, object]:
    """Open STREAMS streams through nginx, publish one event, wait until every stream has it;
    returns the figures."""
    port = stack.nginx.port
    started = time.monotonic()
    async with Crowd(
        "127.0.0.1",
        port,
        "/api/events/stream/",
        stack.auth,
        STREAMS,
        stagger_seconds=STREAM_STAGGER_SECONDS,
    ) as crowd:
        await crowd.wait_until(
            lambda: all(c.connection and c.connection.subscribed for c in crowd.clients),
            timeout=OPEN_TIMEOUT_SECONDS,
            what=f"{STREAMS} streams subscribed",
        )
        opened = time.monotonic() - started
        per_daphne = await asyncio.to_thread(wait_for_streams, stack, STREAMS, 30)

        published = time.monotonic()
        event_id = await asyncio.to_thread(publish, stack.url, stack, {"to": "every stream"})
        await crowd.wait_until(
            lambda: all(c.events for c in crowd.clients),
            timeout=DELIVERY_TIMEOUT_SECONDS,
            what="the event on every stream",
        )
        received = [[event.id for event in client.events] for client in crowd.clients]
        assert all(ids == [event_id] for ids in received), [
            ids for ids in received if ids != [event_id]
        ][:3]
        delays = sorted(client.events[0].received - published for client in crowd.clients)
        reconnects = sum(len(client.connections) - 1 for client in crowd.clients)
    return {
        "streams per Daphne": per_daphne,
        "time to open every stream (s)": round(opened, 1),
        "delivery after publishing, first/median/last (ms)": [
            round(1000 * delays[0]),
            round(1000 * statistics.median(delays)),
            round(1000 * delays[-1]),
        ],
        "reconnects": reconnects,
    }


def test_one_event_reaches_thousands_of_streams_spread_over_four_daphnes(
    four_daphnes: Stack, record_property: Callable[[str, object], None]
) -> None:
    # In a thread of its own: Playwright's sync API keeps an event loop running in this one
    # while the module's browser is open.
    with ThreadPoolExecutor(max_workers=1) as thread:
        figures = thread.submit(asyncio.run, crowd_receives_one_event(four_daphnes)).result()
    print(f"{STREAMS} streams over {DAPHNES} Daphnes behind nginx: {figures}")
    for name, value in figures.items():
        record_property(name, value)
    # least_conn spreads them: every process serves some.
    assert all(figures["streams per Daphne"]), figures
