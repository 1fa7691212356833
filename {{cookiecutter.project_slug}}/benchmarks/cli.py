"""The command line: which systems, which stream counts, how many events; then one run that
measures them all and prints the report. ``python benchmarks/streams.py --help``."""

from __future__ import annotations

import argparse
import contextlib
import json
import math
import os
import resource
import shutil
import signal
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO, cast
from urllib.parse import urlsplit

import redis

from .client import ClientPool
from .cluster import (
    PARTITIONS,
    Publishing,
    cluster_url,
    measure_publishing,
    redis_cluster,
    render_publishing,
)
from .environment import machine, versions
from .launcher import Service, raise_open_file_limit, start_redis
from .project import (
    Project,
    Publisher,
    channel_publisher,
    http_publisher,
    prepare_project,
    project_publisher,
)
from .report import as_json, render
from .scenario import Measurement, Plan, Scenario
from .systems import DEFAULT_SYSTEMS, SYSTEMS, System

LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
SWEEP = (1000, 2000, 5000, 10000)
SPARE_FDS = 256  # descriptors of a process besides its streams: libraries, logs, Redis, pipes
SPARE_REDIS_CLIENTS = 64


@dataclass(frozen=True)
class Options:
    streams: tuple[int, ...]
    plan: Plan
    users: int
    systems: tuple[str, ...]
    workers: int
    redis_url: str | None
    redis_cluster: int | None  # masters of a cluster started here
    publishers: int
    publish_events: int
    broker: str
    publish_via: str
    json_path: str | None
    keep: bool


def _counts(text: str) -> tuple[int, ...]:
    try:
        counts = tuple(int(part.replace("_", "")) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a list of numbers: {text!r}") from None
    if not counts or min(counts) < 1:
        raise argparse.ArgumentTypeError("stream counts must be positive")
    return counts


def _systems(text: str) -> tuple[str, ...]:
    names = tuple(SYSTEMS) if text == "all" else tuple(p.strip() for p in text.split(","))
    unknown = [name for name in names if name not in SYSTEMS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"unknown systems {unknown}: choose from {list(SYSTEMS)}")
    return names


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=(
            "Open N concurrent event streams on a Daphne process started here, publish broadcast "
            "events, and report the server's CPU per delivered event and per accepted stream, "
            "latency, memory, threads and Redis connections, for this project and two "
            "baselines (the article's design, a bare ASGI callable), in one run. "
            "Linux only; everything runs on 127.0.0.1."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument(
        "--streams",
        type=_counts,
        default=(1000,),
        metavar="N[,N...]",
        help="concurrent streams; a comma-separated list measures each count in turn",
    )
    parser.add_argument(
        "--sweep",
        action="store_true",
        help="--streams " + ",".join(map(str, SWEEP)) + " (and 50 events unless --events)",
    )
    parser.add_argument(
        "--systems",
        type=_systems,
        default=DEFAULT_SYSTEMS,
        metavar="NAME[,NAME...]",
        help=f"systems under test, from {list(SYSTEMS)}, or 'all'",
    )
    parser.add_argument(
        "--events",
        type=int,
        help="broadcast events in the paced phase (default 200; 50 with --sweep)",
    )
    parser.add_argument(
        "--burst-events",
        type=int,
        help="events published back to back after the paced phase (default: --events; 0: none)",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="events per second in the paced phase: each is delivered on its own",
    )
    parser.add_argument(
        "--users", type=int, default=100, help="users the project's streams belong to"
    )
    parser.add_argument(
        "--payload-bytes", type=int, default=128, help="approximate size of each event's data"
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=50,
        help="streams being opened at once, over all client workers: Daphne listens with "
        "Twisted's default backlog of 50, and more connections at once would measure TCP's "
        "1-second SYN retransmission instead of the server",
    )
    parser.add_argument(
        "--workers",
        type=int,
        default=2,
        help="client processes holding the streams (more are started if the open-file limit "
        "of one process is too low for them)",
    )
    parser.add_argument(
        "--broker",
        choices=["redis", "memory"],
        default="redis",
        help="redis: a redis-server started here (or --redis-url); memory: REDIS_URL unset, "
        "the project alone (the baselines need Redis)",
    )
    parser.add_argument(
        "--publish-via",
        choices=["redis", "http"],
        help="how the project's events are published: redis (default with --broker redis), its "
        "publish() called from this process, as a worker would; http: POST to the server's "
        "publish API, which then spends its own CPU on publishing (the only way into --broker "
        "memory). The baselines always get a plain Redis PUBLISH.",
    )
    parser.add_argument(
        "--redis-url",
        help="use this Redis (loopback only) instead of starting one; keys get a unique prefix",
    )
    parser.add_argument(
        "--redis-cluster",
        type=int,
        metavar="MASTERS",
        help="start a Redis Cluster of this many masters and measure the project on it, its "
        f"history in {PARTITIONS} partitions (the baselines need one Redis); adds a publishing "
        "phase over every partition (docs/benchmark.md)",
    )
    parser.add_argument(
        "--publishers",
        type=int,
        default=2,
        help="with --redis-cluster: processes publishing at once in the publishing phase",
    )
    parser.add_argument(
        "--publish-events",
        type=int,
        default=20_000,
        help="with --redis-cluster: events of the publishing phase (2,000 with --quick)",
    )
    parser.add_argument(
        "--phase-timeout", type=float, default=120.0, help="seconds allowed for each phase"
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke check: 100 streams, 50 events per phase at 50/s (overrides those options)",
    )
    parser.add_argument(
        "--json", dest="json_path", metavar="PATH", help="also write results as JSON (- = stdout)"
    )
    parser.add_argument(
        "--keep", action="store_true", help="keep the work directory (database, server logs)"
    )
    args = parser.parse_args(argv)
    streams = SWEEP if args.sweep else args.streams
    events = args.events if args.events is not None else (50 if args.sweep else 200)
    rate = args.rate
    if args.quick:
        streams, events, rate = (100,), 50, 50.0
    burst = events if args.burst_events is None else args.burst_events
    publish_events = 2_000 if args.quick else args.publish_events
    if events < 1 or burst < 0 or args.users < 1 or rate <= 0 or args.workers < 1:
        parser.error("--events, --users, --rate and --workers must be positive")
    if args.redis_url and args.broker != "redis":
        parser.error("--redis-url needs --broker redis")
    if args.redis_cluster is not None and (
        args.redis_cluster < 1 or args.redis_url or args.broker != "redis"
    ):
        parser.error(
            "--redis-cluster takes a number of masters, and neither --redis-url nor --broker memory"
        )
    if args.publishers < 1 or publish_events < args.publishers:
        parser.error("--publishers must be positive, and at most --publish-events")
    if args.redis_url and urlsplit(args.redis_url).hostname not in LOOPBACK_HOSTS:
        parser.error(
            f"--redis-url {args.redis_url}: not a loopback address; this benchmark only talks to "
            "127.0.0.1, localhost or ::1"
        )
    publish_via = args.publish_via or ("redis" if args.broker == "redis" else "http")
    if publish_via == "redis" and args.broker != "redis":
        parser.error("--broker memory lives inside the server: use --publish-via http")
    systems = args.systems
    if args.broker == "memory" or args.redis_cluster is not None:
        # The baselines use one Redis server's Pub/Sub.
        needing_redis = [name for name in systems if not SYSTEMS[name].uses_project_broker]
        if args.systems != DEFAULT_SYSTEMS and needing_redis:
            parser.error(f"{needing_redis} need one Redis: drop them, or --redis-cluster")
        systems = tuple(name for name in systems if SYSTEMS[name].uses_project_broker)
    return Options(
        streams=streams,
        plan=Plan(
            events=events,
            burst_events=burst,
            rate=rate,
            payload_bytes=max(args.payload_bytes, 0),
            connect_concurrency=max(args.connect_concurrency, 1),
            phase_timeout=args.phase_timeout,
        ),
        users=args.users,
        systems=systems,
        workers=args.workers,
        redis_url=args.redis_url,
        redis_cluster=args.redis_cluster,
        publishers=args.publishers,
        publish_events=publish_events,
        broker=args.broker,
        publish_via=publish_via,
        json_path=args.json_path,
        keep=args.keep,
    )


# --------------------------------------------------------------------------------------------
# What fits on this machine


def open_file_limit() -> int:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    return 1 << 20 if hard == resource.RLIM_INFINITY else hard


def why_not(system: System, streams: int, redis_max_clients: int | None) -> str | None:
    """Why ``system`` cannot hold ``streams`` here (checked before starting it), or None."""
    limit = open_file_limit()
    needed = system.server_fds_per_stream * streams + SPARE_FDS
    if needed > limit:
        return (
            f"not run: needs ~{needed:,} open files in its one server process "
            f"({system.server_fds_per_stream} per stream); the hard limit is {limit:,}"
        )
    redis_clients = system.redis_connections_per_stream * streams + SPARE_REDIS_CLIENTS
    if redis_max_clients is not None and redis_clients > redis_max_clients:
        return (
            f"not run: needs ~{redis_clients:,} Redis connections; "
            f"Redis's maxclients is {redis_max_clients:,}"
        )
    return None


def client_workers(options: Options) -> int:
    per_process = open_file_limit() - SPARE_FDS
    return max(options.workers, math.ceil(max(options.streams) / per_process))


def check_port_range(streams: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        if streams + SPARE_FDS > high - low:
            raise SystemExit(f"{streams} streams exceed the local port range {low}-{high}.")


# --------------------------------------------------------------------------------------------
# The run


@dataclass(frozen=True)
class RedisTarget:
    url: str
    client: redis.Redis  # of the Redis, or of a cluster's first node
    port: int | None  # whose connections are counted: none on a cluster (spread over nodes)
    cluster_nodes: tuple[Service, ...] = ()

    def max_clients(self) -> int:
        return int(cast(dict[str, str], self.client.config_get("maxclients"))["maxclients"])


@contextlib.contextmanager
def work_directory(keep: bool) -> Iterator[Path]:
    path = Path(tempfile.mkdtemp(prefix="stream-benchmark-"))
    try:
        yield path
    finally:
        if keep:
            print(f"Kept {path}", file=sys.stderr)
        else:
            shutil.rmtree(path, ignore_errors=True)


@contextlib.contextmanager
def redis_for_run(options: Options, work_dir: Path, prefix: str) -> Iterator[RedisTarget | None]:
    """The Redis of this run (started here unless --redis-url), emptied of this run's keys after."""
    if options.broker != "redis":
        yield None
        return
    if options.redis_cluster is not None:
        with (
            redis_cluster(work_dir, options.redis_cluster) as nodes,
            redis.Redis(port=nodes[0].port, socket_timeout=10) as first,
        ):
            yield RedisTarget(cluster_url(nodes), first, None, tuple(nodes))
        return
    server: Service | None = None
    url = options.redis_url
    if not url:
        server = start_redis(work_dir)
        url = f"redis://127.0.0.1:{server.port}/0"
    client = redis.Redis.from_url(url, socket_timeout=10)
    try:
        port = int(client.connection_pool.connection_kwargs.get("port", 6379))
        yield RedisTarget(url, client, port)
    finally:
        with contextlib.suppress(redis.RedisError):
            # Only keys under this run's own prefix, in case the Redis is a shared one.
            for key in client.scan_iter(match=f"{prefix}:*"):
                client.delete(key)
        client.close()
        if server is not None:
            server.stop()


def publishers(
    options: Options, project: Project, target: RedisTarget | None
) -> Callable[[System], Callable[[Service], Publisher]]:
    """For each system, how to publish to its server once it runs."""
    project_publish = project_publisher(project) if options.publish_via == "redis" else None

    def for_system(system: System) -> Callable[[Service], Publisher]:
        if not system.uses_project_broker:
            assert target is not None
            baseline = channel_publisher(target.client, project.env["BENCHMARK_CHANNEL"])
            return lambda server: baseline
        if project_publish is not None:
            return lambda server: project_publish
        return lambda server: http_publisher(project, server.port)

    return for_system


def measure_all(
    options: Options,
    project: Project,
    target: RedisTarget | None,
    work_dir: Path,
    progress: Callable[[str], None],
) -> dict[int, list[Measurement]]:
    publisher_for = publishers(options, project, target)
    pool = ClientPool(client_workers(options))
    results: dict[int, list[Measurement]] = {}
    try:
        for streams in options.streams:
            results[streams] = []
            # One system at a time, never side by side: each has the machine to itself.
            for name in options.systems:
                system = SYSTEMS[name]
                reason = why_not(system, streams, target.max_clients() if target else None)
                if reason is not None:
                    progress(f"{name}, {streams:,} streams: {reason}")
                    results[streams].append(Measurement(name, streams, skipped=reason))
                    continue
                scenario = Scenario(
                    system,
                    streams,
                    options.plan,
                    project,
                    pool,
                    publisher_for(system),
                    target.port if target is not None else None,
                    work_dir,
                    progress,
                )
                results[streams].append(scenario.run())
    finally:
        pool.shutdown()
    return results


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends the run like Ctrl-C does, so that every finally block stops its process.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    if not Path("/proc/self/status").exists():
        raise SystemExit("This benchmark reads /proc: it runs on Linux only.")
    raise_open_file_limit()
    check_port_range(max(options.streams))
    signal.signal(signal.SIGTERM, _interrupt)
    output: TextIO = sys.stderr if options.json_path == "-" else sys.stdout

    def progress(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    prefix = f"benchmark-{os.getpid()}-{os.urandom(3).hex()}"
    with (
        work_directory(options.keep) as work_dir,
        redis_for_run(options, work_dir, prefix) as target,
    ):
        progress(f"Preparing a database with {options.users} users")
        partitions = PARTITIONS if options.redis_cluster is not None else 1
        project = prepare_project(
            work_dir, target.url if target else "", prefix, options.users, partitions
        )
        broker = f"redis (maxclients {target.max_clients()})" if target else "in-process"
        if options.redis_cluster is not None:
            broker = f"redis cluster ({options.redis_cluster} masters, {partitions} partitions)"
        environment = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": machine(),
            "versions": versions(target.client if target else None),
            "broker": broker,
            "publish_via": options.publish_via,
            "users": options.users,
            "workers": client_workers(options),
            "open_file_limit": open_file_limit(),
            "systems": {name: SYSTEMS[name].description for name in options.systems},
        }
        results = measure_all(options, project, target, work_dir, progress)
        publishing: Publishing | None = None
        if target is not None and target.cluster_nodes:
            progress(f"Publishing {options.publish_events:,} events over {partitions} partitions")
            publishing = measure_publishing(
                project,
                list(target.cluster_nodes),
                options.publishers,
                options.publish_events,
                options.plan.payload_bytes,
            )
    environment["load_average_after"] = [round(load, 2) for load in os.getloadavg()]

    print(render(environment, results, options.plan.rate), file=output, end="")
    if publishing is not None:
        print(render_publishing(publishing), file=output, end="")
    if options.json_path:
        document = {
            "options": as_json(options),
            "environment": environment,
            "results": as_json(results),
            "publishing": as_json(publishing),
        }
        text = json.dumps(document, indent=2)
        if options.json_path == "-":
            print(text)
        else:
            Path(options.json_path).write_text(text + "\n")
    failed = any(not m.delivered_everything for ms in results.values() for m in ms if not m.skipped)
    return 1 if failed else 0
