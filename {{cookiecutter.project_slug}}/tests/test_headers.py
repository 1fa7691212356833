"""Security headers: every page carries a strict Content-Security-Policy, and what a signed-in
user is shown (pages, API JSON) is never stored by a cache, while the event stream keeps its own
``no-cache``."""

from collections.abc import Iterator

import httpx
import pytest
from django.contrib.auth.models import User
from django.http import HttpResponseBase
from django.test import Client
from rest_framework.authtoken.models import Token

from .services import Daphne, LiveProject, daphne_server, signed_in_browser
from .sse import open_stream

pytestmark = pytest.mark.timeout(60)

PRIVATE_NO_STORE = "private, no-store"


def csp_directives(response: HttpResponseBase | httpx.Response) -> dict[str, list[str]]:
    """The Content-Security-Policy header of a response, as {directive: [source, ...]}."""
    header = response.headers["Content-Security-Policy"]
    directives = {}
    for part in header.split(";"):
        name, *sources = part.split()
        directives[name] = sources
    return directives


def assert_strict_policy(directives: dict[str, list[str]]) -> None:
    assert directives["default-src"] == ["'self'"]
    assert directives["object-src"] == ["'none'"]
    assert directives["base-uri"] == ["'self'"]
    assert directives["form-action"] == ["'self'"]
    assert directives["frame-ancestors"] == ["'none'"]
    for name in ("script-src", "style-src"):
        assert "'unsafe-inline'" not in directives[name]
        assert "'unsafe-eval'" not in directives[name]
        assert "*" not in directives[name]


def test_the_login_page_carries_a_strict_content_security_policy(client: Client) -> None:
    response = client.get("/accounts/login/")
    assert response.status_code == 200
    assert_strict_policy(csp_directives(response))


@pytest.mark.django_db
def test_the_admin_carries_the_policy_and_keeps_its_own_cache_control(client: Client) -> None:
    """The admin needs nothing inline (its scripts and styles are static files), and its
    ``never_cache`` header stays as it is: it forbids storing as well."""
    admin = User.objects.create_superuser("admin", password="password")
    client.force_login(admin)
    response = client.get("/admin/")
    assert response.status_code == 200
    directives = csp_directives(response)
    assert_strict_policy(directives)
    # No page of the admin asked for a nonce: scripts and styles from this site only.
    assert directives["script-src"] == ["'self'"]
    assert directives["style-src"] == ["'self'"]
    assert "no-store" in response.headers["Cache-Control"]
    assert "private" in response.headers["Cache-Control"]


@pytest.mark.django_db
def test_api_json_for_a_signed_in_user_is_private_and_never_stored(client: Client) -> None:
    staff = User.objects.create_user("staff", password="password", is_staff=True)
    by_token = client.get(
        "/api/events/metrics/", HTTP_AUTHORIZATION=f"Token {Token.objects.create(user=staff)}"
    )
    assert by_token.status_code == 200, by_token.content
    assert by_token.headers["Cache-Control"] == PRIVATE_NO_STORE

    client.force_login(staff)
    by_session = client.get("/api/events/metrics/")
    assert by_session.status_code == 200
    assert by_session.headers["Cache-Control"] == PRIVATE_NO_STORE


@pytest.mark.django_db
def test_anonymous_answers_get_no_private_cache_control(client: Client) -> None:
    """Nothing of one user's in them: the middleware leaves them to their views."""
    assert "Cache-Control" not in client.get("/healthz").headers
    refused = client.get("/api/events/metrics/")
    assert refused.status_code == 401
    assert "Cache-Control" not in refused.headers


@pytest.fixture(scope="module")
def daphne(live_project: LiveProject, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Daphne]:
    # Plain http on loopback: cookies marked Secure would not be sent back.
    with daphne_server(
        live_project,
        tmp_path_factory.mktemp("headers"),
        REDIS_URL="",
        SESSION_COOKIE_SECURE="false",
        CSRF_COOKIE_SECURE="false",
    ) as server:
        yield server


def test_the_stream_of_a_signed_in_browser_keeps_exactly_no_cache(daphne: Daphne) -> None:
    """Over real HTTP through the stream's own ASGI handler, which runs the whole middleware
    stack: a session-authenticated stream (a browser's EventSource) is still ``no-cache``, which
    lets proxies pass it through, not the private ``no-store`` of pages."""
    with signed_in_browser(daphne, "alice") as browser:
        with open_stream(browser) as stream:
            (first,) = stream.take_all(1)
            headers = stream.response.headers
        assert first.retry is not None
        assert headers["Cache-Control"] == "no-cache"
        assert "'unsafe-inline'" not in headers["Content-Security-Policy"]

        # The metrics are for staff only; the refusal is JSON for alice all the same.
        refused = browser.get("/api/events/metrics/")
        assert refused.status_code == 403
        assert refused.headers["Cache-Control"] == PRIVATE_NO_STORE
