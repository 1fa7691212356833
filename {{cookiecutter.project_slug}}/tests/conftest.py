from collections.abc import Iterator

import pytest

from .services import Daphne, LiveProject, RedisServer, daphne_server, prepare_project, redis_server


@pytest.fixture(scope="session")
def live_project(tmp_path_factory: pytest.TempPathFactory) -> LiveProject:
    """A migrated database with users alice, bob (plain) and staff (may publish), and tokens."""
    return prepare_project(tmp_path_factory.mktemp("live"))


@pytest.fixture(scope="session")
def redis_service(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisServer]:
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server


@pytest.fixture(scope="module", params=["in-process", "redis"])
def broker_settings(request: pytest.FixtureRequest, tmp_path_factory) -> dict[str, str]:
    """Settings selecting each broker in turn, with a Redis key prefix of the module's own."""
    if request.param == "in-process":
        return {"REDIS_URL": ""}
    redis_url = request.getfixturevalue("redis_service").url
    return {"REDIS_URL": redis_url, "EVENTS_REDIS_PREFIX": f"test-{request.module.__name__}"}


@pytest.fixture(scope="module")
def server(
    live_project: LiveProject, broker_settings: dict[str, str], tmp_path_factory
) -> Iterator[Daphne]:
    """A Daphne process serving the project, on each broker in turn; heartbeats every 0.5 s."""
    with daphne_server(
        live_project,
        tmp_path_factory.mktemp("daphne"),
        EVENTS_HEARTBEAT_SECONDS="0.5",
        **broker_settings,
    ) as daphne:
        yield daphne
