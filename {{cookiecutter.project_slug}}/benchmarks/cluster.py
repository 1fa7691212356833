"""``--redis-cluster MASTERS``: the project on a Redis Cluster started here (masters only, on
loopback), its history in ``PARTITIONS`` partitions.

The streams phases run as on one Redis: their events are broadcasts, all in one partition, so they
measure what a Daphne process does with a cluster's feed. What more masters change is measured by
a publishing phase: events to ``TOPICS`` topics, spread over every partition, published as fast
as ``publish()`` goes from several processes at once, with the CPU each master used.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import redis

from .launcher import PROJECT_DIR, Service, start_service
from .procfs import cpu_seconds
from .project import Project

PARTITIONS = 16
TOPICS = 64
SLOTS = 16384
# A node listens for the others (the cluster bus) on its port + 10000.
BUS_PORT_OFFSET = 10000

# Run by each publishing process: publish() to every topic in turn, timed on the monotonic clock
# that every process of the machine shares.
_PUBLISH = """
import json, time
from importlib import import_module
from django.apps import apps
publish = import_module(apps.get_app_config("events").name + ".publish").publish
payload = "x" * PAYLOAD
publish("warm-up", {})
started = time.perf_counter()
for number in range(FIRST, FIRST + COUNT):
    publish("bench", {"seq": number, "pad": payload}, topic=f"t{number % TOPICS}")
print(json.dumps([started, time.perf_counter()]))
"""


@dataclass(frozen=True)
class Publishing:
    """The publishing phase on ``masters`` masters."""

    masters: int
    publishers: int
    events: int
    seconds: float
    publishes_per_second: float
    redis_cpu_us_per_publish: float  # all masters together
    cpu_share_by_master: dict[int, float]  # of the phase's wall time, by port
    events_by_master: dict[int, int]  # added to the histories it serves during the run, by port


def _free_cluster_port() -> int:
    """A free port whose bus port is free too."""
    while True:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        if port + BUS_PORT_OFFSET > 65535:
            continue
        with socket.socket() as bus:
            try:
                bus.bind(("127.0.0.1", port + BUS_PORT_OFFSET))
            except OSError:
                continue
        return port


@contextlib.contextmanager
def redis_cluster(work_dir: Path, masters: int) -> Iterator[list[Service]]:
    """``masters`` cluster nodes, each serving an equal share of the slots, stopped on leaving."""
    program = shutil.which("redis-server")
    if program is None:
        raise SystemExit(
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server)."
        )
    nodes: list[Service] = []
    try:
        for number in range(masters):
            port = _free_cluster_port()
            directory = work_dir / f"cluster-{port}"
            directory.mkdir()
            command = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
            command += ["--appendonly", "no", "--dir", str(directory)]
            command += ["--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"]
            nodes.append(start_service(f"redis-{number}", command, port, directory / "redis.log"))
        clients = [redis.Redis(port=node.port, socket_timeout=10) for node in nodes]
        for number, client in enumerate(clients):
            first, last = SLOTS * number // masters, SLOTS * (number + 1) // masters - 1
            client.execute_command("CLUSTER", "ADDSLOTSRANGE", first, last)
            if number:
                clients[0].execute_command("CLUSTER", "MEET", "127.0.0.1", nodes[number].port)
        deadline = time.monotonic() + 60
        while not all(_ready(client, masters) for client in clients):
            if time.monotonic() > deadline:
                raise TimeoutError(f"the {masters} cluster nodes did not agree in 60 s")
            time.sleep(0.1)
        for client in clients:
            client.close()
        yield nodes
    finally:
        for node in nodes:
            node.stop()


def _ready(client: redis.Redis, masters: int) -> bool:
    info = client.execute_command("CLUSTER", "INFO").decode()
    fields = dict(line.split(":", 1) for line in info.split() if ":" in line)
    return fields.get("cluster_state") == "ok" and fields.get("cluster_known_nodes") == str(masters)


def cluster_url(nodes: list[Service]) -> str:
    return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in nodes) + "/"


def measure_publishing(
    project: Project, nodes: list[Service], publishers: int, events: int, payload_bytes: int
) -> Publishing:
    """``events`` events over ``publishers`` processes publishing at once, to every topic."""
    per_publisher = events // publishers
    code = (
        _PUBLISH.replace("PAYLOAD", str(max(payload_bytes - 24, 0)))
        .replace("TOPICS", str(TOPICS))
        .replace("COUNT", str(per_publisher))
    )
    cpu_before = {node.port: cpu_seconds(node.pid) for node in nodes}
    processes = [
        subprocess.Popen(
            [
                sys.executable,
                "manage.py",
                "shell",
                "-c",
                code.replace("FIRST", str(n * per_publisher)),
            ],
            cwd=PROJECT_DIR,
            env=project.env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(publishers)
    ]
    spans = []
    for process in processes:
        out, err = process.communicate(timeout=600)
        if process.returncode != 0:
            raise RuntimeError(f"a publishing process failed:\n{err[-3000:]}")
        spans.append(json.loads(out.strip().splitlines()[-1]))
    cpu = {node.port: cpu_seconds(node.pid) - cpu_before[node.port] for node in nodes}
    prefix = project.env["EVENTS_REDIS_PREFIX"]
    published = per_publisher * publishers
    # From the first process's first publish to the last one's last: Django's start is not in it.
    seconds = max(end for _, end in spans) - min(start for start, _ in spans)
    return Publishing(
        masters=len(nodes),
        publishers=publishers,
        events=published,
        seconds=seconds,
        publishes_per_second=published / seconds,
        redis_cpu_us_per_publish=sum(cpu.values()) / published * 1e6,
        cpu_share_by_master={port: used / seconds for port, used in cpu.items()},
        events_by_master={node.port: _events_added(node, prefix) for node in nodes},
    )


def _events_added(node: Service, prefix: str) -> int:
    """Events added to the histories of the partitions ``node`` serves (a capped history keeps
    fewer; Redis counts every one it added)."""
    added = 0
    with redis.Redis(port=node.port, socket_timeout=10) as client:
        for partition in range(PARTITIONS):
            key = "{" + f"{prefix}.{partition}" + "}:history"
            try:
                added += int(client.xinfo_stream(key)["entries-added"])
            except redis.ResponseError:  # MOVED: another master's, or no such key
                continue
    return added


def render_publishing(result: Publishing) -> str:
    ports = sorted(result.cpu_share_by_master)
    shares = ", ".join(f"{result.cpu_share_by_master[port]:.0%}" for port in ports)
    stored = ", ".join(f"{result.events_by_master[port]:,}" for port in ports)
    return (
        f"\nPublishing on a Redis Cluster of {result.masters} master(s), {PARTITIONS} partitions: "
        f"{result.events:,} events to {TOPICS} topics from {result.publishers} processes at "
        f"once\n"
        f"  publishes per second              {result.publishes_per_second:,.0f}\n"
        f"  Redis CPU per publish (us)        {result.redis_cpu_us_per_publish:.1f} (all masters)\n"
        f"  each master's CPU, of the phase   {shares}\n"
        f"  events each master stored         {stored} (the whole run)\n"
    )
