"""What every part of the Redis broker shares: where things are (keys and channels), the clients
that reach them (of one Redis server, of the master Redis Sentinel names: ``sentinel.py``, or of a
Redis Cluster: ``cluster.py``), how a Lua script runs, and the pager that reads a capped stream
(the events' history and the access changes alike).
"""

import asyncio
import hashlib
import threading
import weakref
from collections.abc import AsyncGenerator
from typing import Any, Protocol, cast

import redis
import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode as AsyncClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster
from redis.asyncio.retry import Retry as AsyncRetry
from redis.backoff import NoBackoff
from redis.cluster import RedisCluster
from redis.commands.core import Script
from redis.retry import Retry

from ...core.event import parse_event_id
from ...core.positions import partition_of
from ..base import HISTORY_PAGE_SIZE, HistoryGap
from .cluster import async_cluster_client, cluster_client, node_options
from .sentinel import async_master_client, master_client
from .shards import ShardedPubSub
from .urls import is_cluster_url, is_sentinel_url, parse_cluster_url, parse_sentinel_url

# Connections are few and long-lived; failures should surface fast so that callers see them.
# No retries: redis-py would send a command again after a lost reply, and the publish script is not
# idempotent (two ids for one event). Publishing is at most once per call; the feed reconnects by
# itself and catches up from history.
_CONNECTION_OPTIONS: dict[str, Any] = {
    "socket_connect_timeout": 2,
    "socket_timeout": 5,
    "socket_keepalive": True,
}
# Replays and async publishes share a small pool: connections stay constant however many
# clients connect; a burst of reconnecting clients waits for a free connection instead.
_POOL_SIZE = 8
# A cluster's async client has a pool per node, and redis-py's does not wait for a free
# connection: a command beyond it fails at once (MaxConnectionsError, a ConnectionError). So each
# node gets more than the waiting pool above, for a burst to fit, and still a bound.
_CLUSTER_NODE_POOL_SIZE = 32

# What a failed call to Redis raises. A cluster client also raises RedisClusterException, which is
# not a RedisError, when its slot map names no master for a key (during a failover): Redis is
# unavailable all the same, never a server error.
REDIS_ERRORS = (
    redis.RedisError,
    redis.exceptions.RedisClusterException,
)

# The clients, of one server (or of Sentinel's master) or of a cluster.
SyncClient = redis.Redis | RedisCluster
AsyncClient = aioredis.Redis | AsyncRedisCluster

# An entry of a Redis stream as the clients return it (they do not decode responses).
Entry = tuple[bytes, dict[bytes, bytes]]


class PubSubLike(Protocol):
    """What the feed uses of a Pub/Sub connection (redis-py's, or ``shards.ShardedPubSub``)."""

    async def connect(self) -> None: ...

    async def subscribe(self, *channels: str) -> None: ...

    async def unsubscribe(self, *channels: str) -> None: ...

    # redis-py's signature, which the sharded one follows.
    async def get_message(self, *, timeout: float) -> dict[str, Any] | None: ...  # noqa: ASYNC109

    async def ping(self, message: str) -> Any: ...

    async def aclose(self) -> None: ...


class RedisConnection:
    def __init__(
        self,
        url: str,
        *,
        prefix: str,
        history_length: int,
        max_payload_bytes: int,
        health_check_seconds: float,
        signing_keys: tuple[str, ...],
        partitions: int = 1,
    ) -> None:
        self.url = url
        self.prefix = prefix
        self.partitions = partitions
        self.history_length = history_length
        self.max_payload_bytes = max_payload_bytes
        self.health_check_seconds = health_check_seconds
        self.signing_keys = signing_keys  # the first signs, all verify (signing.py)
        self._sentinel = parse_sentinel_url(url) if is_sentinel_url(url) else None
        self._cluster = parse_cluster_url(url) if is_cluster_url(url) else None
        # Keys and channels carry their partition's hash tag with several partitions, and on a
        # cluster (where a script's keys must share a slot); one Redis with one partition keeps
        # the names it always had.
        self._tagged = partitions > 1 or self._cluster is not None
        self._sync_client: SyncClient | None = None
        self._sync_client_lock = threading.Lock()
        if self._cluster is None:  # these connect on their first command, not here
            self._sync_client = self._new_sync_client()
        # redis.asyncio clients belong to the event loop that created them.
        self._async_clients: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, AsyncClient]
        self._async_clients = weakref.WeakKeyDictionary()

    @property
    def is_cluster(self) -> bool:
        return self._cluster is not None

    # --- Where things are ---------------------------------------------------------------------

    def key(self, *parts: str) -> str:
        """A key of this project's, e.g. ``key("history")``: ``<prefix>:history``."""
        return ":".join((self.prefix, *parts))

    def partition_of(self, channel: str) -> int:
        return partition_of(channel, self.partitions)

    def partition_key(self, partition: int, *parts: str) -> str:
        """A key of one partition, e.g. its history: ``{<prefix>.<partition>}:history`` (in one
        slot with the partition's other keys and channels), or ``<prefix>:history`` untagged."""
        return ":".join((self._space(partition), *parts))

    def pubsub_channel(self, channel: str) -> str:
        """Where ``channel``'s events are published: in its partition's slot."""
        return f"{self._space(self.partition_of(channel))}:{channel}"

    def channel_of(self, pubsub_channel: bytes) -> str:
        name = pubsub_channel.decode(errors="replace")
        if self._tagged:
            return name.partition("}:")[2]
        return name.removeprefix(f"{self.prefix}:")

    @property
    def publish_command(self) -> str:
        """Sharded Pub/Sub on a cluster (a channel lives on its slot's node only; classic Pub/Sub
        copies every message to every node), classic otherwise (any Redis version)."""
        return "SPUBLISH" if self.is_cluster else "PUBLISH"

    def publish(self, pubsub_channel: str, message: bytes) -> None:
        """One message outside the scripts, as they publish."""
        client = self.sync_client
        (client.spublish if self.is_cluster else client.publish)(pubsub_channel, message)

    def _space(self, partition: int) -> str:
        # A hash tag: Redis Cluster places a key by the part between its braces.
        return "{" + f"{self.prefix}.{partition}" + "}" if self._tagged else self.prefix

    # --- Clients and scripts ------------------------------------------------------------------

    @property
    def sync_client(self) -> SyncClient:
        """A cluster's is built on first use: it connects as it is built (to learn the slot map),
        and a cluster not answering yet must not keep the broker from being built: its commands
        fail instead, with a redis.ConnectionError, as one server's would."""
        client = self._sync_client
        if client is None:
            with self._sync_client_lock:  # one client, even when threads race for it
                if self._sync_client is None:
                    self._sync_client = self._new_sync_client()
                client = self._sync_client
        return client

    def _new_sync_client(self) -> SyncClient:
        if self._cluster is not None:
            # The cluster client takes its retry apart from the connections' (cluster.py).
            return cluster_client(self._cluster, **_CONNECTION_OPTIONS)
        if self._sentinel is not None:
            return master_client(self._sentinel, retry=Retry(NoBackoff(), 0), **_CONNECTION_OPTIONS)
        return redis.Redis.from_url(self.url, retry=Retry(NoBackoff(), 0), **_CONNECTION_OPTIONS)

    def async_client(self) -> AsyncClient:
        """This event loop's client. A cluster's learns the slot map on its first command: await
        its ``initialize()`` before subscribing to a shard channel (``cluster.py``)."""
        loop = asyncio.get_running_loop()
        client = self._async_clients.get(loop)
        if client is None:
            client = self._async_clients[loop] = self._new_async_client()
        return client

    def _new_async_client(self) -> AsyncClient:
        if self._cluster is not None:
            return async_cluster_client(
                self._cluster, max_connections=_CLUSTER_NODE_POOL_SIZE, **_CONNECTION_OPTIONS
            )
        options: dict[str, Any] = {
            "max_connections": _POOL_SIZE,
            "timeout": 10,
            "retry": AsyncRetry(NoBackoff(), 0),
            **_CONNECTION_OPTIONS,
        }
        if self._sentinel is not None:
            return async_master_client(self._sentinel, **options)
        pool = aioredis.BlockingConnectionPool.from_url(self.url, **options)
        return aioredis.Redis(connection_pool=pool)

    def script(self, source: str) -> Script:
        """A Lua script, run by its SHA1 (sent in full only when Redis does not know it)."""
        if self._cluster is not None:
            return _ClusterScript(self, source)
        return self.sync_client.register_script(source)

    def pubsub(self) -> "PubSubLike":
        """A new Pub/Sub connection for the feed: classic, or sharded on a cluster."""
        client = self.async_client()
        if isinstance(client, AsyncRedisCluster):
            return ShardedPubSub(client, self._node_pubsub, self.health_check_seconds)
        return cast(PubSubLike, client.pubsub())

    def _node_pubsub(self, node: AsyncClusterNode) -> aioredis.client.PubSub:
        assert self._cluster is not None  # only a cluster's feed asks
        client = aioredis.Redis(
            host=node.host,
            port=int(node.port),
            # Without it, redis-py's PubSub reconnects by itself and subscribes again: the feed
            # would never hear that its connection dropped, nor catch up what came meanwhile.
            retry=AsyncRetry(NoBackoff(), 0),
            **node_options(self._cluster),
            **_CONNECTION_OPTIONS,
        )
        return client.pubsub()

    async def run(self, script: Script, keys: list[str], args: list[str | int]) -> Any:
        """``script`` on the async client (a registered script runs itself on the sync one)."""
        client = self.async_client()
        try:
            return await client.evalsha(script.sha, len(keys), *keys, *args)
        except redis.exceptions.NoScriptError:  # not run: safe to send it in full
            return await client.eval(cast(str, script.script), len(keys), *keys, *args)

    # --- The pager ----------------------------------------------------------------------------

    async def entries_after(self, key: str, after: str | None) -> AsyncGenerator[list[Entry], None]:
        """The entries of the stream at ``key`` after the id ``after`` (None: from the oldest), in
        order, a page at a time; the next page is read once the caller asks for it. Raises
        HistoryGap if ``after`` is not (or no longer) in the stream, and redis's errors."""
        client = self.async_client()
        start = "-" if after is None else after
        anchor = None if after is None else parse_event_id(after)
        while True:
            # Each page starts at the anchor, inclusive: finding it first proves that nothing
            # after it was trimmed away meanwhile (say, while a slow client read the last page).
            # Bytes (the client does not decode responses); redis-py types them loosely.
            entries = cast(
                list[Entry],
                await client.xrange(
                    key, start, "+", count=HISTORY_PAGE_SIZE + (anchor is not None)
                ),
            )
            if anchor is not None:
                if not entries or parse_event_id(entries[0][0].decode()) != anchor:
                    raise HistoryGap(start)
                entries = entries[1:]
            if not entries:
                return
            yield entries
            if len(entries) < HISTORY_PAGE_SIZE:
                return
            start = entries[-1][0].decode()
            anchor = parse_event_id(start)


class _ClusterScript(Script):
    """A script of a cluster's sync client, which it reaches only when run: the scripts are
    registered as the broker is built, before the client is (``sync_client``)."""

    def __init__(self, connection: RedisConnection, source: str) -> None:
        # Not Script's __init__, which asks the client for its encoding: the clients here keep
        # redis-py's, UTF-8.
        self._connection = connection
        self.script = source
        self.sha = hashlib.sha1(source.encode()).hexdigest()

    @property
    def registered_client(self) -> SyncClient:  # type: ignore[override]
        return self._connection.sync_client
