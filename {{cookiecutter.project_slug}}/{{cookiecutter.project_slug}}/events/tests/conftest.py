from collections.abc import Iterator

import pytest

from tests.services import RedisServer, redis_server


@pytest.fixture(scope="session")
def redis_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A real redis-server of these tests' own (each test uses a key prefix of its own)."""
    server: RedisServer
    with redis_server(tmp_path_factory.mktemp("redis")) as server:
        yield server.url
