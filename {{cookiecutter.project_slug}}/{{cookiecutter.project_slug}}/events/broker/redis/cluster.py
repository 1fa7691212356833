"""Clients of a Redis Cluster (a ``redis+cluster://`` URL, ``urls.py``): the broker's sync client
and its async one (``connection.py``).

Both start from the URL's nodes, ask them for the rest and for who serves which slot, and send
each command to the master of its key's slot (never to a replica: a replica's data lags behind).

Retries, measured with redis-py 8.1: the cluster clients read only the count of their ``retry``
(its backoff is ignored), and each retry re-reads the slot map and sends the command again, after
a connection error or a timeout too, when the command may have run. ``retry=Retry(NoBackoff(), 0)``
makes that count 0 (``cluster_error_retry_attempts``, the older way to say it, is deprecated and
ignored once ``retry`` is given); the nodes' own connections never retry (redis-py sets that).
So a command is sent at most once, as with one server: the publish script is not idempotent.
What redis-py still does within one attempt is follow MOVED and ASK redirections and wait out
TRYAGAIN, which are refusals of a command that did not run: safe to send elsewhere.

``on_the_master_of()`` runs commands on one connection to the master of a key's slot, for what a
cluster client cannot route: ``WAIT`` has no key, so its pipeline would send it to a node of its
own choosing, where it would count another master's replicas.
"""

import contextlib
from collections.abc import Callable
from typing import Any, TypeVar

import redis
from redis.asyncio import cluster as async_cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .urls import ClusterUrl

Result = TypeVar("Result")


def cluster_client(url: ClusterUrl, **options: Any) -> RedisCluster:
    """A client of the cluster; ``options`` are its connections' (timeouts, keepalive...).

    It connects as it is built, to learn the slot map: raises redis.ConnectionError (like any
    client's first command would) when no node of the URL answers."""
    try:
        return RedisCluster(
            startup_nodes=[
                ClusterNode(host, port)  # type: ignore[no-untyped-call]
                for host, port in url.nodes
            ],
            retry=Retry(NoBackoff(), 0),
            **node_options(url),
            **options,
        )
    except redis.exceptions.RedisClusterException as error:
        # Not a RedisError: the callers' "Redis is unavailable" handling would miss it. Its
        # message names nodes (host:port), never the password.
        raise redis.ConnectionError(str(error)) from error


def async_cluster_client(
    url: ClusterUrl, *, max_connections: int, **options: Any
) -> async_cluster.RedisCluster:
    """An async client of the cluster, ``max_connections`` per node. It belongs to the running
    event loop, and learns the slot map on its first command; ``await client.initialize()``
    before subscribing to a shard channel, which does not."""
    return async_cluster.RedisCluster(
        startup_nodes=[async_cluster.ClusterNode(host, port) for host, port in url.nodes],
        retry=AsyncRetry(NoBackoff(), 0),
        max_connections=max_connections,
        **node_options(url),
        **options,
    )


def node_options(url: ClusterUrl) -> dict[str, Any]:
    """The credentials and TLS of the URL, for a connection to one of its nodes."""
    return {"username": url.username, "password": url.password, "ssl": url.tls}


def on_the_master_of(
    cluster: RedisCluster, key: str, run: Callable[[redis.Redis, bool], Result]
) -> Result:
    """``run(client, asking)`` with a client of the master that serves ``key``'s slot, as the
    cluster client last read the slot map; ``asking``: send ``ASKING`` first, on the same
    connection.

    A redirect is a refusal of a command that did not run: ``run`` goes once more, to the master
    it names (MOVED: the slot moved, the map is read again; ASK: the slot is being migrated and
    the key is there already). A failed connection (a master down, before or during a failover),
    or a slot the map gives no master, is raised after the map is read again, so that the
    caller's next try reaches the master the cluster has promoted."""
    try:
        return run(_master_of(cluster, key), False)
    except redis.exceptions.MovedError:
        _read_the_slot_map(cluster)
        return run(_master_of(cluster, key), False)
    except redis.exceptions.AskError as redirect:
        target = _node(cluster, redirect.host, redirect.port)
        if target is None:  # a master the map does not know yet
            _read_the_slot_map(cluster)
            target = _node(cluster, redirect.host, redirect.port)
        if target is None:
            raise
        return run(target, True)
    except (redis.ConnectionError, redis.TimeoutError, redis.exceptions.SlotNotCoveredError):
        _read_the_slot_map(cluster)
        raise


def _master_of(cluster: RedisCluster, key: str) -> redis.Redis:
    node = cluster.get_node_from_key(key)  # type: ignore[no-untyped-call]
    return cluster.get_redis_connection(node)


def _node(cluster: RedisCluster, host: str, port: int) -> redis.Redis | None:
    node = cluster.get_node(host, port)  # type: ignore[no-untyped-call]
    return None if node is None else cluster.get_redis_connection(node)


def _read_the_slot_map(cluster: RedisCluster) -> None:
    # No node answering: the next call fails on its own, and reads it again.
    with contextlib.suppress(redis.exceptions.RedisClusterException, redis.RedisError):
        cluster.nodes_manager.initialize()
