"""/healthz says the process is up; /readyz also checks the database and the event broker."""

from collections.abc import Iterator

import pytest
from django.db import connections
from django.test import Client

from .services import RedisServer, free_port


def checks(**failed: str) -> dict[str, str]:
    """What /readyz reports: every check ok but those named."""
    return {"database": "ok", "broker": "ok", "feed": "ok", "accepting": "ok", **failed}


def test_healthz_answers_without_touching_the_database(client: Client) -> None:
    # No django_db mark: a query here would fail the test.
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok"}


def test_probes_are_not_redirected_to_https(client: Client, settings) -> None:
    """Probes come over plain HTTP from inside the network, even when every page needs HTTPS."""
    settings.SECURE_SSL_REDIRECT = True
    assert client.get("/healthz").status_code == 200
    assert client.get("/admin/login/").status_code == 301


@pytest.mark.django_db
def test_readyz_is_ok_with_the_in_process_broker(client: Client, settings) -> None:
    settings.REDIS_URL = ""
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json() == {"status": "ok", "checks": checks()}


@pytest.mark.django_db
def test_readyz_is_ok_with_redis(client: Client, settings, redis_service: RedisServer) -> None:
    settings.REDIS_URL = redis_service.url
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == checks()


@pytest.mark.django_db
def test_readyz_names_an_unreachable_broker(client: Client, settings) -> None:
    settings.REDIS_URL = f"redis://127.0.0.1:{free_port()}/0"  # nothing listens there
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": checks(broker="error"),
    }


@pytest.fixture
def unreachable_database(django_db_blocker, monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """The default database replaced by one that cannot be reached: its name leads nowhere."""
    working = connections["default"]
    # Without the pool (PostgreSQL's), which is shared by alias and would hand out a working
    # connection.
    options = {k: v for k, v in working.settings_dict["OPTIONS"].items() if k != "pool"}
    unreachable = type(working)(
        {**working.settings_dict, "NAME": "/nonexistent/directory/db.sqlite3", "OPTIONS": options},
        "default",
    )
    # Django keeps its connections in a private Local: no public API swaps one in.
    monkeypatch.setattr(connections._connections, "default", unreachable)  # type: ignore[attr-defined]
    with django_db_blocker.unblock():
        yield
    unreachable.close()


def test_readyz_names_an_unreachable_database(
    client: Client, settings, unreachable_database: None
) -> None:
    settings.REDIS_URL = ""
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json() == {
        "status": "unavailable",
        "checks": checks(database="error"),
    }
