"""A real Redis Cluster for the tests: redis-server nodes on loopback, joined by
``redis-cli --cluster create``, with helpers to kill a master, wait for its failover and move
slots between masters.

Like the servers of ``services.py``, every node is started with a deadline and stopped on leaving
``redis_cluster()``, even when the body raises. Under ``CI=true`` a missing program fails the test
instead of skipping it.
"""

import os
import signal
import socket
import subprocess
import time
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

import redis
from redis.crc import key_slot as _key_slot

from .services import RedisServer, free_port, require_program

SLOTS = 16384
# Redis listens for the other nodes (the cluster bus) on its port + 10000: ports stay below this.
BUS_PORT_OFFSET = 10000
HIGHEST_PORT = 65535 - BUS_PORT_OFFSET
# A node not answering for this long is failing: a replica takes its slots a second or two later.
NODE_TIMEOUT_MS = 1000


def key_slot(key: str) -> int:
    """The hash slot of ``key`` (of its hash tag, ``{...}``, when it has one)."""
    return _key_slot(key.encode())


def hash_tag(name: str) -> str:
    """``name`` in braces: keys containing it hash to one slot, whatever else they contain."""
    return "{" + name + "}"


def _port_is_free(port: int) -> bool:
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError:
            return False
    return True


def cluster_ports(count: int) -> list[int]:
    """``count`` free loopback ports whose bus ports (port + 10000) are free too."""
    ports: list[int] = []
    taken: set[int] = set()
    while len(ports) < count:
        port = free_port()
        bus_port = port + BUS_PORT_OFFSET
        if port > HIGHEST_PORT or port in taken or bus_port in taken:
            continue
        if not _port_is_free(bus_port):
            continue
        ports.append(port)
        taken.update((port, bus_port))
    return ports


@dataclass
class RedisClusterNode(RedisServer):
    """One node of the cluster: a RedisServer started in cluster mode."""

    password: str | None = None

    def command(self, *args: str) -> str:
        if self.password is None:
            return super().command(*args)
        return super().command("--no-auth-warning", "-a", self.password, *args)

    def client(self) -> redis.Redis:
        """A plain (not cluster) client of this node alone."""
        return redis.Redis(
            port=self.port,
            password=self.password,
            socket_timeout=2,
            socket_connect_timeout=2,
            decode_responses=True,
        )

    @property
    def running(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def node_id(self) -> str:
        return self.command("cluster", "myid")

    def cluster_info(self) -> dict[str, str]:
        """CLUSTER INFO as this node answers it."""
        fields = {}
        for line in self.command("cluster", "info").splitlines():
            name, _, value = line.partition(":")
            fields[name] = value.strip()
        return fields


@dataclass(frozen=True)
class NodeEntry:
    """A line of CLUSTER NODES: how one node sees another (or itself)."""

    node_id: str
    port: int
    flags: frozenset[str]
    master_id: str | None  # for a replica
    slots: frozenset[int]

    @property
    def failing(self) -> bool:
        return bool(self.flags & {"fail", "fail?"})

    @property
    def is_master(self) -> bool:
        return "master" in self.flags

    @classmethod
    def parse(cls, line: str) -> "NodeEntry":
        # id, address, flags, master, ping-sent, pong-received, config-epoch, link-state, slots...
        fields = line.split()
        node_id, address, flags, master_id = fields[:4]
        slots: set[int] = set()
        for text in fields[8:]:
            if text.startswith("["):  # a slot being imported or migrated: still its owner's
                continue
            first, _, last = text.partition("-")
            slots.update(range(int(first), int(last or first) + 1))
        port = int(address.split("@")[0].rpartition(":")[2])
        return cls(
            node_id,
            port,
            frozenset(flags.split(",")),
            None if master_id == "-" else master_id,
            frozenset(slots),
        )


@dataclass
class RedisClusterDeployment:
    """The nodes ``redis_cluster()`` started; roles and slots are read from a live node."""

    nodes: list[RedisClusterNode]
    password: str | None = None

    @property
    def url(self) -> str:
        """``redis+cluster://[:password@]host:port[,host:port...]/``, every node a startup node."""
        hosts = ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)
        credentials = f":{self.password}@" if self.password is not None else ""
        return f"redis+cluster://{credentials}{hosts}/"

    def live_nodes(self) -> list[RedisClusterNode]:
        return [node for node in self.nodes if node.running]

    def node(self, port: int) -> RedisClusterNode:
        for node in self.nodes:
            if node.port == port:
                return node
        raise KeyError(port)

    def topology(self, seen_from: RedisClusterNode | None = None) -> list[NodeEntry]:
        """CLUSTER NODES as ``seen_from`` (by default the first live node) answers it."""
        node = seen_from or self.live_nodes()[0]
        return [NodeEntry.parse(line) for line in node.command("cluster", "nodes").splitlines()]

    def masters(self) -> list[RedisClusterNode]:
        """The masters not failing, as a live node sees them."""
        return [
            self.node(entry.port)
            for entry in self.topology()
            if entry.is_master and not entry.failing
        ]

    def replicas(self) -> list[RedisClusterNode]:
        """The replicas not failing, as a live node sees them."""
        return [
            self.node(entry.port)
            for entry in self.topology()
            if "slave" in entry.flags and not entry.failing
        ]

    def replicas_of(self, master: RedisClusterNode) -> list[RedisClusterNode]:
        master_id = master.node_id
        return [
            self.node(entry.port)
            for entry in self.topology()
            if entry.master_id == master_id and not entry.failing
        ]

    def owner_of_slot(self, slot: int) -> RedisClusterNode:
        """The master serving ``slot``, as a live node sees it."""
        for entry in self.topology():
            if slot in entry.slots and not entry.failing:
                return self.node(entry.port)
        raise LookupError(f"no master serves slot {slot}")

    def owner_of_key(self, key: str) -> RedisClusterNode:
        return self.owner_of_slot(key_slot(key))

    def slots_of(self, master: RedisClusterNode) -> frozenset[int]:
        for entry in self.topology():
            if entry.port == master.port:
                return entry.slots
        raise KeyError(master.port)

    def healthy(self) -> bool:
        """Every live node knows every live node and the failed ones as failed, says
        ``cluster_state:ok``, sees all slots served, and agrees with the others on who serves
        them; every replica confirms its master's writes."""
        live = self.live_nodes()
        slot_maps = []
        for node in live:
            info = node.cluster_info()
            if info.get("cluster_state") != "ok" or info.get("cluster_slots_ok") != str(SLOTS):
                return False
            entries = self.topology(node)
            if len(entries) != len(self.nodes):
                return False
            for entry in entries:
                if entry.failing != (not self.node(entry.port).running):
                    return False
            slot_maps.append({entry.port: entry.slots for entry in entries if entry.slots})
        if not all(slot_map == slot_maps[0] for slot_map in slot_maps):
            return False
        return all(
            self._replicas_confirm_writes(entry, entries)
            for entry in entries
            if entry.is_master and entry.slots and not entry.failing
        )

    def _replicas_confirm_writes(self, master: NodeEntry, entries: list[NodeEntry]) -> bool:
        """A write on ``master`` is confirmed by each of its live replicas (``WAIT``). A replica
        reports its link up before its master counts it, on its first ACK, up to a second later:
        until then a publish that waits for a replica (``EVENTS_PUBLISH_REPLICAS``) times out."""
        replicas = sum(
            1
            for entry in entries
            if entry.master_id == master.node_id and self.node(entry.port).running
        )
        if not replicas:
            return True
        number = 0
        while key_slot(key := f"tests:in-sync:{number}") not in master.slots:
            number += 1
        with self.node(master.port).client() as client:
            client.set(key, 1)
            return int(client.wait(replicas, 100)) >= replicas

    def kill_master(self, master: RedisClusterNode) -> None:
        """SIGKILLs ``master`` (a crash: no goodbye to the other nodes, no failover handed
        over) and waits for its process to end."""
        assert master in self.masters(), f"port {master.port} is not a master"
        os.kill(master.pid, signal.SIGKILL)
        assert master.process is not None
        master.process.wait(timeout=10)

    def failed_over(self, old_master: RedisClusterNode) -> bool:
        """Whether the cluster replaced ``old_master``: every live node sees it failed, with no
        slot left, its replica serving them, and ``cluster_state:ok``."""
        for node in self.live_nodes():
            entries = self.topology(node)
            old = next(entry for entry in entries if entry.port == old_master.port)
            if "fail" not in old.flags or old.slots:
                return False
        return self.healthy()

    def reshard(
        self, slots: int, from_node: RedisClusterNode, to_node: RedisClusterNode
    ) -> frozenset[int]:
        """Moves ``slots`` slots (keys and all) from one master to another with
        ``redis-cli --cluster reshard``, which takes ``from_node``'s lowest slots; returns when
        every node agrees on the new owners. Returns the slots moved."""
        redis_cli = require_program("redis-cli")
        before = self.slots_of(from_node)
        auth = ["--no-auth-warning", "-a", self.password] if self.password is not None else []
        subprocess.run(
            [
                redis_cli,
                *auth,
                "--cluster",
                "reshard",
                f"127.0.0.1:{from_node.port}",
                "--cluster-from",
                from_node.node_id,
                "--cluster-to",
                to_node.node_id,
                "--cluster-slots",
                str(slots),
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=60,
        )
        moved = before - self.slots_of(from_node)
        deadline = time.monotonic() + 20
        while not (self.healthy() and moved <= self.slots_of(to_node)):
            if time.monotonic() > deadline:
                raise TimeoutError("the nodes did not agree on the resharded slots in 20s")
            time.sleep(0.05)
        return moved


@contextmanager
def redis_cluster(
    directory: Path,
    masters: int = 3,
    replicas_per_master: int = 1,
    timeout: float = 30.0,
    password: str | None = None,
) -> Iterator[RedisClusterDeployment]:
    """``masters`` masters with ``replicas_per_master`` replicas each, on loopback, returned
    once every node says the cluster is ok, all slots served and every replica in sync (or
    failing after ``timeout`` seconds); all stopped on leaving."""
    redis_cli = require_program("redis-cli")
    count = masters * (1 + replicas_per_master)
    auth_options = ["--requirepass", password, "--masterauth", password] if password else []
    with ExitStack() as stack:
        nodes = []
        for port in cluster_ports(count):
            node_directory = directory / f"node-{port}"
            node_directory.mkdir(parents=True)
            node = RedisClusterNode(
                port,
                node_directory,
                options=[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    str(node_directory / "nodes.conf"),
                    "--cluster-node-timeout",
                    str(NODE_TIMEOUT_MS),
                    *auth_options,
                ],
                password=password,
            )
            stack.callback(node.stop)
            node.start()
            nodes.append(node)
        auth = ["--no-auth-warning", "-a", password] if password is not None else []
        subprocess.run(
            [
                redis_cli,
                *auth,
                "--cluster",
                "create",
                *(f"127.0.0.1:{node.port}" for node in nodes),
                "--cluster-replicas",
                str(replicas_per_master),
                "--cluster-yes",
            ],
            capture_output=True,
            check=True,
            timeout=timeout,
        )
        deployment = RedisClusterDeployment(nodes, password)
        deadline = time.monotonic() + timeout
        while not (
            deployment.healthy()
            and len(deployment.masters()) == masters
            and len(deployment.replicas()) == masters * replicas_per_master
        ):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the cluster was not ok in {timeout}s")
            time.sleep(0.05)
        yield deployment
