"""An event is encoded once per server process, however many streams it reaches.

The server is a real Daphne process serving the project through ``tests/encode_counting_asgi``,
which counts the encoder's calls inside that process; the event is published through that
server's own API (with Redis, the event then also comes back to it through its feed), and with
Redis by another process too (``manage.py publish_event``), as a worker publishes.
"""

import asyncio
from collections.abc import Callable, Iterator

import httpx
import pytest

from .encode_counting_asgi import COUNTS_PATH
from .services import Daphne, LiveProject, api, daphne_server, publish, raw_streams

pytestmark = pytest.mark.timeout(120)

STREAMS = 200
PROBE = "encode-probe"


@pytest.fixture(scope="module")
def counting_server(
    live_project: LiveProject, broker_settings: dict[str, str], tmp_path_factory
) -> Iterator[Daphne]:
    with daphne_server(
        live_project,
        tmp_path_factory.mktemp("encoding"),
        application="tests.encode_counting_asgi:application",
        **broker_settings,
    ) as daphne:
        yield daphne


def encodes(server: Daphne) -> dict[str, int]:
    response = httpx.get(server.url + COUNTS_PATH, timeout=10)
    response.raise_for_status()
    return response.json()


async def receive_on_every_stream(
    server: Daphne, token: str, publish_probe: Callable[[], object]
) -> int:
    """Open STREAMS streams, publish once, and return how many streams received the event."""
    async with raw_streams(server, token, STREAMS) as readers:
        await asyncio.to_thread(publish_probe)
        received = await asyncio.gather(
            *(
                asyncio.wait_for(reader.readuntil(f"event: {PROBE}\n".encode()), 20)
                for reader in readers
            )
        )
        return len(received)


def test_one_event_is_encoded_once_for_all_its_streams(
    counting_server: Daphne, live_project: LiveProject, broker_settings: dict[str, str]
) -> None:
    def publish_through_the_server() -> None:
        with api(counting_server, live_project.tokens["staff"]) as staff:
            publish(staff, PROBE, {"n": 1})

    def publish_from_another_process() -> None:
        result = live_project.manage("publish_event", PROBE, '{"n": 2}', **broker_settings)
        assert result.returncode == 0, result.stderr

    publishers = [publish_through_the_server]
    if broker_settings["REDIS_URL"]:
        publishers.append(publish_from_another_process)
    assert encodes(counting_server).get(PROBE, 0) == 0
    for published, publish_probe in enumerate(publishers, start=1):
        received = asyncio.run(
            receive_on_every_stream(counting_server, live_project.tokens["alice"], publish_probe)
        )
        assert received == STREAMS
        assert encodes(counting_server)[PROBE] == published
