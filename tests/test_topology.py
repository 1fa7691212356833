"""The generated project behind nginx, as deployed, on loopback: no containers needed.

For each HTTP topology, nginx (rendered from the generated template) proxies to two Daphne
processes (and to gunicorn for everything but the streams, in daphne+gunicorn), sharing one Redis:

- a browser receives events published through the API, each in well under a second (nginx does
  not buffer the stream);
- an event published through one Daphne reaches a client of the other;
- a browser whose Daphne stops reconnects through nginx to the other one and receives every
  event published while it was away.
"""

import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import Browser, Page, expect
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from .helpers import project_python
from .topology.browser import arrival_ms, chromium, log_in, record_arrivals
from .topology.processes import Server
from .topology.sse import open_stream
from .topology.stack import PASSWORD, RETRY_MILLISECONDS, USERNAME, Stack, loopback_stack

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
