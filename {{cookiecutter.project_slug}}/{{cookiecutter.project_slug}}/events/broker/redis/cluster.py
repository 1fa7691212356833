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
"""

from typing import Any

import redis
from redis.asyncio import cluster as async_cluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import ClusterNode, RedisCluster
from redis.retry import Retry

from .urls import ClusterUrl


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
