"""Streams from a Redis Cluster (three masters, three replicas), over two Daphne processes, with
history in 16 partitions: every event reaches exactly the streams that read its channel, once and
in order; its channels are shard channels on the master that serves their slot; a client that
resumes with its last id, however many partitions it reads, gets exactly the rest."""

import asyncio
import json
import random
import threading
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest

from .cluster import RedisClusterDeployment, redis_cluster
from .crowd import Crowd, StreamClient, allow_open_files, wait_for
from .services import Daphne, LiveProject, daphne_server

pytestmark = pytest.mark.timeout(600)

PARTITIONS = 16
TOPICS = [f"t{number}" for number in range(30)]
STREAMS = 300
TOPICS_PER_STREAM = 4
PREFIX = "cluster"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisClusterDeployment]:
    with redis_cluster(tmp_path_factory.mktemp("cluster")) as deployment:
        yield deployment


@pytest.fixture(scope="module")
def servers(
    live_project: LiveProject,
    cluster: RedisClusterDeployment,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[list[Daphne]]:
    allow_open_files(4 * STREAMS + 1000)
    settings = {
        "REDIS_URL": cluster.url,
        "EVENTS_REDIS_PREFIX": PREFIX,
        "EVENTS_PARTITIONS": str(PARTITIONS),
        "EVENTS_PUBLIC_TOPICS": "t*",
        "EVENTS_STREAM_RATE": "",
        "EVENTS_PUBLISH_RATE": "",
        "EVENTS_MAX_STREAMS_PER_USER": "0",
        # Streams end every few seconds: clients resume by id all along.
        "EVENTS_STREAM_MAX_SECONDS": "5",
        "EVENTS_RETRY_MILLISECONDS": "200",
    }
    directory = tmp_path_factory.mktemp("daphnes")
    with (
        daphne_server(live_project, directory, **settings) as first,
        daphne_server(live_project, directory, **settings) as second,
    ):
        yield [first, second]


@dataclass
class Published:
    """The acknowledged events, by their number (each event's data), with their channel."""

    channels: dict[int, str] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


USERS = ("alice", "bob", "staff")


def publish_through_the_api(
    servers: list[Daphne], live_project: LiveProject, numbers: range, published: Published
) -> None:
    """Each number once, to everyone, a user or a topic, through both servers in turn."""
    rng = random.Random(numbers.start)
    headers = {"Authorization": f"Token {live_project.tokens['staff']}"}
    clients = [httpx.Client(base_url=s.url, headers=headers, timeout=10) for s in servers]
    try:
        for number in numbers:
            target = rng.choice(["broadcast", "user", "topic", "topic", "topic"])
            body: dict[str, object] = {"type": "n", "data": number}
            if target == "user":
                user = rng.choice(USERS)
                body["user"] = int(live_project.tokens[f"{user}_pk"])
                channel = f"user.{body['user']}"
            elif target == "topic":
                body["topic"] = rng.choice(TOPICS)
                channel = f"topic.{body['topic']}"
            else:
                channel = "broadcast"
            response = clients[number % len(clients)].post("/api/events/", json=body)
            with published.lock:
                if response.status_code == 201:
                    published.channels[number] = channel
                else:
                    published.failures.append(f"{number}: {response.status_code} {response.text}")
    finally:
        for client in clients:
            client.close()


def publish_in_python(
    live_project: LiveProject, cluster: RedisClusterDeployment, numbers: range, published: Published
) -> None:
    """Through publish(), in a process of the project's (as a worker or a shell would)."""
    code = (
        "import json\n"
        "from importlib import import_module\n"
        "from django.apps import apps\n"
        "package = apps.get_app_config('events').module.__name__\n"
        "publish = import_module(package + '.publish').publish\n"
        f"for number in range({numbers.start}, {numbers.stop}):\n"
        f"    topic = {TOPICS!r}[number % {len(TOPICS)}]\n"
        "    publish('n', number, topic=topic)\n"
        "    print(json.dumps([number, 'topic.' + topic]))\n"
    )
    result = live_project.manage(
        "shell",
        "-c",
        code,
        REDIS_URL=cluster.url,
        EVENTS_REDIS_PREFIX=PREFIX,
        EVENTS_PARTITIONS=str(PARTITIONS),
    )
    assert result.returncode == 0, result.stderr[-3000:]
    with published.lock:
        for line in result.stdout.splitlines():
            if line.startswith("["):
                number, channel = json.loads(line)
                published.channels[number] = channel


def channels_of(client: StreamClient, live_project: LiveProject, user: str) -> set[str]:
    return {
        "broadcast",
        f"user.{live_project.tokens[user + '_pk']}",
        *(f"topic.{t}" for t in client.topics),
    }


def numbers_received(client: StreamClient) -> list[int]:
    return [json.loads(m.data) for m in client.events if m.event == "n"]


def stream_clients(
    servers: list[Daphne], live_project: LiveProject, count: int, seed: int
) -> tuple[list[StreamClient], list[str]]:
    rng = random.Random(seed)
    users = [USERS[n % len(USERS)] for n in range(count)]
    clients = [
        StreamClient(
            servers[n % len(servers)].port,
            live_project.tokens[users[n]],
            topics=tuple(rng.sample(TOPICS, TOPICS_PER_STREAM)),
        )
        for n in range(count)
    ]
    return clients, users


@dataclass
class Run:
    published: Published
    clients: list[StreamClient]
    users: list[str]
    settled: bool
    shard_channels: dict[int, set[str]]  # by node port, while the clients streamed
    classic_channels: set[str]
    sources: tuple[range, range]  # the numbers published through the API, then in Python


async def stream_while_publishing(
    servers: list[Daphne],
    cluster: RedisClusterDeployment,
    live_project: LiveProject,
    numbers: range,
    scenario: Callable[[], Awaitable[None]] | None = None,
) -> Run:
    """Clients stream while events are published through the API (and, the last 200 numbers,
    through publish() in Python), and while ``scenario`` runs; then until every client has every
    acknowledged event of its channels (or a reset), for at most a minute."""
    clients, users = stream_clients(servers, live_project, STREAMS, seed=numbers.start)
    published = Published()
    api_numbers = range(numbers.start, numbers.stop - 200)
    python_numbers = range(numbers.stop - 200, numbers.stop)
    async with Crowd(clients) as crowd:
        await crowd.wait_opened(within=120)
        shard_channels = {
            master.port: set(master.client().execute_command("PUBSUB", "SHARDCHANNELS"))
            for master in cluster.masters()
        }
        classic = {c for node in cluster.live_nodes() for c in node.client().pubsub_channels()}
        api = threading.Thread(
            target=publish_through_the_api, args=(servers, live_project, api_numbers, published)
        )
        api.start()
        python = asyncio.create_task(
            asyncio.to_thread(publish_in_python, live_project, cluster, python_numbers, published)
        )
        if scenario is not None:
            await scenario()
        await python
        await asyncio.to_thread(api.join)

        def settled() -> bool:
            return all(
                set(numbers_received(client)) >= expected(published, client, live_project, user)
                or client.resets
                for client, user in zip(clients, users, strict=True)
            )

        done = await wait_for(settled, within=60)
        assert crowd.running() == len(clients)
    return Run(
        published, clients, users, done, shard_channels, classic, (api_numbers, python_numbers)
    )


def expected(
    published: Published, client: StreamClient, live_project: LiveProject, user: str
) -> set[int]:
    readable = channels_of(client, live_project, user)
    return {number for number, channel in published.channels.items() if channel in readable}


def wrong_deliveries(run: Run, live_project: LiveProject) -> list[tuple[object, ...]]:
    """Clients that missed an acknowledged event (without a reset), received one twice or one
    not theirs, or received a channel's events out of the order they were published in."""
    wrong: list[tuple[object, ...]] = []
    for client, user in zip(run.clients, run.users, strict=True):
        readable = channels_of(client, live_project, user)
        wanted = expected(run.published, client, live_project, user)
        received = numbers_received(client)
        complete = set(received) >= wanted or bool(client.resets)
        channels = run.published.channels
        exact = len(received) == len(set(received)) and all(
            channels.get(n) in readable for n in received
        )
        # Each publisher publishes one event at a time: on a channel, in the order of numbers.
        in_order = all(
            on == sorted(on)
            for channel in readable
            for source in run.sources
            if (on := [n for n in received if n in source and channels.get(n) == channel])
        )
        if not (complete and exact and in_order):
            wrong.append((user, client.topics, len(wanted), len(received), exact, in_order))
    return wrong


def test_every_event_reaches_exactly_its_streams_once_on_shard_channels(
    servers: list[Daphne], cluster: RedisClusterDeployment, live_project: LiveProject
) -> None:
    run = asyncio.run(stream_while_publishing(servers, cluster, live_project, range(0, 800)))
    assert not run.published.failures, run.published.failures[:5]
    assert len(run.published.channels) == 800
    assert run.settled
    assert wrong_deliveries(run, live_project) == []
    assert not any(client.resets for client in run.clients)
    # Shard channels only, each on the master that serves its slot.
    assert run.classic_channels == set()
    for port, names in run.shard_channels.items():
        assert names, f"master {port} holds no shard channel"
        for name in names:
            assert cluster.owner_of_key(name).port == port, name
    wanted = {
        channel
        for client, user in zip(run.clients, run.users, strict=True)
        for channel in channels_of(client, live_project, user)
    }
    subscribed = {
        name.partition("}:")[2] for names in run.shard_channels.values() for name in names
    }
    assert subscribed == wanted | {"control"}
    resumes = sum(len(client.connections) - 1 for client in run.clients)
    deliveries = sum(len(numbers_received(client)) for client in run.clients)
    print(
        f"RELIABILITY: cluster, {STREAMS} streams over 2 Daphnes and {PARTITIONS} partitions: "
        f"800 events, {deliveries} deliveries, {resumes} resumes by id, each event once to "
        f"exactly its streams; {sum(map(len, run.shard_channels.values()))} shard channels"
    )
