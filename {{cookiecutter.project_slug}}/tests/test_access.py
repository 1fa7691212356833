"""Who may read what, and how much, on two real Daphne processes sharing a real Redis.

Topic rules deny by default; one user's open streams are counted over both processes; rates are
per user and shared; taking access away (logout, a deleted token, a password change, a
deactivated user, a lost topic) ends the streams that relied on it on both processes, with a
``revoked`` event, and their reconnection is refused; stream tickets open streams without a
long-lived secret in the URL, and stop working with the credential that asked for them.
"""

import asyncio
import base64
import os
import re
import secrets
import signal
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from urllib.parse import quote

import httpx
import pytest

from .services import (
    Daphne,
    LiveProject,
    RedisServer,
    api,
    daphne_server,
    hold_streams,
    metrics,
    publish,
    signed_in_browser,
)
from .sse import EventStream, open_stream, revoked_reason

LEASE_SECONDS = 30  # events/broker/slots.py

pytestmark = pytest.mark.timeout(120)

MAX_STREAMS = 2
TICKET_SECONDS = 4
PREFIX = "test-access"
ALLOWED_ORIGIN = "https://app.example.com"


@dataclass
class Pair:
    """Two Daphne processes of one project, sharing one Redis (as two replicas would)."""

    first: Daphne
    second: Daphne
    project: LiveProject
    redis_url: str

    def shell(self, code: str) -> str:
        """Run ``code`` in a third process of the project (a worker, the admin's server...)."""
        result = self.project.manage(
            "shell", "-c", code, REDIS_URL=self.redis_url, EVENTS_REDIS_PREFIX=PREFIX
        )
        assert result.returncode == 0, result.stderr
        return result.stdout.strip()


@dataclass
class User:
    name: str
    pk: str
    token: str
    password: str


@pytest.fixture(scope="module")
def pair(
    live_project: LiveProject, redis_service: RedisServer, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Pair]:
    settings = {
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": PREFIX,
        # The defaults this module tests, instead of the other modules' "anything goes".
        "EVENTS_PUBLIC_TOPICS": "news,scores.*",
        "EVENTS_MAX_STREAMS_PER_USER": str(MAX_STREAMS),
        "EVENTS_TICKET_SECONDS": str(TICKET_SECONDS),
        "EVENTS_CORS_ALLOWED_ORIGINS": ALLOWED_ORIGIN,
        "EVENTS_HEARTBEAT_SECONDS": "0.5",
        # Plain http on loopback: cookies marked Secure would not be sent back.
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }
    directory = tmp_path_factory.mktemp("access")
    with (
        daphne_server(live_project, directory, **settings) as first,
        daphne_server(live_project, directory, **settings) as second,
    ):
        yield Pair(first, second, live_project, redis_service.url)


@pytest.fixture
def user(pair: Pair) -> User:
    """A user of this test only: the tests below take its access away."""
    name = f"user-{secrets.token_hex(4)}"
    password = secrets.token_urlsafe(12)
    created = pair.shell(
        "from django.contrib.auth.models import User\n"
        "from rest_framework.authtoken.models import Token\n"
        f"user = User.objects.create_user({name!r}, password={password!r})\n"
        "print(user.pk, Token.objects.create(user=user).key)"
    )
    pk, token = created.splitlines()[-1].split()
    return User(name, pk, token, password)


def stream_status(client: httpx.Client, **params: str) -> httpx.Response:
    """The answer to a stream request that is refused (read in full: it is JSON, not a stream)."""
    with client.stream(
        "GET", "/api/events/stream/", params=params, headers={"Accept": "text/event-stream"}
    ) as response:
        assert response.status_code != 200, "the stream was accepted"
        response.read()
        return response


# --- Topic rules ----------------------------------------------------------------------------


def test_topics_are_denied_unless_public_or_staff(pair: Pair, live_project: LiveProject) -> None:
    with (
        api(pair.first, live_project.tokens["alice"]) as alice,
        api(pair.first, live_project.tokens["staff"]) as staff,
    ):
        with open_stream(alice, topics=("news", "scores.tennis")) as stream:
            assert stream.take_all(1)[0].retry is not None
        for topic in ("sports", "scoresheet", "staff.alerts"):
            refused = stream_status(alice, topic=topic)
            assert refused.status_code == 403, refused.text
            assert refused.json()["detail"] == f"You may not read topic(s): {topic}."
        with open_stream(staff, topics=("staff.alerts",)) as stream:
            assert stream.take_all(1)[0].retry is not None
        assert stream_status(staff, topic="sports").status_code == 403


# --- Limits -----------------------------------------------------------------------------------


@contextmanager
def a_stream_on_each_process(
    pair: Pair, token: str
) -> Iterator[tuple[httpx.Client, httpx.Client, EventStream, EventStream]]:
    """Clients of both processes with ``token``, and a stream open on each."""
    with (
        api(pair.first, token) as on_first,
        api(pair.second, token) as on_second,
        open_stream(on_first) as one,
        open_stream(on_second) as two,
    ):
        one.take_all(1)
        two.take_all(1)
        yield on_first, on_second, one, two


def test_one_users_open_streams_are_limited_over_every_process(pair: Pair, user: User) -> None:
    with a_stream_on_each_process(pair, user.token) as (on_first, on_second, _, _):
        for client in (on_first, on_second):
            refused = stream_status(client)
            assert refused.status_code == 429
            assert int(refused.headers["Retry-After"]) > 0
            assert f"at most {MAX_STREAMS} per user" in refused.json()["detail"]
        assert refused.headers["content-type"] == "application/json"
    # Closing a stream gives its slot back at once.
    with api(pair.second, user.token) as client:
        for _ in range(MAX_STREAMS + 1):
            with open_stream(client) as again:
                again.take_all(1)


def test_rates_of_new_streams_and_publishes_are_per_user_and_shared_by_processes(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    settings = {
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": "test-access-rates",
        "EVENTS_STREAM_RATE": "3/min",
        "EVENTS_PUBLISH_RATE": "2/min",
    }
    with (
        daphne_server(live_project, tmp_path, **settings) as first,
        daphne_server(live_project, tmp_path, **settings) as second,
        api(first, live_project.tokens["staff"]) as staff_first,
        api(second, live_project.tokens["staff"]) as staff_second,
        api(first, live_project.tokens["alice"]) as alice,
    ):
        for client in (staff_first, staff_second, staff_first):
            with open_stream(client) as stream:
                stream.take_all(1)
        refused = stream_status(staff_second)
        assert refused.status_code == 429
        assert 0 < int(refused.headers["Retry-After"]) <= 60
        assert "throttled" in refused.json()["detail"]
        with open_stream(alice) as stream:  # another user's count
            stream.take_all(1)

        publish(staff_first, "one")
        publish(staff_second, "two")
        response = staff_first.post("/api/events/", json={"type": "three", "data": None})
        assert response.status_code == 429
        assert int(response.headers["Retry-After"]) > 0


@pytest.mark.proof
@pytest.mark.timeout(180)
def test_the_streams_of_a_crashed_process_stop_counting_after_their_lease(
    pair: Pair, user: User, live_project: LiveProject, tmp_path
) -> None:
    """A process killed with its streams open never gives their slots back: they expire."""
    with (
        daphne_server(live_project, tmp_path, **pair.first.env) as doomed,
        api(doomed, user.token) as client,
        open_stream(client) as one,
        open_stream(client) as two,
    ):
        one.take_all(1)
        two.take_all(1)
        os.kill(doomed.pid, signal.SIGKILL)
        killed = time.monotonic()
    with api(pair.first, user.token) as client:
        assert stream_status(client).status_code == 429  # still counted, for now
        while stream_status_or_open(client) == 429:
            assert time.monotonic() - killed < LEASE_SECONDS + 15, "the slots never expired"
            time.sleep(1)
    print(f"RELIABILITY: crashed-process slots expired after {time.monotonic() - killed:.0f} s")


def stream_status_or_open(client: httpx.Client) -> int:
    with client.stream("GET", "/api/events/stream/") as response:
        return response.status_code


def test_checking_the_limits_holds_no_redis_connection_per_stream(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    """The limits count in Redis, yet 200 open streams add no connection: the server's stay
    few whatever the number of streams (a cache per request would hold one per stream)."""
    settings = {
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": "test-access-connections",
        "EVENTS_MAX_STREAMS_PER_USER": "1000",  # checked, not reached
        "EVENTS_STREAM_RATE": "1000/min",
    }

    def connected() -> int:
        info = redis_service.command("INFO", "clients")
        found = re.search(r"connected_clients:(\d+)", info)
        assert found, info
        return int(found[1])

    with (
        daphne_server(live_project, tmp_path, **settings) as server,
        api(server, live_project.tokens["alice"]) as alice,
    ):
        with open_stream(alice) as warm_up:  # the connections a first stream opens
            warm_up.take_all(1)
        before = connected()
        opened = asyncio.run(hold_streams(server, live_project.tokens["alice"], 200, connected))
    print(f"RELIABILITY: redis connections before={before} with_200_streams={opened}")
    assert opened <= before + 3


def test_no_task_outlives_the_streams_whose_slots_it_renews(
    live_project: LiveProject, redis_service: RedisServer, tmp_path
) -> None:
    """The task renewing a process's open-stream leases ends with the last stream: after the
    same streams came and went, a server counting them runs no more tasks than one that does
    not count."""
    limited = {"EVENTS_MAX_STREAMS_PER_USER": "1000", "EVENTS_STREAM_RATE": ""}
    unlimited = {"EVENTS_MAX_STREAMS_PER_USER": "0", "EVENTS_STREAM_RATE": ""}

    def tasks_after_streams(settings: dict[str, str]) -> int:
        with (
            daphne_server(
                live_project,
                tmp_path,
                REDIS_URL=redis_service.url,
                EVENTS_REDIS_PREFIX="test-access-renewer",
                **settings,
            ) as server,
            api(server, live_project.tokens["staff"]) as staff,
        ):
            asyncio.run(hold_streams(server, live_project.tokens["alice"], 5, lambda: None))
            deadline = time.monotonic() + 10
            while metrics(staff)["streams"] and time.monotonic() < deadline:
                time.sleep(0.05)
            return metrics(staff)["tasks"]

    assert tasks_after_streams(limited) == tasks_after_streams(unlimited)


# --- Revocation -------------------------------------------------------------------------------


def test_logout_ends_that_sessions_streams_on_every_process_and_only_those(
    pair: Pair, user: User
) -> None:
    with (
        signed_in_browser(pair.first, user.name, user.password) as browser,
        signed_in_browser(pair.first, user.name, user.password) as other_browser,
        httpx.Client(base_url=pair.second.url, cookies=browser.cookies, timeout=10) as on_second,
    ):
        with open_stream(on_second) as stream, open_stream(other_browser) as other:
            stream.take_all(1)
            other.take_all(1)
            logout = browser.post(
                "/accounts/logout/", headers={"X-CSRFToken": browser.cookies["csrftoken"]}
            )
            assert logout.status_code in (200, 302), logout.text
            assert revoked_reason(stream) == "session-ended"
            # The other session's stream goes on: it still receives events.
            with api(pair.first, pair.project.tokens["staff"]) as staff:
                publish(staff, "still-here", {"n": 1})
            assert other.take(1)[0].event == "still-here"
        assert stream_status(on_second).status_code == 401


def test_a_deleted_token_ends_its_streams_on_every_process(pair: Pair, user: User) -> None:
    with a_stream_on_each_process(pair, user.token) as (on_first, _, one, two):
        pair.shell(
            "from rest_framework.authtoken.models import Token\n"
            f"Token.objects.filter(key={user.token!r}).delete()"
        )
        assert revoked_reason(one) == revoked_reason(two) == "token-deleted"
        refused = stream_status(on_first)
        assert refused.status_code == 401
        assert refused.headers["WWW-Authenticate"] == "Token"


def test_a_password_change_ends_session_streams_but_not_token_streams(
    pair: Pair, user: User
) -> None:
    """Django signs sessions out on a password change; DRF tokens survive it."""
    with (
        signed_in_browser(pair.second, user.name, user.password) as browser,
        api(pair.first, user.token) as by_token,
        open_stream(browser) as session_stream,
        open_stream(by_token) as token_stream,
    ):
        session_stream.take_all(1)
        token_stream.take_all(1)
        pair.shell(
            "from django.contrib.auth.models import User\n"
            f"user = User.objects.get(pk={user.pk})\n"
            "user.set_password('a-new-password-123')\n"
            "user.save()"
        )
        assert revoked_reason(session_stream) == "password-changed"
        with api(pair.first, pair.project.tokens["staff"]) as staff:
            publish(staff, "after-password-change", user=int(user.pk))
        assert token_stream.take(1)[0].event == "after-password-change"
        assert stream_status(browser).status_code in (401, 403)


def test_a_deactivated_user_loses_every_stream(pair: Pair, user: User) -> None:
    with api(pair.second, user.token) as client, open_stream(client) as stream:
        stream.take_all(1)
        pair.shell(
            "from django.contrib.auth.models import User\n"
            f"user = User.objects.get(pk={user.pk})\n"
            "user.is_active = False\n"
            "user.save()"
        )
        assert revoked_reason(stream) == "user-inactive"
        assert stream_status(client).status_code == 401


def test_losing_staff_ends_the_staff_topic_streams_and_refuses_them(pair: Pair, user: User) -> None:
    make_staff = (
        "from django.contrib.auth.models import User\n"
        f"user = User.objects.get(pk={user.pk})\n"
        "user.is_staff = {}\n"
        "user.save()"
    )
    pair.shell(make_staff.format(True))
    with (
        api(pair.first, user.token) as client,
        open_stream(client, topics=("staff.alerts",)) as staff_stream,
        open_stream(client, topics=("news",)) as news_stream,
    ):
        staff_stream.take_all(1)
        news_stream.take_all(1)
        pair.shell(make_staff.format(False))
        assert revoked_reason(staff_stream) == "topic-denied"
        with api(pair.first, pair.project.tokens["staff"]) as staff:
            publish(staff, "news-goes-on", topic="news")
        assert news_stream.take(1)[0].event == "news-goes-on"
        assert stream_status(client, topic="staff.alerts").status_code == 403


# --- Stream tickets ---------------------------------------------------------------------------


def ticket_for(client: httpx.Client, *topics: str) -> dict:
    response = client.post("/api/events/tickets/", json={"topics": list(topics)})
    assert response.status_code == 201, response.text
    return response.json()


def test_a_ticket_opens_its_users_stream_of_its_topics_without_other_credentials(
    pair: Pair, user: User
) -> None:
    with api(pair.first, user.token) as client:
        issued = ticket_for(client, "news")
        denied = client.post("/api/events/tickets/", json={"topics": ["sports"]})
        assert denied.status_code == 403
    assert issued["expires_in"] == TICKET_SECONDS
    assert user.token not in issued["url"]
    with (
        httpx.Client(base_url=pair.second.url, timeout=10) as anonymous,  # another process
        anonymous.stream("GET", issued["url"]) as response,
        api(pair.first, pair.project.tokens["staff"]) as staff,
    ):
        assert response.status_code == 200
        stream = EventStream(response)
        stream.take_all(1)
        publish(staff, "for-the-topic", topic="news")
        publish(staff, "for-the-user", user=int(user.pk))
        assert [event.event for event in stream.take(2)] == ["for-the-topic", "for-the-user"]
    with httpx.Client(base_url=pair.second.url, timeout=10) as anonymous:
        other_topic = stream_status(anonymous, ticket=issued["ticket"], topic="scores.golf")
        assert other_topic.status_code == 403
        forged = stream_status(anonymous, ticket=issued["ticket"][:-2] + "xx")
        assert forged.status_code == 401
        assert forged.json()["detail"] == "Invalid stream ticket."


def test_a_ticket_reveals_nothing_and_is_written_to_no_log(pair: Pair, user: User) -> None:
    """Decoded, a ticket shows neither the user, the topics nor the credential's kind; used
    (opening a stream, and refused for a topic it does not hold), it appears in no line of either
    process's log, whose access lines hide it."""
    with api(pair.first, user.token) as client:
        issued = ticket_for(client, "news", "scores.golf")
        fingerprint = pair.shell(
            "from django.utils.crypto import salted_hmac\n"  # as access/credentials.py names it
            f"print(salted_hmac('events.access.fingerprint', {user.token!r}).hexdigest()[:32])"
        ).strip()
    raw = base64.urlsafe_b64decode(issued["ticket"] + "=" * (-len(issued["ticket"]) % 4))
    for revealing in (b"news", b"scores.golf", b"token", fingerprint.encode()):
        assert revealing not in raw
    with httpx.Client(base_url=pair.second.url, timeout=10) as anonymous:
        with anonymous.stream("GET", issued["url"]) as response:
            assert response.status_code == 200
            EventStream(response).take_all(1)
        assert stream_status(anonymous, ticket=issued["ticket"], topic="sports").status_code == 403
    logs = pair.first.log() + pair.second.log()
    for form in (issued["ticket"], quote(issued["ticket"], safe=""), issued["ticket"][:20]):
        assert form not in logs
    assert '"GET /api/events/stream/?ticket=[hidden]" 200' in logs
    assert '"GET /api/events/stream/?ticket=[hidden]&topic=sports" 403' in logs


def test_a_stream_may_read_fewer_topics_than_its_ticket(pair: Pair, user: User) -> None:
    with api(pair.first, user.token) as client:
        issued = ticket_for(client, "news", "scores.golf")
    with (
        httpx.Client(base_url=pair.first.url, timeout=10) as anonymous,
        anonymous.stream(
            "GET", "/api/events/stream/", params={"ticket": issued["ticket"], "topic": "news"}
        ) as response,
        api(pair.first, pair.project.tokens["staff"]) as staff,
    ):
        assert response.status_code == 200
        stream = EventStream(response)
        stream.take_all(1)
        publish(staff, "not-asked-for", topic="scores.golf")
        publish(staff, "asked-for", topic="news")
        assert stream.take(1)[0].event == "asked-for"


def test_a_page_on_an_allowed_origin_may_ask_for_a_ticket_and_open_its_stream(
    pair: Pair, user: User
) -> None:
    """What a browser does for a page on another origin: a preflight, the POST, the stream."""
    with httpx.Client(base_url=pair.first.url, timeout=10) as browser:
        preflight = browser.options(
            "/api/events/tickets/",
            headers={
                "Origin": ALLOWED_ORIGIN,
                "Access-Control-Request-Method": "POST",
                "Access-Control-Request-Headers": "authorization,content-type",
            },
        )
        assert preflight.status_code == 204, preflight.text
        assert preflight.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        assert "POST" in preflight.headers["Access-Control-Allow-Methods"]
        assert "Authorization" in preflight.headers["Access-Control-Allow-Headers"]
        elsewhere = browser.options("/api/events/tickets/", headers={"Origin": "https://evil.test"})
        assert "Access-Control-Allow-Origin" not in elsewhere.headers

        asked = browser.post(
            "/api/events/tickets/",
            json={"topics": ["news"]},
            headers={"Origin": ALLOWED_ORIGIN, "Authorization": f"Token {user.token}"},
        )
        assert asked.status_code == 201, asked.text
        assert asked.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN
        with browser.stream(
            "GET", asked.json()["url"], headers={"Origin": ALLOWED_ORIGIN}
        ) as response:
            assert response.status_code == 200
            assert response.headers["Access-Control-Allow-Origin"] == ALLOWED_ORIGIN


def test_a_ticket_expires(pair: Pair, user: User) -> None:
    with api(pair.first, user.token) as client:
        issued = ticket_for(client)
    time.sleep(TICKET_SECONDS + 1.5)
    with httpx.Client(base_url=pair.first.url, timeout=10) as anonymous:
        refused = stream_status(anonymous, ticket=issued["ticket"])
    assert refused.status_code == 401
    assert "expired" in refused.json()["detail"]


def test_a_tickets_stream_ends_and_the_ticket_is_refused_when_its_session_ends(
    pair: Pair, user: User
) -> None:
    with signed_in_browser(pair.first, user.name, user.password) as browser:
        csrf = {"X-CSRFToken": browser.cookies["csrftoken"]}
        response = browser.post("/api/events/tickets/", json={"topics": []}, headers=csrf)
        assert response.status_code == 201, response.text
        issued = response.json()
        with httpx.Client(base_url=pair.second.url, timeout=10) as page:
            with page.stream("GET", issued["url"]) as opened:
                assert opened.status_code == 200
                stream = EventStream(opened)
                stream.take_all(1)
                browser.post("/accounts/logout/", headers=csrf)
                assert revoked_reason(stream) == "session-ended"
            refused = stream_status(page, ticket=issued["ticket"])
            assert refused.status_code == 401
            assert "revoked" in refused.json()["detail"]


@pytest.mark.parametrize("how", ["deleted by an admin", "cleared as expired"])
def test_streams_end_when_their_session_ends_without_logout(
    pair: Pair, user: User, how: str
) -> None:
    """A session deleted in the database by another process (no logout): its own stream and the
    stream of a ticket it issued end with ``session-ended``; they cannot reconnect."""
    with signed_in_browser(pair.first, user.name, user.password) as browser:
        session_key = browser.cookies["sessionid"]
        csrf = {"X-CSRFToken": browser.cookies["csrftoken"]}
        issued = browser.post("/api/events/tickets/", json={"topics": []}, headers=csrf).json()
        with (
            httpx.Client(base_url=pair.second.url, timeout=10) as page,
            page.stream("GET", issued["url"]) as by_ticket,
            open_stream(browser) as by_session,
        ):
            assert by_ticket.status_code == 200
            ticket_stream = EventStream(by_ticket)
            ticket_stream.take_all(1)
            by_session.take_all(1)
            if how == "deleted by an admin":
                end = f"Session.objects.filter(session_key={session_key!r}).delete()"
            else:  # what clearsessions deletes
                end = (
                    f"Session.objects.filter(session_key={session_key!r})"
                    ".update(expire_date=timezone.now())\n"
                    "call_command('clearsessions')"
                )
            pair.shell(
                "from django.contrib.sessions.models import Session\n"
                "from django.core.management import call_command\n"
                "from django.utils import timezone\n" + end
            )
            assert revoked_reason(by_session) == "session-ended"
            assert revoked_reason(ticket_stream) == "session-ended"
            assert stream_status(page, ticket=issued["ticket"]).status_code == 401
        assert stream_status(browser).status_code in (401, 403)


def test_a_ticket_of_a_deleted_token_is_refused(pair: Pair, user: User) -> None:
    with api(pair.first, user.token) as client:
        issued = ticket_for(client, "news")
    pair.shell(
        "from rest_framework.authtoken.models import Token\n"
        f"Token.objects.filter(key={user.token!r}).delete()"
    )
    with httpx.Client(base_url=pair.second.url, timeout=10) as anonymous:
        refused = stream_status(anonymous, ticket=issued["ticket"])
    assert refused.status_code == 401
    assert refused.json()["detail"] == "This stream ticket was revoked (token-deleted)."


# --- One process, no Redis ----------------------------------------------------------------------


def test_without_redis_logout_and_the_stream_limit_work_in_the_one_process(
    live_project: LiveProject, tmp_path
) -> None:
    with (
        daphne_server(
            live_project,
            tmp_path,
            REDIS_URL="",
            EVENTS_MAX_STREAMS_PER_USER="1",
            SESSION_COOKIE_SECURE="false",
            CSRF_COOKIE_SECURE="false",
        ) as server,
        signed_in_browser(server, "bob") as browser,
    ):
        with open_stream(browser) as stream:
            stream.take_all(1)
            assert stream_status(browser).status_code == 429
            browser.post("/accounts/logout/", headers={"X-CSRFToken": browser.cookies["csrftoken"]})
            assert revoked_reason(stream) == "session-ended"
        assert stream_status(browser).status_code == 401
