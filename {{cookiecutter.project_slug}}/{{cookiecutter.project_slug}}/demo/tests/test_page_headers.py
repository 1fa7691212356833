"""The demo page under the Content-Security-Policy: its inline script and style carry the nonce
the header allows, nothing inline runs without it, and the page is never stored by a cache."""

import re

import pytest
from django.contrib.auth.models import User
from django.test import Client


def csp_directives(header: str) -> dict[str, list[str]]:
    """A Content-Security-Policy header as {directive: [source, ...]}."""
    return {name: sources for name, *sources in (part.split() for part in header.split(";"))}


@pytest.fixture
def page(client: Client, django_user_model: type[User]) -> tuple[str, dict[str, list[str]], str]:
    client.force_login(django_user_model.objects.create_user("alice", password="password"))
    response = client.get("/")
    assert response.status_code == 200
    header = response.headers["Content-Security-Policy"]
    return response.content.decode(), csp_directives(header), response.headers["Cache-Control"]


@pytest.mark.django_db
def test_inline_script_and_style_run_by_nonce_never_unsafe_inline(page) -> None:
    html, directives, _ = page
    for name in ("script-src", "style-src"):
        assert "'unsafe-inline'" not in directives[name]
    (script_nonce,) = [s for s in directives["script-src"] if s.startswith("'nonce-")]
    assert directives["style-src"] == ["'self'", script_nonce]
    nonce = script_nonce.removeprefix("'nonce-").removesuffix("'")
    # Every <script> that runs, and every <style>, carries this response's nonce; the only other
    # script element is the page's JSON configuration, which is data and never runs.
    for tag in re.findall(r"<(?:script|style)\b[^>]*>", html):
        assert f'nonce="{nonce}"' in tag or 'type="application/json"' in tag, tag
    assert html.count(f'nonce="{nonce}"') == 2
    # style= attributes would be blocked whatever the nonce: the page has none.
    assert " style=" not in html


@pytest.mark.django_db
def test_each_response_has_a_nonce_of_its_own(client: Client, django_user_model) -> None:
    client.force_login(django_user_model.objects.create_user("bob", password="password"))
    first, second = (client.get("/").headers["Content-Security-Policy"] for _ in range(2))
    assert first != second


@pytest.mark.django_db
def test_the_demo_page_is_private_and_never_stored(page) -> None:
    _, _, cache_control = page
    assert cache_control == "private, no-store"
