"""The demo app: its page in a real browser (events arrive live, and none is lost across a server
restart), and the command that creates its login.

Runs Debian's Chromium (``apt-get install chromium``) through Playwright; Playwright's own browser
downloads are not needed.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from playwright.sync_api import Browser, ConsoleMessage, Page, expect, sync_playwright

from .services import LiveProject, RedisServer, api, daphne_server, publish, require_program

pytestmark = pytest.mark.timeout(60)

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]
# What Playwright waits for the page to show before it fails the test.
EXPECT_TIMEOUT_MS = 10_000


@contextmanager
def chromium() -> Iterator[Browser]:
    executable = require_program("chromium")
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()


def log_in(page: Page, base_url: str, username: str, password: str) -> None:
    """Open the demo page and log in through the form it redirects to."""
    page.goto(f"{base_url}/")
    page.get_by_label("Username").fill(username)
    page.get_by_label("Password").fill(password)
    page.get_by_role("button", name="Log in").click()
    page.wait_for_url(f"{base_url}/")


def record_csp_violations(page: Page) -> list[str]:
    """Chromium's console messages about anything the Content-Security-Policy blocked (an inline
    script or style without the nonce, a source from elsewhere), as the page logs them."""
    violations: list[str] = []

    def on_console(message: ConsoleMessage) -> None:
        if "Content Security Policy" in message.text:
            violations.append(message.text)

    page.on("console", on_console)
    return violations


def publish_with_command(project: LiveProject, settings: dict[str, str], *args: str) -> str:
    """Publish with the management command: straight to Redis, no web server needed."""
    result = project.manage("publish_event", *args, **settings)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def test_demo_page_shows_events_live_and_those_published_while_the_server_was_down(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> None:
    settings = {
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": "test-browser",
        "EVENTS_PUBLIC_TOPICS": "demo",  # the default: the demo's topic, nothing else
        # The browser reconnects this long after losing the stream.
        "EVENTS_RETRY_MILLISECONDS": "300",
        # Plain http on loopback: cookies marked Secure would not be sent back.
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with daphne_server(live_project, tmp_path, **settings) as server, chromium() as browser:
        page = browser.new_page()
        csp_violations = record_csp_violations(page)
        log_in(page, server.url, "alice", "password")
        status = page.locator("#status")
        rows = page.locator("#events li")
        expect(status).to_have_attribute("data-state", "open")

        with api(server, live_project.tokens["staff"]) as staff:
            response = staff.post(
                "/api/events/", json={"type": "notice", "data": {"text": "live"}, "topic": "demo"}
            )
        assert response.status_code == 201, response.text
        live_id = response.json()["id"]
        expect(rows).to_have_count(1)
        expect(rows.first.locator(".type")).to_have_text("notice")
        expect(rows.first.locator(".data")).to_have_text('{\n  "text": "live"\n}')

        server.stop()
        expect(status).to_have_attribute("data-state", "reconnecting")
        broadcast_id = publish_with_command(live_project, settings, "alert", '{"text": "all"}')
        private_id = publish_with_command(
            live_project, settings, "message", '{"text": "just alice"}', "--user", "alice"
        )
        server.start()  # on the same port: the browser finds it again by itself

        expect(status).to_have_attribute("data-state", "open")
        expect(rows).to_have_count(3)
        # Newest first, each event once: the replay after Last-Event-ID sent exactly what was missed.
        assert [rows.nth(i).get_attribute("data-event-id") for i in range(3)] == [
            private_id,
            broadcast_id,
            live_id,
        ]
        expect(rows.locator(".type")).to_have_text(["message", "alert", "notice"])
        expect(rows.first.locator(".data")).to_have_text('{\n  "text": "just alice"\n}')
        expect(page.locator("#last-event-id")).to_have_text(private_id)
        # The admin's pages have nothing inline either (their own scripts and styles are files).
        page.goto(f"{server.url}/admin/login/")
        expect(page.locator("#login-form")).to_be_visible()
    # The login page, the demo page and the admin ran and styled everything under the policy.
    assert csp_violations == []


def test_demo_page_explains_a_refused_stream_and_an_ended_access(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """An EventSource never says why the server refused it: the page asks, and shows the reason
    (a 429 and when it tries again; a 401 after signing out elsewhere)."""
    settings = {
        "REDIS_URL": "",
        "EVENTS_PUBLIC_TOPICS": "demo",
        "EVENTS_MAX_STREAMS_PER_USER": "1",
        "EVENTS_RETRY_MILLISECONDS": "300",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with daphne_server(live_project, tmp_path, **settings) as server, chromium() as browser:
        context = browser.new_context()  # one browser session: its tabs share the cookie
        first = context.new_page()
        log_in(first, server.url, "bob", "password")
        expect(first.locator("#status")).to_have_attribute("data-state", "open")

        second = context.new_page()
        second.goto(f"{server.url}/")
        expect(second.locator("#status")).to_contain_text("Too many streams (429)")
        expect(second.locator("#status")).to_contain_text("at most 1 per user")

        cookies = {cookie["name"]: cookie["value"] for cookie in context.cookies()}
        logout = context.request.post(
            f"{server.url}/accounts/logout/", headers={"X-CSRFToken": cookies["csrftoken"]}
        )
        assert logout.ok, logout.status
        expect(first.locator("#events li").first).to_have_attribute("data-type", "revoked")
        expect(first.locator("#status")).to_have_text(
            "Signed out: sign in again to receive events."
        )
        context.close()


def test_the_client_opens_a_ticket_stream_and_asks_for_a_new_ticket_when_it_expires(
    live_project: LiveProject, tmp_path: Path
) -> None:
    """A page without a session: the client gets tickets from the page (here, from a token
    held elsewhere), opens the stream with one, and when the stream ends after the ticket
    expired (its reconnection is refused with 401) asks for a new one and resumes by id."""
    settings = {
        "REDIS_URL": "",
        "EVENTS_TICKET_SECONDS": "2",
        "EVENTS_STREAM_MAX_SECONDS": "4",  # then the browser reconnects with the stale ticket
        "EVENTS_RETRY_MILLISECONDS": "300",
    }
    tickets: list[str] = []
    expect.set_options(timeout=EXPECT_TIMEOUT_MS)
    with (
        daphne_server(live_project, tmp_path, **settings) as server,
        api(server, live_project.tokens["alice"]) as alice,
        api(server, live_project.tokens["staff"]) as staff,
        chromium() as browser,
    ):

        def get_ticket() -> dict:
            response = alice.post("/api/events/tickets/", json={"topics": []})
            assert response.status_code == 201, response.text
            tickets.append(response.json()["ticket"])
            return response.json()

        # No session: only the ticket authenticates the stream. The test's own scripts are
        # evaluated strings, which the page's CSP (rightly) forbids: not the client's concern.
        page = browser.new_context(bypass_csp=True).new_page()
        page.goto(f"{server.url}/accounts/login/")
        page.expose_function("getTicket", get_ticket)
        page.evaluate(
            """async () => {
                const { EventStreamClient } = await import("/api/events/client.js");
                window.received = [];
                window.states = [];
                const client = new EventStreamClient("/api/events/stream/", {
                    ticket: () => window.getTicket(),
                    onState: (state) => window.states.push(state),
                });
                client.on("notice", (data) => window.received.push(data.n));
            }"""
        )
        page.wait_for_function("window.states.includes('open')")
        publish(staff, "notice", {"n": 1}, user=int(live_project.tokens["alice_pk"]))
        page.wait_for_function("window.received.length === 1")
        # The stream ends with its lifetime; its ticket has expired by then.
        page.wait_for_function(
            "window.states.filter((s) => s === 'open').length >= 2", timeout=15000
        )
        publish(staff, "notice", {"n": 2}, user=int(live_project.tokens["alice_pk"]))
        page.wait_for_function("window.received.length === 2")
        assert page.evaluate("window.received") == [1, 2]
    assert len(tickets) >= 2, "the client never asked for a new ticket"


def test_create_demo_user_refuses_its_well_known_password_outside_debug_unless_forced(
    live_project: LiveProject,
) -> None:
    refused = live_project.manage("create_demo_user", DEBUG="false")
    assert refused.returncode != 0
    assert "--force" in refused.stderr

    created = live_project.manage("create_demo_user", "--force", DEBUG="false")
    assert created.returncode == 0, created.stderr
    reset = live_project.manage("create_demo_user", DEBUG="true")
    assert reset.returncode == 0, reset.stderr
    assert "Reset the superuser 'demo'" in reset.stdout

    log_in_as_demo = (
        "from django.contrib.auth import authenticate; "
        "print(authenticate(username='demo', password='demo').is_superuser)"
    )
    logged_in = live_project.manage("shell", "--verbosity", "0", "-c", log_in_as_demo)
    assert logged_in.stdout.strip() == "True", logged_in.stderr
