"""Sharded Pub/Sub on a Redis Cluster, as the feed reads it.

A shard channel lives on the master that serves its slot, and only there: the feed holds one
connection per master that serves a channel it reads (SSUBSCRIBE, one channel at a time: one
command's channels must share a slot), each read by a task of its own into one queue. It offers
what the feed uses of redis-py's PubSub (``connect``, ``subscribe``, ``unsubscribe``,
``get_message``, ``ping``, ``aclose``), its messages named as classic Pub/Sub's (``subscribe``,
``message``), so that the feed reads one server and a cluster alike.

What the feed cannot follow as it goes ends the connection (``get_message`` raises), and the feed
reconnects, with a fresh slot map, and catches up from history, as after any reconnect:

- a master that fails (its replica is promoted: a failover) or stops answering (it is pinged
  when it has said nothing for ``health_check_seconds``, and given as long again);
- a channel whose slot moved to another master (``redis-cli --cluster reshard``): its old master
  sends an SUNSUBSCRIBE the feed did not ask for;
- a channel to subscribe whose slot has another master than when this connection first
  subscribed in it: the slot moved, and its old master has not said so (yet, or ever).
"""

import asyncio
import logging
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import ClusterNode
from redis.asyncio.cluster import RedisCluster as AsyncRedisCluster

logger = logging.getLogger(__name__)

_READ_SECONDS = 1.0


class _Master:
    """One master's connection, and what its reader knows of it."""

    def __init__(self, pubsub: aioredis.client.PubSub, heard: float) -> None:
        self.pubsub = pubsub
        self.heard = heard
        self.pinged: float | None = None
        self.reader: asyncio.Task[None] | None = None


class ShardedPubSub:
    def __init__(
        self,
        client: AsyncRedisCluster,
        node_pubsub: Callable[[ClusterNode], aioredis.client.PubSub],
        health_check_seconds: float,
    ) -> None:
        self._client = client
        self._node_pubsub = node_pubsub
        self._health_check_seconds = health_check_seconds
        self._masters: dict[str, _Master] = {}  # by node name (host:port)
        self._channels: dict[str, str] = {}  # channel -> the name of the master it is on
        self._owners: dict[int, str] = {}  # slot -> its master when first subscribed in here
        self._unsubscribing: set[str] = set()
        self._connecting = asyncio.Lock()
        self._queue: asyncio.Queue[dict[str, Any] | BaseException] = asyncio.Queue()
        self._pings: set[asyncio.Task[None]] = set()  # held: the loop keeps weak references

    async def connect(self) -> None:
        # The slot map as it is now: after a failover or a reshard, the old one is wrong.
        await self._client.initialize()
        await self._client.nodes_manager.initialize()

    async def subscribe(self, *channels: str) -> None:
        for channel in channels:
            node = self._client.get_node_from_key(channel)
            if node is None:
                raise ConnectionError(f"no master serves the slot of {channel!r}")
            self._check_owner(channel, node)
            master = await self._master(node)
            await master.pubsub.ssubscribe(channel)
            self._channels[channel] = node.name
            if master.reader is None:
                master.reader = asyncio.create_task(self._read(node.name, master))

    def _check_owner(self, channel: str, node: ClusterNode) -> None:
        """Raises (and ends the connection) if the channel's slot moved since this connection
        first subscribed in it (a failover, a reshard) and its old master has not said so yet: a
        dead master's connection is silent until its ping goes unanswered. The feed's watermark
        of a partition moves when a SUBSCRIBE is confirmed, which covers only the channels read on
        the same connection; the partition's other channels, still on the old master, may have
        missed what the new one published meanwhile. A new connection catches them up."""
        owner = self._owners.setdefault(self._client.keyslot(channel), node.name)
        if owner != node.name:
            error = ConnectionError(f"the slot of {channel!r} moved from {owner} to {node.name}")
            self._queue.put_nowait(error)
            raise error

    async def _master(self, node: ClusterNode) -> _Master:
        """The master's connection, connected before any channel is subscribed on it. redis-py's
        PubSub connects on its first command, once for each command sent while it connects: of
        the streams that open at once, those whose channel went out on a connection it then
        dropped never heard their subscription confirmed."""
        if (master := self._masters.get(node.name)) is not None:
            return master
        async with self._connecting:
            master = self._masters.get(node.name)
            if master is None:
                pubsub = self._node_pubsub(node)
                try:
                    await pubsub.connect()  # type: ignore[no-untyped-call]
                except BaseException:
                    await pubsub.aclose()  # type: ignore[no-untyped-call]
                    raise
                master = self._masters[node.name] = _Master(
                    pubsub, asyncio.get_running_loop().time()
                )
            return master

    async def unsubscribe(self, *channels: str) -> None:
        for channel in channels:
            name = self._channels.pop(channel, None)
            if name is not None:
                self._unsubscribing.add(channel)
                await self._masters[name].pubsub.sunsubscribe(channel)

    async def get_message(self, timeout: float) -> dict[str, Any] | None:  # noqa: ASYNC109
        self._check_masters()
        try:
            item = await asyncio.wait_for(self._queue.get(), timeout)
        except TimeoutError:
            return None
        if isinstance(item, BaseException):
            raise item
        return item

    async def ping(self, message: str) -> None:
        """The feed pings when it heard nothing at all; each master is also pinged on its own
        when it went silent (``_check_masters``)."""
        for master in list(self._masters.values()):
            await self._ping(master, message)

    async def aclose(self) -> None:
        for master in self._masters.values():
            if master.reader is not None:
                master.reader.cancel()
        for master in self._masters.values():
            if master.reader is not None:
                await asyncio.gather(master.reader, return_exceptions=True)
            try:
                await master.pubsub.aclose()  # type: ignore[no-untyped-call]
            except Exception as error:  # being thrown away anyway
                logger.debug("Closing a shard connection failed: %s", error)
        self._masters.clear()

    # --- The masters' readers -----------------------------------------------------------------

    async def _read(self, name: str, master: _Master) -> None:
        loop = asyncio.get_running_loop()
        try:
            while True:
                message = await master.pubsub.get_message(timeout=_READ_SECONDS)
                if message is None:
                    continue
                master.heard = loop.time()
                kind = message["type"]
                if kind == "ssubscribe":
                    message = {**message, "type": "subscribe"}
                elif kind == "smessage":
                    message = {**message, "type": "message"}
                elif kind == "sunsubscribe":
                    channel = message["channel"].decode(errors="replace")
                    if channel in self._unsubscribing:
                        self._unsubscribing.discard(channel)
                        continue
                    raise ConnectionError(f"{channel!r} moved off {name} (a reshard)")
                await self._queue.put(message)
        except asyncio.CancelledError:
            raise
        except Exception as error:  # the feed reconnects: the queue hands it the error
            self._queue.put_nowait(error)

    def _check_masters(self) -> None:
        now = asyncio.get_running_loop().time()
        interval = self._health_check_seconds
        for name, master in self._masters.items():
            if master.pinged is not None and master.heard < master.pinged:
                if now - master.pinged > interval:
                    raise TimeoutError(f"{name} sent nothing for {now - master.heard:.1f}s")
            elif now - master.heard > interval:
                master.pinged = now
                ping = asyncio.create_task(self._ping(master, "events-feed-liveness"))
                self._pings.add(ping)
                ping.add_done_callback(self._pings.discard)

    async def _ping(self, master: _Master, message: str) -> None:
        master.pinged = asyncio.get_running_loop().time()
        try:
            await master.pubsub.ping(message)
        except Exception as error:  # its reader sees the connection fail too
            logger.debug("Pinging a master failed: %s", error)
