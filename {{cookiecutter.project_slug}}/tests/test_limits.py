"""Limits against a determined client: bursts of concurrent requests over many connections and two
Daphne processes get exactly what the rate allows, not what a race between them lets through.

(DRF's throttles read a user's history from the cache and wrote it back in a second step: 200
ticket requests 50 at a time got 105 tickets against 60/min, and 100 connections published 1,294
events in 30 s against 600/min.)
"""

import asyncio
from collections import Counter
from pathlib import Path

import httpx
import pytest

from .services import Daphne, LiveProject, RedisServer, daphne_server

pytestmark = pytest.mark.timeout(120)

CONNECTIONS = 100


async def burst(servers: list[Daphne], token: str, path: str, body: dict, requests: int) -> Counter:
    """``requests`` POSTs at once over ``CONNECTIONS`` connections spread over ``servers``; the
    statuses they got."""
    headers = {"Authorization": f"Token {token}"}
    limits = httpx.Limits(max_connections=CONNECTIONS // len(servers))
    clients = [
        httpx.AsyncClient(base_url=server.url, headers=headers, limits=limits, timeout=60)
        for server in servers
    ]
    try:
        responses = await asyncio.gather(
            *(clients[n % len(clients)].post(path, json=body) for n in range(requests))
        )
    finally:
        for client in clients:
            await client.aclose()
    return Counter(response.status_code for response in responses)


def test_concurrent_tickets_and_publishes_over_two_processes_get_exactly_the_rate(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> None:
    settings = {
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": "test-limits-burst",
        "EVENTS_STREAM_RATE": "60/min",
        "EVENTS_PUBLISH_RATE": "600/min",
    }
    with (
        daphne_server(live_project, tmp_path, **settings) as first,
        daphne_server(live_project, tmp_path, **settings) as second,
    ):
        servers = [first, second]
        tickets = asyncio.run(
            burst(servers, live_project.create_token_user(), "/api/events/tickets/", {}, 200)
        )
        publishes = asyncio.run(
            burst(
                servers,
                live_project.tokens["staff"],
                "/api/events/",
                {"type": "burst", "data": None},
                1000,
            )
        )
    print(f"RELIABILITY: limits tickets={dict(tickets)} publishes={dict(publishes)}")
    assert tickets == {201: 60, 429: 140}
    assert publishes == {201: 600, 429: 400}


def sign_in(client: httpx.Client, username: str, password: str) -> httpx.Response:
    if "csrftoken" not in client.cookies:
        client.get("/accounts/login/").raise_for_status()
    return client.post(
        "/accounts/login/",
        data={
            "username": username,
            "password": password,
            "csrfmiddlewaretoken": client.cookies["csrftoken"],
        },
    )


def test_password_guessing_is_refused_over_the_login_rate_on_every_process(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> None:
    """20 wrong passwords for one account, taking two processes in turn: the first 5 are checked
    (the form says they are wrong), the other 15 get a 429 without being checked, and so does the
    right password afterwards, until the window has passed."""
    settings = {
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": "test-limits-login",
        "LOGIN_RATE": "5/min",
        # Plain http on loopback: cookies marked Secure would not be sent back.
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }
    with (
        daphne_server(live_project, tmp_path, **settings) as first,
        daphne_server(live_project, tmp_path, **settings) as second,
        httpx.Client(base_url=first.url, timeout=10) as on_first,
        httpx.Client(base_url=second.url, timeout=10) as on_second,
    ):
        clients = [on_first, on_second]
        guesses = [sign_in(clients[n % 2], "alice", f"guess-{n}") for n in range(20)]
        right = sign_in(on_first, "alice", "password")
        log = first.log() + second.log()
    assert [guess.status_code for guess in guesses] == [200] * 5 + [429] * 15
    assert all("sessionid" not in guess.cookies for guess in guesses)
    assert right.status_code == 429
    assert 0 < int(right.headers["Retry-After"]) <= 60
    assert "Too many sign-in attempts" in right.text
    assert "sessionid" not in right.cookies
    assert log.count("Sign-in refused over the login rates for 'alice'") == 16
