"""Debian's Chromium driven by Playwright (Playwright's own browser downloads are not needed)."""

from collections.abc import Iterator
from contextlib import contextmanager

from playwright.sync_api import Browser, Page, sync_playwright

from ..helpers import require_binary

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


@contextmanager
def chromium() -> Iterator[Browser]:
    executable = require_binary("chromium")
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


def record_arrivals(page: Page) -> None:
    """From now on, note the wall-clock time (ms) at which each event row appears on the page."""
    page.evaluate(
        """() => {
            window.arrivals = {};
            new MutationObserver((records) => {
                const now = Date.now();
                for (const record of records) {
                    for (const row of record.addedNodes) window.arrivals[row.dataset.eventId] = now;
                }
            }).observe(document.getElementById("events"), { childList: true });
        }"""
    )


def arrival_ms(page: Page, event_id: str, timeout_ms: float) -> float:
    """When the row of ``event_id`` appeared (epoch milliseconds); waits for it if need be."""
    page.wait_for_function(
        "(id) => id in window.arrivals", arg=event_id, timeout=timeout_ms, polling=10
    )
    return page.evaluate("(id) => window.arrivals[id]", event_id)
