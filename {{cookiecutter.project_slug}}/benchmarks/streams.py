#!/usr/bin/env python
"""How many event streams one Daphne process holds, and what they cost: a loopback benchmark.

Run from the project directory, in its virtualenv::

    python benchmarks/streams.py            # 1,000 streams, 200 + 200 events, both handlers
    python benchmarks/streams.py --quick    # 100 streams, 50 + 50 events: a smoke check
    python benchmarks/streams.py --help

It starts everything it measures and stops it on exit: a redis-server (unless ``--redis-url``),
a throw-away SQLite database with users and tokens, then one Daphne process per handler:

* ``thread-free``: ``config.asgi:application``, the project's own entry point, which routes the
  stream URL to the engine's thread-free handler;
* ``stock``: ``benchmarks.stock_asgi:application``, Django's plain ``get_asgi_application()``,
  where every request, and so every open stream, holds an OS thread.

Against each it opens N authenticated streams (one raw HTTP/1.1 GET per socket, as EventSource
does), reads the server's threads, memory and descriptors from ``/proc``, counts its Redis
connections with ``CLIENT LIST``, then publishes broadcast events (with the project's own
``apublish()``, through Redis, as a worker would) and times their delivery to every client.
Linux only; loopback only. See docs/benchmark.md.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import ctypes
import importlib
import json
import math
import os
import platform
import re
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from array import array
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from importlib import metadata
from pathlib import Path
from typing import Any, TextIO
from urllib.parse import urlsplit

import httpx
import redis

PROJECT_DIR = Path(__file__).resolve().parent.parent
STREAM_PATH = "/api/events/stream/"
PUBLISH_PATH = "/api/events/"
METRICS_PATH = "/api/events/metrics/"
HANDLERS = {
    "thread-free": "config.asgi:application",
    "stock": "benchmarks.stock_asgi:application",
}
LOOPBACK_HOSTS = {"127.0.0.1", "localhost", "::1"}
# Descriptors per stream a server may need: the socket, plus (stock handler) the per-thread
# database connection it keeps open for as long as the stream lives.
SERVER_FDS_PER_STREAM = 2
SPARE_FDS = 256
CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


# --------------------------------------------------------------------------------------------
# Options


@dataclass(frozen=True)
class Options:
    streams: int
    events: int
    rate: float
    users: int
    payload_bytes: int
    connect_concurrency: int
    handlers: tuple[str, ...]
    redis_url: str | None
    broker: str
    publish_via: str
    phase_timeout: float
    json_path: str | None
    keep: bool


def parse_options(argv: list[str] | None = None) -> Options:
    parser = argparse.ArgumentParser(
        description=(
            "Open N concurrent event streams on a Daphne process started here, publish events, "
            "and report the server's threads, memory, Redis connections, delivery latency and "
            "CPU per delivered event, for the project's thread-free stream handler and for "
            "Django's stock ASGI handler. Linux only; everything runs on 127.0.0.1."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    parser.add_argument("--streams", type=int, default=1000, help="concurrent streams (N)")
    parser.add_argument(
        "--events",
        type=int,
        default=200,
        help="broadcast events per phase: once paced at --rate, once in a burst",
    )
    parser.add_argument(
        "--rate",
        type=float,
        default=5.0,
        help="events per second in the paced phase; keep rate x streams well below what one "
        "process delivers (the burst phase shows it), or this phase measures a queue",
    )
    parser.add_argument(
        "--users", type=int, default=100, help="distinct users the streams belong to"
    )
    parser.add_argument(
        "--payload-bytes", type=int, default=128, help="approximate size of each event's data"
    )
    parser.add_argument(
        "--connect-concurrency",
        type=int,
        default=100,
        help="streams being opened at once (more would overflow the listen backlog)",
    )
    parser.add_argument(
        "--handler",
        choices=[*HANDLERS, "both"],
        default="both",
        help="which ASGI handler(s) to measure",
    )
    parser.add_argument(
        "--broker",
        choices=["redis", "memory"],
        default="redis",
        help="redis: a redis-server started here (or --redis-url); memory: REDIS_URL unset",
    )
    parser.add_argument(
        "--publish-via",
        choices=["redis", "http"],
        help=(
            "redis (default with --broker redis): the project's apublish() called from this "
            "process, as a worker would; http: POST to the server's publish API, which then "
            "spends its own CPU on publishing (the only way into --broker memory)"
        ),
    )
    parser.add_argument(
        "--redis-url",
        help="use this Redis (loopback only) instead of starting one; keys get a unique prefix",
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
    if args.quick:
        args.streams, args.events, args.rate = 100, 50, 50.0
    if args.streams < 1 or args.events < 1 or args.users < 1 or args.rate <= 0:
        parser.error("--streams, --events, --users and --rate must be positive")
    if args.redis_url and args.broker != "redis":
        parser.error("--redis-url needs --broker redis")
    if args.publish_via is None:
        args.publish_via = "redis" if args.broker == "redis" else "http"
    if args.publish_via == "redis" and args.broker != "redis":
        parser.error("--broker memory lives inside the server: use --publish-via http")
    if args.redis_url and urlsplit(args.redis_url).hostname not in LOOPBACK_HOSTS:
        parser.error("--redis-url must point to a loopback address: this benchmark stays local")
    return Options(
        streams=args.streams,
        events=args.events,
        rate=args.rate,
        users=min(args.users, args.streams),
        payload_bytes=max(args.payload_bytes, 0),
        connect_concurrency=max(args.connect_concurrency, 1),
        handlers=tuple(HANDLERS) if args.handler == "both" else (args.handler,),
        redis_url=args.redis_url,
        broker=args.broker,
        publish_via=args.publish_via,
        phase_timeout=args.phase_timeout,
        json_path=args.json_path,
        keep=args.keep,
    )


# --------------------------------------------------------------------------------------------
# What /proc says about a process (Linux)


def proc_status(pid: int, name: str) -> int:
    """A number from /proc/<pid>/status, such as "Threads" or "VmRSS" (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (fields 14 and 15 of /proc/<pid>/stat)."""
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


def tcp_peers(pid: int) -> list[tuple[str, int, int]]:
    """(remote address, remote port, local port) of every TCP socket the process has open."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    peers = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            columns = line.split()
            if columns[9] not in inodes:
                continue
            local_port = int(columns[1].rpartition(":")[2], 16)
            remote_address, _, remote_port = columns[2].rpartition(":")
            peers.append((remote_address, int(remote_port, 16), local_port))
    return peers


@dataclass
class ProcessSample:
    threads: int
    rss_kb: int
    fds: int
    cpu_seconds: float

    @classmethod
    def of(cls, pid: int) -> ProcessSample:
        return cls(
            threads=proc_status(pid, "Threads"),
            rss_kb=proc_status(pid, "VmRSS"),
            fds=open_fds(pid),
            cpu_seconds=cpu_seconds(pid),
        )


# --------------------------------------------------------------------------------------------
# Processes this benchmark starts


PR_SET_PDEATHSIG = 1
# Looked up once, in the parent: the child, forked while other threads may hold locks (asyncio's
# resolver threads), then only calls a C function, which takes none.
_prctl: Callable[..., int] | None = getattr(ctypes.CDLL(None), "prctl", None)


def _die_with_parent() -> None:
    """Runs in the child before exec: the kernel sends it SIGTERM if the benchmark dies."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen[bytes], log: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(
                f"{process.args[0]} exited with {process.returncode}:\n{tail(log)}"  # type: ignore[index]
            )
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout:.0f}s:\n{tail(log)}")


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def start_service(
    name: str, command: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Service:
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_die_with_parent,
        )
    service = Service(name, process, port, log)
    try:
        wait_for_port(port, process, log, timeout=60)
    except BaseException:
        service.stop()
        raise
    return service


def start_redis(work_dir: Path) -> Service:
    program = shutil.which("redis-server")
    if program is None:
        raise SystemExit(
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server). "
            "Pass --redis-url redis://127.0.0.1:6379/0 to use a running one, "
            "or --broker memory to measure without Redis."
        )
    port = free_port()
    # No persistence and no other listener: a scratch Redis for this run only.
    command = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(work_dir)]
    return start_service("redis-server", command, port, work_dir / "redis.log")


# --------------------------------------------------------------------------------------------
# The project: a scratch database with users and tokens, and its server processes

_PREPARE = """
import json

from django.contrib.auth import get_user_model
from django.contrib.auth.hashers import make_password
from django.contrib.auth.models import Permission
from rest_framework.authtoken.models import Token

User = get_user_model()
User.objects.bulk_create(
    # Unusable passwords: hashing thousands of real ones would take longer than the benchmark.
    User(**{User.USERNAME_FIELD: f"bench-{index}"}, password=make_password(None))
    for index in range(USERS)
)
users = list(User.objects.filter(**{User.USERNAME_FIELD + "__startswith": "bench-"}))
Token.objects.bulk_create(Token(user=user, key=Token.generate_key()) for user in users)
# Staff, to read the metrics endpoint; may publish, for --publish-via http.
staff = User.objects.create_user("bench-staff", password=None, is_staff=True)
staff.user_permissions.add(Permission.objects.get(codename="publish_event"))
print(json.dumps({
    "tokens": list(Token.objects.filter(user__in=users).values_list("key", flat=True)),
    "staff": Token.objects.create(user=staff).key,
}))
"""


@dataclass(frozen=True)
class Project:
    env: dict[str, str]
    tokens: list[str]
    staff_token: str


def prepare_project(work_dir: Path, redis_url: str, prefix: str, users: int) -> Project:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        "SECRET_KEY": "benchmark-only-" + os.urandom(24).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": f"sqlite:///{work_dir / 'benchmark.sqlite3'}",
        "REDIS_URL": redis_url,
        # A prefix of this run's own, so that a shared Redis keeps its real events apart.
        "EVENTS_REDIS_PREFIX": prefix,
        # Limits checked, as in production, but never reached: their cost is part of the figures.
        "EVENTS_MAX_STREAMS_PER_USER": "1000000",
        "EVENTS_STREAM_RATE": "1000000/min",
        "EVENTS_PUBLISH_RATE": "1000000/min",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }
    script = _PREPARE.replace("USERS", str(users))
    for args in (["migrate", "--noinput"], ["shell", "-c", script]):
        result = subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT_DIR,
            env=env,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stderr[-3000:]}")
    prepared = json.loads(result.stdout.strip().splitlines()[-1])
    return Project(env, prepared["tokens"], prepared["staff"])


ProjectPublish = Callable[..., Awaitable[Any]]


def load_project_publish(project: Project) -> ProjectPublish:
    """The project's own ``apublish()``, run in this process: events reach the server through
    Redis, as they do from a worker, a management command or another web process."""
    os.environ.update(project.env)
    sys.path.insert(0, str(PROJECT_DIR))
    import django
    from django.apps import apps

    django.setup()
    module = importlib.import_module(apps.get_app_config("events").name + ".publish")
    return module.apublish


def start_daphne(project: Project, handler: str, work_dir: Path) -> Service:
    port = free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port)]
    command += [HANDLERS[handler]]
    return start_service(handler, command, port, work_dir / f"daphne-{handler}.log", project.env)


# --------------------------------------------------------------------------------------------
# The client: one raw socket per stream, read as EventSource reads it

# Events carry {"seq": n, ...}; the server re-serializes data compactly, keeping key order.
SEQ = re.compile(rb'\ndata: \{"seq":(\d+)')


class StreamError(Exception):
    pass


class Deliveries:
    """Publish times, and what arrived when, for the phase being measured."""

    def __init__(self) -> None:
        self.published: dict[int, float] = {}
        self.latencies = array("d")
        self.expected = 0
        self.delivered = 0
        self.unexpected = 0  # duplicates, out of order, or outside the current phase
        self.first_seq = 0
        self.done: asyncio.Future[None] | None = None
        self.last_receipt = 0.0

    def start_phase(self, first_seq: int, expected: int) -> None:
        self.latencies = array("d")
        self.first_seq, self.expected, self.delivered = first_seq, expected, 0
        self.done = asyncio.get_running_loop().create_future()

    def record(self, seq: int, received_at: float) -> None:
        published = self.published.get(seq)
        if published is None or seq < self.first_seq:
            self.unexpected += 1
            return
        self.latencies.append(received_at - published)
        self.delivered += 1
        self.last_receipt = received_at
        if self.delivered == self.expected and self.done is not None and not self.done.done():
            self.done.set_result(None)


class StreamClient(asyncio.Protocol):
    """One stream: sends the GET, checks the response head, de-chunks the body, finds events."""

    def __init__(self, request: bytes, deliveries: Deliveries) -> None:
        self._request = request
        self._deliveries = deliveries
        self._head = bytearray()
        self._raw = bytearray()  # chunked body not yet decoded
        self._text = bytearray()  # decoded body not yet split into complete records
        self._chunk_left = 0
        self._crlf_left = 0
        self._in_body = False
        self.last_seq = -1
        self.received = 0
        self.transport: asyncio.Transport | None = None
        loop = asyncio.get_running_loop()
        self.ready: asyncio.Future[None] = loop.create_future()
        self.closed: asyncio.Future[None] = loop.create_future()

    # asyncio.Protocol
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self.transport = transport
        transport.write(self._request)

    def data_received(self, data: bytes) -> None:
        if not self._in_body:
            self._head += data
            end = self._head.find(b"\r\n\r\n")
            if end < 0:
                return
            head, data = bytes(self._head[:end]), bytes(self._head[end + 4 :])
            self._in_body = True
            self._check_head(head)
        self._raw += data
        body = self._dechunk()
        if body:
            self._text += body
            self._read_records(time.perf_counter())

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.ready.done():
            self.ready.set_exception(StreamError(f"stream closed before it started ({exc})"))
        if not self.closed.done():
            self.closed.set_result(None)

    # HTTP
    def _check_head(self, head: bytes) -> None:
        status_line, _, headers = head.partition(b"\r\n")
        lowered = headers.lower()
        problem = None
        if not status_line.startswith(b"HTTP/1.1 200"):
            problem = f"answered {status_line.decode(errors='replace')}"
        elif b"content-type: text/event-stream" not in lowered:
            problem = "answered 200 without Content-Type: text/event-stream"
        elif b"transfer-encoding: chunked" not in lowered:
            problem = "answered without chunked transfer encoding"
        if problem is not None:
            if not self.ready.done():
                self.ready.set_exception(StreamError(f"the stream URL {problem}"))
            assert self.transport is not None
            self.transport.close()

    def _dechunk(self) -> bytes:
        """Decode what is complete of the chunked body (chunk sizes in hex, CRLF-terminated)."""
        raw, position, body = self._raw, 0, bytearray()
        while position < len(raw):
            if self._chunk_left:
                taken = raw[position : position + self._chunk_left]
                body += taken
                position += len(taken)
                self._chunk_left -= len(taken)
                if not self._chunk_left:
                    self._crlf_left = 2
            elif self._crlf_left:
                skipped = min(self._crlf_left, len(raw) - position)
                position += skipped
                self._crlf_left -= skipped
            else:
                end = raw.find(b"\r\n", position)
                if end < 0:
                    break
                size = int(bytes(raw[position:end]).split(b";")[0], 16)
                position = end + 2
                if size == 0:  # the server ended the stream
                    break
                self._chunk_left = size
        del raw[:position]
        return bytes(body)

    # Server-Sent Events
    def _read_records(self, now: float) -> None:
        end = self._text.rfind(b"\n\n")
        if end < 0:
            return
        # A leading newline lets every "data:" line, even the first, match "\ndata: ".
        records = b"\n" + bytes(self._text[: end + 2])
        del self._text[: end + 2]
        if not self.ready.done():
            if b"\n: connected\n" in records:
                self.ready.set_result(None)  # the server has joined the hub: nothing is missed
            elif b"\n: " in records and b"\nretry:" not in records:
                self.ready.set_exception(StreamError(f"stream said {records.strip()[:200]!r}"))
        for match in SEQ.finditer(records):
            seq = int(match.group(1))
            if seq <= self.last_seq:
                self._deliveries.unexpected += 1
                continue
            self.last_seq = seq
            self.received += 1
            self._deliveries.record(seq, now)


def stream_request(port: int, token: str) -> bytes:
    return (
        f"GET {STREAM_PATH} HTTP/1.1\r\n"
        f"Host: 127.0.0.1:{port}\r\n"
        f"Authorization: Token {token}\r\n"
        "Accept: text/event-stream\r\n"
        "Cache-Control: no-cache\r\n"
        "\r\n"
    ).encode()


# --------------------------------------------------------------------------------------------
# The scenario, against one server process


@dataclass
class Fanout:
    """One publishing phase: events published, deliveries to every stream, what it cost."""

    events: int
    publish_seconds: float
    delivered: int
    expected: int
    seconds: float
    latency_ms: dict[str, float]
    deliveries_per_second: float
    server_cpu_us_per_delivery: float
    client_cpu_us_per_delivery: float
    publish_request_ms_p50: float


@dataclass
class HandlerResult:
    handler: str
    streams: int
    accept_seconds: float
    server_cpu_ms_per_accept: float
    idle: ProcessSample
    open: ProcessSample
    after_fanout: ProcessSample | None
    closed: ProcessSample | None
    close_seconds: float | None
    redis_connections_idle: int | None
    redis_connections_open: int | None
    redis_connections_closed: int | None
    metrics_open: dict[str, int]
    metrics_closed: dict[str, int] | None
    paced: Fanout | None = None
    burst: Fanout | None = None
    load_average: tuple[float, float] = (0.0, 0.0)  # 1-minute load when the run began, ended
    dropped_streams: int = 0
    unexpected_deliveries: int = 0
    problems: list[str] = field(default_factory=list)

    @property
    def rss_kb_per_stream(self) -> float:
        return (self.open.rss_kb - self.idle.rss_kb) / self.streams

    @property
    def threads_per_stream(self) -> float:
        return (self.open.threads - self.idle.threads) / self.streams

    @property
    def fds_per_stream(self) -> float:
        return (self.open.fds - self.idle.fds) / self.streams


def redis_connections_of(pid: int, target: RedisTarget | None) -> int | None:
    """How many of Redis's clients (CLIENT LIST) are sockets of process ``pid``."""
    if target is None:
        return None
    # Redis knows its clients by address; /proc knows which local ports belong to the process.
    ports = {local for _, remote, local in tcp_peers(pid) if remote == target.port}
    return sum(
        1
        for client in target.client.client_list()
        if int(client["addr"].rpartition(":")[2]) in ports
    )


def percentiles(values: array) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]

    return {
        "p50": rank(0.50) * 1000,
        "p95": rank(0.95) * 1000,
        "p99": rank(0.99) * 1000,
        "max": ordered[-1] * 1000,
    }


def client_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


class Bench:
    """Drives one server: opens the streams, publishes, measures, closes."""

    def __init__(
        self,
        options: Options,
        project: Project,
        server: Service,
        target: RedisTarget | None,
        project_publish: ProjectPublish | None,
        progress: Callable[[str], None],
    ) -> None:
        self.options = options
        self.project = project
        self.server = server
        self.target = target
        self.progress = progress
        self.deliveries = Deliveries()
        self.clients: list[StreamClient] = []
        self.next_seq = 0
        self.http = httpx.AsyncClient(
            base_url=f"http://127.0.0.1:{server.port}",
            headers={"Authorization": f"Token {project.staff_token}"},
            timeout=httpx.Timeout(30.0),
        )
        self.project_publish = project_publish

    def sample(self) -> ProcessSample:
        return ProcessSample.of(self.server.pid)

    def redis_connections(self) -> int | None:
        return redis_connections_of(self.server.pid, self.target)

    async def metrics(self) -> dict[str, int]:
        response = await self.http.get(METRICS_PATH)
        if response.status_code != 200:
            raise RuntimeError(f"{METRICS_PATH} answered {response.status_code}")
        return response.json()

    async def open_stream(self, token: str, semaphore: asyncio.Semaphore) -> StreamClient:
        loop = asyncio.get_running_loop()
        request = stream_request(self.server.port, token)
        async with semaphore:
            _, client = await loop.create_connection(
                lambda: StreamClient(request, self.deliveries), "127.0.0.1", self.server.port
            )
            async with asyncio.timeout(self.options.phase_timeout):
                await client.ready
        return client

    async def publish(self, payload: str) -> float:
        """Publish one broadcast event; returns how long publishing took."""
        seq = self.next_seq
        self.next_seq += 1
        data = {"seq": seq, "pad": payload}
        started = self.deliveries.published[seq] = time.perf_counter()
        if self.project_publish is not None:
            await self.project_publish("bench", data)
        else:
            response = await self.http.post(PUBLISH_PATH, json={"type": "bench", "data": data})
            if response.status_code != 201:
                raise RuntimeError(f"publishing answered {response.status_code}: {response.text}")
        return time.perf_counter() - started

    async def warm_up(self) -> None:
        """Load the code paths once, so the idle sample includes them and the streams don't."""
        semaphore = asyncio.Semaphore(1)
        client = await self.open_stream(self.project.tokens[0], semaphore)
        await self.publish("")
        await self.metrics()
        assert client.transport is not None
        client.transport.close()
        await client.closed
        for _ in range(100):  # wait until the server has let the warm-up stream go
            if (await self.metrics())["streams"] == 0:
                break
            await asyncio.sleep(0.05)
        await asyncio.sleep(0.5)

    async def fanout(self, name: str, paced: bool) -> Fanout:
        options, deliveries = self.options, self.deliveries
        live = [client for client in self.clients if not client.closed.done()]
        payload = "x" * max(options.payload_bytes - 24, 0)
        deliveries.start_phase(self.next_seq, options.events * len(live))
        self.progress(
            f"  {name}: {options.events} events to {len(live)} streams"
            + (f" at {options.rate:g}/s" if paced else ", as fast as one publisher can")
        )
        server_cpu, client_cpu = cpu_seconds(self.server.pid), client_cpu_seconds()
        started = time.perf_counter()
        request_times = []
        for index in range(options.events):
            if paced:
                delay = started + index / options.rate - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
            request_times.append(await self.publish(payload))
        publish_seconds = time.perf_counter() - started
        assert deliveries.done is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(options.phase_timeout):
                await deliveries.done
        ended = deliveries.last_receipt if deliveries.delivered else time.perf_counter()
        server_cpu = cpu_seconds(self.server.pid) - server_cpu
        client_cpu = client_cpu_seconds() - client_cpu
        delivered = max(deliveries.delivered, 1)
        request_times.sort()
        return Fanout(
            events=options.events,
            publish_seconds=publish_seconds,
            delivered=deliveries.delivered,
            expected=deliveries.expected,
            seconds=ended - started,
            latency_ms=percentiles(deliveries.latencies),
            deliveries_per_second=deliveries.delivered / max(ended - started, 1e-9),
            server_cpu_us_per_delivery=server_cpu / delivered * 1e6,
            client_cpu_us_per_delivery=client_cpu / delivered * 1e6,
            publish_request_ms_p50=request_times[len(request_times) // 2] * 1000,
        )

    async def run(self) -> HandlerResult:
        options = self.options
        load_before = os.getloadavg()[0]
        await self.warm_up()
        idle, redis_idle = self.sample(), self.redis_connections()

        self.progress(f"  opening {options.streams} streams")
        semaphore = asyncio.Semaphore(options.connect_concurrency)
        tokens = self.project.tokens
        started, cpu = time.perf_counter(), cpu_seconds(self.server.pid)
        tasks = [
            asyncio.ensure_future(self.open_stream(tokens[index % len(tokens)], semaphore))
            for index in range(options.streams)
        ]
        try:
            self.clients = list(await asyncio.gather(*tasks))
        except BaseException:
            for task in tasks:
                task.cancel()
            raise
        accept_seconds = time.perf_counter() - started
        accept_cpu = cpu_seconds(self.server.pid) - cpu
        await asyncio.sleep(1.0)  # let the server settle before sampling it
        opened, redis_open = self.sample(), self.redis_connections()
        metrics_open = await self.metrics()

        result = HandlerResult(
            handler=self.server.name,
            streams=options.streams,
            accept_seconds=accept_seconds,
            server_cpu_ms_per_accept=accept_cpu / options.streams * 1000,
            idle=idle,
            open=opened,
            after_fanout=None,
            closed=None,
            close_seconds=None,
            redis_connections_idle=redis_idle,
            redis_connections_open=redis_open,
            redis_connections_closed=None,
            metrics_open=metrics_open,
            metrics_closed=None,
        )
        if metrics_open.get("streams") != options.streams:
            result.problems.append(
                f"the server counts {metrics_open.get('streams')} streams, not {options.streams}"
            )
        result.paced = await self.fanout("paced", paced=True)
        result.burst = await self.fanout("burst", paced=False)
        result.after_fanout = self.sample()
        result.dropped_streams = sum(1 for client in self.clients if client.closed.done())
        result.unexpected_deliveries = self.deliveries.unexpected
        for phase in (result.paced, result.burst):
            if phase.delivered != phase.expected:
                result.problems.append(
                    f"{phase.expected - phase.delivered} of {phase.expected} deliveries missing"
                )
        if result.dropped_streams:
            result.problems.append(f"{result.dropped_streams} streams closed by the server")
        if result.unexpected_deliveries:
            result.problems.append(
                f"{result.unexpected_deliveries} deliveries duplicated, out of order or late"
            )

        self.progress("  closing the streams")
        closing = time.perf_counter()
        for client in self.clients:
            if client.transport is not None:
                client.transport.close()
        metrics_closed = await self.metrics()
        async with asyncio.timeout(options.phase_timeout):
            while metrics_closed["streams"]:
                await asyncio.sleep(0.1)
                metrics_closed = await self.metrics()
        result.close_seconds = time.perf_counter() - closing
        await asyncio.sleep(1.0)
        result.metrics_closed = await self.metrics()
        result.closed = self.sample()
        result.redis_connections_closed = self.redis_connections()
        result.load_average = (load_before, os.getloadavg()[0])
        return result

    async def aclose(self) -> None:
        for client in self.clients:
            if client.transport is not None:
                client.transport.abort()
        await self.http.aclose()


# --------------------------------------------------------------------------------------------
# Limits


def raise_fd_limit(streams: int) -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; servers started later inherit
    it. Exits when even the hard limit is too low for the number of streams."""
    needed = SERVER_FDS_PER_STREAM * streams + SPARE_FDS
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    ceiling = hard if hard != resource.RLIM_INFINITY else max(soft, needed)
    if ceiling < needed:
        raise SystemExit(
            f"{streams} streams need about {needed} open files per process; the hard limit is "
            f"{hard}. Raise it (ulimit -Hn, LimitNOFILE=, limits.conf) or use fewer --streams."
        )
    if soft != resource.RLIM_INFINITY and soft < ceiling:
        resource.setrlimit(resource.RLIMIT_NOFILE, (ceiling, hard))
    return ceiling


def check_port_range(streams: int) -> None:
    with contextlib.suppress(OSError, ValueError):
        low, high = map(int, Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split())
        if streams + SPARE_FDS > high - low:
            raise SystemExit(f"{streams} streams exceed the local port range {low}-{high}.")


# --------------------------------------------------------------------------------------------
# Report


def versions(redis_client: redis.Redis | None) -> dict[str, str]:
    found = {"python": platform.python_version()}
    for package in ("django", "djangorestframework", "daphne", "twisted", "redis"):
        with contextlib.suppress(metadata.PackageNotFoundError):
            found[package] = metadata.version(package)
    if redis_client is not None:
        found["redis-server"] = str(redis_client.info("server")["redis_version"])
    return found


def machine() -> dict[str, Any]:
    model = ""
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.partition(":")[2].strip()
                break
    memory_kb = 0
    with contextlib.suppress(OSError, ValueError, IndexError):
        memory_kb = int(Path("/proc/meminfo").read_text().split()[1])
    return {
        "cpus": os.cpu_count(),
        "cpu_model": model,
        "memory_gb": round(memory_kb / 1024 / 1024, 1),
        "kernel": platform.release(),
        "load_average": [round(load, 2) for load in os.getloadavg()],
    }


Row = tuple[str, str, float | None]  # label, value as shown, value compared across handlers


def _number(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _phase_rows(title: str, phase: Fanout | None) -> list[Row]:
    if phase is None:
        return [(title, "-", None)]
    latency = phase.latency_ms
    return [
        (title, "", None),
        ("  delivered / expected", f"{phase.delivered:,}/{phase.expected:,}", None),
        *(
            (f"  latency {key} (ms)", _number(latency.get(key)), latency.get(key))
            for key in ("p50", "p95", "p99", "max")
        ),
        (
            "  deliveries per second",
            _number(phase.deliveries_per_second, 0),
            phase.deliveries_per_second,
        ),
        (
            "  server CPU per delivery (us)",
            _number(phase.server_cpu_us_per_delivery),
            phase.server_cpu_us_per_delivery,
        ),
        ("  client CPU per delivery (us)", _number(phase.client_cpu_us_per_delivery), None),
        ("  publish call p50 (ms)", _number(phase.publish_request_ms_p50, 2), None),
    ]


def result_rows(options: Options, result: HandlerResult) -> list[Row]:
    r = result

    def counts(*values: int | None) -> str:
        if all(value is None for value in values):
            return "n/a"
        return "/".join("?" if value is None else str(value) for value in values)

    closed = "-"
    if r.closed is not None and r.metrics_closed is not None:
        closed = (
            f"{r.metrics_closed.get('streams')}/{r.closed.threads}/{r.closed.rss_kb / 1024:.0f}"
        )
    return [
        ("time to accept all streams (s)", f"{r.accept_seconds:.2f}", r.accept_seconds),
        ("streams accepted per second", f"{r.streams / r.accept_seconds:,.0f}", None),
        (
            "server CPU per accepted stream (ms)",
            f"{r.server_cpu_ms_per_accept:.2f}",
            r.server_cpu_ms_per_accept,
        ),
        ("server threads idle -> open", f"{r.idle.threads} -> {r.open.threads}", r.open.threads),
        ("server threads per stream", f"{r.threads_per_stream:.2f}", r.threads_per_stream),
        (
            "server RSS idle -> open (MB)",
            f"{r.idle.rss_kb / 1024:.0f} -> {r.open.rss_kb / 1024:.0f}",
            r.open.rss_kb,
        ),
        ("server RSS per stream (KB)", f"{r.rss_kb_per_stream:.1f}", r.rss_kb_per_stream),
        ("server open files per stream", f"{r.fds_per_stream:.2f}", r.fds_per_stream),
        (
            "server's Redis connections idle/open/closed",
            counts(r.redis_connections_idle, r.redis_connections_open, r.redis_connections_closed),
            None,
        ),
        (
            "hub streams/channels/tasks (open)",
            "/".join(str(r.metrics_open.get(key, "?")) for key in ("streams", "channels", "tasks")),
            None,
        ),
        *_phase_rows(f"paced: {options.events} events at {options.rate:g}/s", r.paced),
        *_phase_rows(f"burst: {options.events} events at once", r.burst),
        (
            "server RSS after fan-out (MB)",
            f"{r.after_fanout.rss_kb / 1024:.0f}" if r.after_fanout else "-",
            None,
        ),
        ("time to release all streams (s)", _number(r.close_seconds, 2), None),
        ("after close: streams/threads/RSS MB", closed, None),
        ("machine load average, start -> end", "{:.1f} -> {:.1f}".format(*r.load_average), None),
    ]


def render_table(
    options: Options, results: list[HandlerResult], environment: dict[str, Any]
) -> str:
    names = [result.handler for result in results]
    columns = [result_rows(options, result) for result in results]
    comparing = names == list(HANDLERS)  # thread-free first, then stock
    table = [["", *names, "stock/thread-free" if comparing else ""]]
    for index, (label, _, _) in enumerate(columns[0]):
        compared = ""
        if comparing:
            thread_free, stock = columns[0][index][2], columns[1][index][2]
            if thread_free and stock is not None:
                compared = f"{stock / thread_free:.1f}x"
        table.append([label, *(column[index][1] for column in columns), compared])
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = [
        "  ".join(
            cell.ljust(widths[column]) if column == 0 else cell.rjust(widths[column])
            for column, cell in enumerate(line)
        ).rstrip()
        for line in table
    ]
    lines.insert(1, "-" * max(map(len, lines)))

    host = environment["machine"]
    header = [
        f"Event streams on one Daphne process: {options.streams:,} streams of {options.users} "
        f"users; broker: {environment['broker']}; events published via {options.publish_via}",
        f"{environment['date']}; {host['cpus']} CPUs ({host['cpu_model'] or 'unknown model'}), "
        f"kernel {host['kernel']}, load average before: {host['load_average'][0]}",
        ", ".join(f"{name} {version}" for name, version in environment["versions"].items()),
        "",
    ]
    problems = [
        f"PROBLEM ({result.handler}): {problem}"
        for result in results
        for problem in result.problems
    ]
    return "\n".join(header + lines + (["", *problems] if problems else []))


def as_json(value: Any) -> Any:
    if isinstance(value, HandlerResult):
        data = {name: as_json(item) for name, item in vars(value).items()}
        data.update(
            rss_kb_per_stream=value.rss_kb_per_stream,
            threads_per_stream=value.threads_per_stream,
            fds_per_stream=value.fds_per_stream,
        )
        return data
    if isinstance(value, Fanout | ProcessSample):
        return {name: as_json(item) for name, item in vars(value).items()}
    if isinstance(value, dict):
        return {key: as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return value


# --------------------------------------------------------------------------------------------
# Main


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


async def measure(
    options: Options,
    project: Project,
    work_dir: Path,
    target: RedisTarget | None,
    progress: Callable[[str], None],
) -> list[HandlerResult]:
    results = []
    project_publish = load_project_publish(project) if options.publish_via == "redis" else None
    # Sequentially, never side by side: each server has the machine to itself.
    for handler in options.handlers:
        progress(f"{handler}: starting Daphne ({HANDLERS[handler]})")
        server = start_daphne(project, handler, work_dir)
        bench = Bench(options, project, server, target, project_publish, progress)
        try:
            results.append(await bench.run())
        except BaseException:
            progress(f"Daphne ({server.name}) log:\n{tail(server.log)}")
            raise
        finally:
            await bench.aclose()
            server.stop()
    return results


@dataclass(frozen=True)
class RedisTarget:
    url: str
    client: redis.Redis
    port: int


@contextlib.contextmanager
def redis_for_run(options: Options, work_dir: Path, prefix: str) -> Iterator[RedisTarget | None]:
    """The Redis of this run (started here unless --redis-url), emptied of this run's keys after."""
    if options.broker != "redis":
        yield None
        return
    server = None if options.redis_url else start_redis(work_dir)
    url = options.redis_url or f"redis://127.0.0.1:{server.port}/0"  # type: ignore[union-attr]
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


def _interrupt(signum: int, frame: object) -> None:
    # SIGTERM ends the run like Ctrl-C does, so that every finally block stops its process.
    raise KeyboardInterrupt


def main(argv: list[str] | None = None) -> int:
    options = parse_options(argv)
    if not Path("/proc/self/status").exists():
        raise SystemExit("This benchmark reads /proc: it runs on Linux only.")
    raise_fd_limit(options.streams)
    check_port_range(options.streams)
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
        project = prepare_project(work_dir, target.url if target else "", prefix, options.users)
        environment = {
            "date": time.strftime("%Y-%m-%d %H:%M:%S %z"),
            "machine": machine(),
            "versions": versions(target.client if target else None),
            "broker": (
                f"redis (maxclients {target.client.config_get('maxclients')['maxclients']})"
                if target
                else "in-process"
            ),
            "publish_via": options.publish_via,
            "fd_limit": resource.getrlimit(resource.RLIMIT_NOFILE)[0],
        }
        results = asyncio.run(measure(options, project, work_dir, target, progress))

    print(render_table(options, results, environment), file=output)
    if options.json_path:
        document = {
            "options": as_json(vars(options)),
            "environment": environment,
            "results": as_json(results),
        }
        text = json.dumps(document, indent=2)
        if options.json_path == "-":
            print(text)
        else:
            Path(options.json_path).write_text(text + "\n")
    return 1 if any(result.problems for result in results) else 0


if __name__ == "__main__":
    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Every process started here has been stopped by then (finally blocks, context managers).
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
