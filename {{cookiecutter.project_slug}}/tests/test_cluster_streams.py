"""Streams from a Redis Cluster (three masters, three replicas), over two Daphne processes, with
history in 16 partitions: every event reaches exactly the streams that read its channel, once and
in order; its channels are shard channels on the master that serves their slot; a client that
resumes with its last id, however many partitions it reads, gets exactly the rest."""

import asyncio
import json
import random
import threading
import time
import zlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field

import httpx
import pytest

from .cluster import RedisClusterDeployment, key_slot, redis_cluster
from .crowd import NOT_SUBSCRIBED, Crowd, StreamClient, allow_open_files, wait_for
from .services import Daphne, LiveProject, api, daphne_server, publish
from .sse import open_stream

pytestmark = [pytest.mark.proof, pytest.mark.cluster, pytest.mark.timeout(600)]

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
        # Limits checked on every stream and publish (their keys are in other slots than the
        # events'), never reached.
        "EVENTS_STREAM_RATE": "1000000/min",
        "EVENTS_PUBLISH_RATE": "1000000/min",
        "EVENTS_MAX_STREAMS_PER_USER": "100000",
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
    # Each acknowledged event's id and when its acknowledgement came (time.time()), to tell what
    # went wrong when a client missed one.
    ids: dict[int, str] = field(default_factory=dict)
    acknowledged_at: dict[int, float] = field(default_factory=dict)
    failures: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)


USERS = ("alice", "bob", "staff")


def publish_through_the_api(
    servers: list[Daphne],
    live_project: LiveProject,
    numbers: range,
    published: Published,
    retry_for: float = 0.0,
) -> None:
    """Each number once, to everyone, a user or a topic, through both servers in turn; a 503 or a
    lost answer is retried with the event's Idempotency-Key for up to ``retry_for`` seconds."""
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
            key = {"Idempotency-Key": f"cluster-{number}"}
            deadline = time.monotonic() + retry_for
            while True:
                client = clients[number % len(clients)]
                try:
                    response = client.post("/api/events/", json=body, headers=key)
                    status = response.status_code
                except httpx.HTTPError:
                    status = 0
                if status not in (0, 503) or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
            with published.lock:
                if status in (200, 201):
                    published.channels[number] = channel
                    published.ids[number] = response.json()["id"]
                    published.acknowledged_at[number] = time.time()
                else:
                    published.failures.append(f"{number}: {status}")
    finally:
        for client in clients:
            client.close()


def publish_in_python(
    live_project: LiveProject,
    cluster: RedisClusterDeployment,
    numbers: range,
    published: Published,
    retry_for: float = 0.0,
) -> None:
    """Through publish(), in a process of the project's (as a worker or a shell would)."""
    code = (
        "import json\n"
        "from importlib import import_module\n"
        "from django.apps import apps\n"
        "package = apps.get_app_config('events').module.__name__\n"
        "publish = import_module(package + '.publish').publish\n"
        "import time\n"
        "BrokerUnavailable = import_module(package + '.exceptions').BrokerUnavailable\n"
        f"for number in range({numbers.start}, {numbers.stop}):\n"
        f"    topic = {TOPICS!r}[number % {len(TOPICS)}]\n"
        # As a careful worker does: a failure is retried with the event's key, for a while.
        f"    deadline = time.monotonic() + {retry_for}\n"
        "    while True:\n"
        "        try:\n"
        "            event = publish('n', number, topic=topic, key=f'python-{number}')\n"
        "            break\n"
        "        except BrokerUnavailable:\n"
        "            if time.monotonic() > deadline:\n"
        "                raise\n"
        "            time.sleep(0.1)\n"
        "    print(json.dumps([number, 'topic.' + topic, event.id, time.time()]))\n"
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
                number, channel, event_id, acknowledged_at = json.loads(line)
                published.channels[number] = channel
                published.ids[number] = event_id
                published.acknowledged_at[number] = acknowledged_at


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
    retry_for: float = 0.0,
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
        classic = {str(c) for node in cluster.live_nodes() for c in node.client().pubsub_channels()}
        api = threading.Thread(
            target=publish_through_the_api,
            args=(servers, live_project, api_numbers, published, retry_for),
        )
        api.start()
        python = asyncio.create_task(
            asyncio.to_thread(
                publish_in_python, live_project, cluster, python_numbers, published, retry_for
            )
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
            missing = sorted(wanted - set(received))[:10]
            missed = tuple((n, channels[n]) for n in missing)
            wrong.append(
                (user, client.topics, len(wanted), len(received), exact, in_order, *missed)
            )
    return wrong


def what_went_wrong(run: Run, live_project: LiveProject, cluster: RedisClusterDeployment) -> str:
    """For the first clients that missed events: each missed event (its id, when it was
    acknowledged, whether its partition's history holds it) and the client's connections (when,
    resuming from where in that partition, how they ended). Times in seconds since the run's first
    acknowledgement."""
    start = min(run.published.acknowledged_at.values(), default=0.0)
    clock = time.time() - time.monotonic()  # connections are timed with time.monotonic()
    lines: list[str] = []
    for client, user in list(zip(run.clients, run.users, strict=True)):
        wanted = expected(run.published, client, live_project, user)
        missed = sorted(wanted - set(numbers_received(client)))
        if not missed or client.resets or len(lines) > 40:
            continue
        lines.append(f"{user} {client.topics} missed:")
        partitions = set()
        for number in missed[:5]:
            channel, event_id = run.published.channels[number], run.published.ids[number]
            partition = zlib.crc32(channel.encode()) % PARTITIONS
            partitions.add(partition)
            key = "{" + f"{PREFIX}.{partition}" + "}:history"
            held = bool(cluster.owner_of_key(key).client().xrange(key, event_id, event_id))
            at = run.published.acknowledged_at.get(number, start) - start
            lines.append(
                f"  {number} on {channel} (partition {partition}): {event_id}, acknowledged at "
                f"{at:.2f}, {'in' if held else 'NOT in'} history"
            )
        for connection in client.connections:
            resumed = [
                part
                for part in (connection.last_event_id or "").split(".")
                if part.partition("_")[0] in {str(p) for p in partitions}
            ]
            lines.append(
                f"  connection at {connection.opened_at + clock - start:.2f} from {resumed}: "
                f"{connection.events} events, ended {connection.ended!r}"
            )
    return "\n".join(lines)


def test_every_event_reaches_exactly_its_streams_once_on_shard_channels(
    servers: list[Daphne], cluster: RedisClusterDeployment, live_project: LiveProject
) -> None:
    run = asyncio.run(stream_while_publishing(servers, cluster, live_project, range(800)))
    assert not run.published.failures, run.published.failures[:5]
    assert len(run.published.channels) == 800
    assert wrong_deliveries(run, live_project) == [], what_went_wrong(run, live_project, cluster)
    assert run.settled
    assert not any(client.resets for client in run.clients)
    # A healthy cluster subscribes every stream: none is turned away for want of Redis.
    assert not [c for c in run.clients if any(m.comment == NOT_SUBSCRIBED for m in c.comments)]
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


def test_a_client_that_resumes_with_its_last_id_gets_exactly_the_rest(
    servers: list[Daphne], live_project: LiveProject
) -> None:
    topics = tuple(TOPICS[:8])  # in several partitions
    with (
        api(servers[0], live_project.tokens["alice"]) as first,
        api(servers[1], live_project.tokens["alice"]) as second,
        api(servers[1], live_project.tokens["staff"]) as publisher,
    ):

        def publish_numbers(numbers: range) -> None:
            for number in numbers:
                publish(publisher, "n", number, topic=topics[number % len(topics)])

        with open_stream(first, topics=topics) as stream:
            publish_numbers(range(1_000, 1_040))
            received = stream.take(20)
        last = received[-1].id
        assert last is not None
        assert last.startswith(f"p{PARTITIONS}.")
        assert last.count("_") >= 2, last  # a position in more than one partition
        publish_numbers(range(1_040, 1_080))  # while it is away
        with open_stream(second, topics=topics, last_event_id=last) as stream:
            rest = stream.take(60)
    assert [json.loads(m.data) for m in received] == list(range(1_000, 1_020))
    numbers = [json.loads(m.data) for m in rest]
    assert sorted(numbers) == list(range(1_020, 1_080)), numbers
    for topic in topics:  # in order on each channel
        on = [n for n in numbers if topics[n % len(topics)] == topic]
        assert on == sorted(on)
    print(f"RELIABILITY: cluster resume after 20 of 80 events across partitions, id {last!r}")


def test_a_slot_migrated_while_events_flow_loses_nothing(
    servers: list[Daphne], cluster: RedisClusterDeployment, live_project: LiveProject
) -> None:
    """``redis-cli --cluster reshard`` moves a partition's slot (its history, idempotency keys and
    shard channels) to another master while events are published to it and read from it."""
    source, target = cluster.masters()[:2]
    owned = sorted(cluster.slots_of(source))
    # The partition of the source's with the lowest slot: reshard takes the lowest slots first.
    partition_slots = {key_slot("{" + f"{PREFIX}.{p}" + "}") for p in range(PARTITIONS)}
    slot = min(s for s in owned if s in partition_slots)
    moved: list[frozenset[int]] = []

    async def reshard() -> None:
        await asyncio.sleep(1)
        moved.append(
            await asyncio.to_thread(cluster.reshard, owned.index(slot) + 1, source, target)
        )

    run = asyncio.run(
        stream_while_publishing(
            servers, cluster, live_project, range(2_000, 2_800), reshard, retry_for=20
        )
    )
    assert slot in moved[0]
    assert cluster.owner_of_slot(slot).port == target.port
    assert not run.published.failures, run.published.failures[:5]
    assert wrong_deliveries(run, live_project) == [], what_went_wrong(run, live_project, cluster)
    assert run.settled
    resets = sum(len(client.resets) for client in run.clients)
    print(
        f"RELIABILITY: cluster reshard of {len(moved[0])} slots (a partition's among them) while "
        f"800 events flowed: 0 lost, {resets} resets"
    )


def test_a_master_killed_mid_run_fails_over_without_losing_what_was_acknowledged(
    servers: list[Daphne], cluster: RedisClusterDeployment, live_project: LiveProject
) -> None:
    """Last of the module: the cluster goes on with a master that has no replica."""
    victim = cluster.masters()[0]
    timings: dict[str, float] = {}

    async def kill() -> None:
        await asyncio.sleep(1)
        killed = time.monotonic()
        timings["killed at"] = time.time()
        cluster.kill_master(victim)
        assert await wait_for(lambda: cluster.failed_over(victim), within=30, blocking=True)
        timings["failed over"] = time.monotonic() - killed

    run = asyncio.run(
        stream_while_publishing(
            servers, cluster, live_project, range(3_000, 3_800), kill, retry_for=20
        )
    )
    assert not run.published.failures, run.published.failures[:5]
    start = min(run.published.acknowledged_at.values())
    assert wrong_deliveries(run, live_project) == [], (
        f"{victim.port} killed at {timings['killed at'] - start:.2f}\n"
        + what_went_wrong(run, live_project, cluster)
    )
    assert run.settled
    resets = sum(len(client.resets) for client in run.clients)
    print(
        f"RELIABILITY: cluster master SIGKILLed mid-run: failed over in "
        f"{timings['failed over']:.1f}s, {len(run.published.channels)} acknowledged, 0 lost, "
        f"{resets} resets"
    )
