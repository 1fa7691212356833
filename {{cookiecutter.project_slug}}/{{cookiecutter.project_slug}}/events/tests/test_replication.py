"""A publish acknowledged only once a replica holds it (``EVENTS_PUBLISH_REPLICAS``), on a real
Redis master and replica: what its publisher was told about survives a failover to the replica."""

import asyncio
import os
import signal
import statistics
import time
from collections.abc import Iterator

import pytest
import redis
from django.test import override_settings

from tests.services import RedisServer, redis_server

from .. import apublish, publish
from ..broker.base import Once
from ..exceptions import BrokerUnavailable

PREFIX = "test-replicas"


@pytest.fixture(scope="module")
def master_and_replica(
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[tuple[RedisServer, RedisServer]]:
    with (
        redis_server(tmp_path_factory.mktemp("master")) as master,
        redis_server(tmp_path_factory.mktemp("replica"), replica_of=master.port) as replica,
    ):
        yield master, replica


def test_a_publish_is_acknowledged_once_a_replica_holds_it_and_refused_if_none_confirms(
    master_and_replica: tuple[RedisServer, RedisServer],
) -> None:
    master, replica = master_and_replica
    on_replica = redis.Redis.from_url(replica.url)
    settings: dict[str, object] = {
        "REDIS_URL": master.url,
        "EVENTS_REDIS_PREFIX": PREFIX,
        "EVENTS_PUBLISH_REPLICA_TIMEOUT_MILLISECONDS": 300,
    }
    with override_settings(**settings, EVENTS_PUBLISH_REPLICAS=0):
        master_only = median_publish_seconds()
    with override_settings(**settings, EVENTS_PUBLISH_REPLICAS=1):
        replicated = median_publish_seconds()
        event = publish("note", 1, key="invoice-1")
        async_event = asyncio.run(apublish("note", 2))
        # On the replica the moment the publisher was told: a failover now keeps them, and the
        # idempotency key too (a retry after the failover publishes nothing).
        for event_id in (event.id, async_event.id):
            assert event_id is not None
            assert on_replica.xrange(f"{PREFIX}:history", event_id, event_id)
        assert on_replica.exists(f"{PREFIX}:idempotency:{Once('invoice-1', 1).digest}")

        os.kill(replica.pid, signal.SIGSTOP)
        try:
            started = time.perf_counter()
            with pytest.raises(BrokerUnavailable, match="0 of 1 Redis replicas confirmed"):
                publish("note", 3)
            refused_in = time.perf_counter() - started
            with pytest.raises(BrokerUnavailable, match="0 of 1 Redis replicas confirmed"):
                asyncio.run(apublish("note", 4))
        finally:
            os.kill(replica.pid, signal.SIGCONT)
    print(
        f"RELIABILITY: publish() median over 50 on loopback: {master_only * 1000:.2f} ms "
        f"acknowledged by the master alone, {replicated * 1000:.2f} ms with "
        f"EVENTS_PUBLISH_REPLICAS=1; refused after {refused_in:.2f} s with the replica stopped "
        "(timeout 0.3 s)"
    )


def median_publish_seconds() -> float:
    durations = []
    for n in range(50):
        started = time.perf_counter()
        publish("timed", n)
        durations.append(time.perf_counter() - started)
    return statistics.median(durations)
