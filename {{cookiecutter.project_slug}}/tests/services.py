"""Real services for the tests: redis-server (alone, or a master, a replica and three Sentinels) and
Daphne processes on free loopback ports.

Every process is started with a deadline and stopped by its fixture. Under ``CI=true`` a missing
program fails the test instead of skipping it.
"""

import asyncio
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import ExitStack, asynccontextmanager, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import httpx
import pytest
import redis

T = TypeVar("T")

PROJECT_DIR = Path(__file__).resolve().parent.parent
# No server a test starts may outlive this, even if the test run is killed. Above the whole
# suite's run time: the session's own redis-server lives as long as the run.
SERVER_LIFETIME_SECONDS = 1800


def require_program(name: str) -> str:
    path = shutil.which(name)
    if path is None:
        message = f"{name} is not installed (on Debian: apt-get install {name})"
        if os.environ.get("CI", "").lower() == "true":
            pytest.fail(message)
        pytest.skip(message)
    return path


def wait_until(condition: Callable[[], object], timeout: float, interval: float = 0.05) -> float:
    """Seconds until ``condition()`` was true; fails the test after ``timeout`` seconds."""
    start = time.monotonic()
    while not condition():
        elapsed = time.monotonic() - start
        assert elapsed < timeout, f"still not true after {elapsed:.1f}s"
        time.sleep(interval)
    return time.monotonic() - start


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(port: int, process: subprocess.Popen, timeout: float = 20.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"{process.args!r} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


def served_pid(process: subprocess.Popen | None) -> int:
    """The server's own pid: `timeout` runs each server as its only child."""
    assert process is not None, "not started"
    children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text()
    return int(children.split()[0])


@dataclass
class RedisServer:
    port: int
    directory: Path
    process: subprocess.Popen | None = None
    replica_of: int | None = None  # the master's port, for a replica
    options: list[str] = field(default_factory=list)  # more redis-server options, e.g. cluster's

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        redis_server = require_program("redis-server")
        replication = ["--replicaof", "127.0.0.1", str(self.replica_of)] if self.replica_of else []
        # No persistence: a restart loses history, like a cache-only Redis in production.
        self.process = subprocess.Popen(
            [
                "timeout",
                str(SERVER_LIFETIME_SECONDS),
                redis_server,
                "--port",
                str(self.port),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                # A replica's first sync starts at once (Redis waits 5 s for more replicas).
                "--repl-diskless-sync-delay",
                "0",
                *replication,
                *self.options,
            ],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    @property
    def pid(self) -> int:
        return served_pid(self.process)

    def command(self, *args: str) -> str:
        redis_cli = require_program("redis-cli")
        result = subprocess.run(
            [redis_cli, "-p", str(self.port), *args], capture_output=True, check=True, timeout=10
        )
        return result.stdout.decode(errors="replace").strip()


@contextmanager
def redis_server(directory: Path, replica_of: int | None = None) -> Iterator[RedisServer]:
    server = RedisServer(free_port(), directory, replica_of=replica_of)
    server.start()
    try:
        if replica_of is not None:
            wait_until(lambda: master_counts_a_replica(replica_of), 20)
        yield server
    finally:
        server.stop()


def master_counts_a_replica(master_port: int) -> bool:
    """A write on the master is confirmed by a replica (``WAIT``). A replica reports its link up
    once it has loaded the master's data, but the master counts it only after its first ACK, up to
    a second later: until then every ``WAIT`` (``EVENTS_PUBLISH_REPLICAS``) times out."""
    with redis.Redis(port=master_port, socket_timeout=5) as master:
        master.set("tests:replica-in-sync", 1)
        return master.wait(1, 100) >= 1


SENTINEL_SERVICE = "events-master"


@dataclass
class RedisSentinel:
    """A Sentinel watching the master at ``master_port``; two of three must agree it is down,
    1 s after it stopped answering."""

    port: int
    directory: Path
    master_port: int
    process: subprocess.Popen | None = None

    def start(self) -> None:
        redis_sentinel = require_program("redis-sentinel")
        config = self.directory / "sentinel.conf"  # Sentinel rewrites it as it learns
        config.write_text(
            f"port {self.port}\n"
            "bind 127.0.0.1\n"
            f"dir {self.directory}\n"
            f"sentinel monitor {SENTINEL_SERVICE} 127.0.0.1 {self.master_port} 2\n"
            f"sentinel down-after-milliseconds {SENTINEL_SERVICE} 1000\n"
            f"sentinel failover-timeout {SENTINEL_SERVICE} 5000\n"
        )
        self.process = subprocess.Popen(
            ["timeout", str(SERVER_LIFETIME_SECONDS), redis_sentinel, str(config)],
            stdout=subprocess.DEVNULL,
        )
        wait_for_port(self.port, self.process)

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5, decode_responses=True)


@dataclass
class SentinelDeployment:
    """A master, its replica and three Sentinels, as ``redis_sentinels()`` starts them."""

    master: RedisServer
    replica: RedisServer
    sentinels: list[RedisSentinel]  # those running: ``lose_sentinel()`` stops one

    @property
    def url(self) -> str:
        hosts = ",".join(f"127.0.0.1:{sentinel.port}" for sentinel in self.sentinels)
        return f"redis+sentinel://{hosts}/{SENTINEL_SERVICE}/0"

    def watched(self) -> bool:
        """Every Sentinel knows the other two and the replica, in sync with the master: a
        failover can happen."""
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                master = client.sentinel_master(SENTINEL_SERVICE)
                replicas = client.sentinel_slaves(SENTINEL_SERVICE)
            # A Sentinel never forgets one it knew: a lost one still counts.
            if master["num-other-sentinels"] < len(self.sentinels) - 1:
                return False
            if not any(
                replica["port"] == self.replica.port
                and replica["flags"] == "slave"
                and replica["master-link-status"] == "ok"
                for replica in replicas
            ):
                return False
        return True

    def replica_promoted(self) -> bool:
        """Whether every running Sentinel names the replica as the master."""
        return self.master_ports() == {self.replica.port}

    def swap_roles(self) -> None:
        """After a failover: the replica is the master, and the old master, once started again,
        its replica (Sentinel turns it into one)."""
        self.master, self.replica = self.replica, self.master

    def lose_sentinel(self) -> None:
        """Stops the first Sentinel (the first one clients ask)."""
        self.sentinels.pop(0).stop()

    def master_ports(self) -> set[int]:
        """The master's port, as each Sentinel names it."""
        ports = set()
        for sentinel in self.sentinels:
            with sentinel.client() as client:
                _, port = client.sentinel_get_master_addr_by_name(SENTINEL_SERVICE)
            ports.add(int(port))
        return ports


@contextmanager
def redis_sentinels(directory: Path, timeout: float = 20.0) -> Iterator[SentinelDeployment]:
    """A master, a replica and three Sentinels on loopback, returned once a failover can happen
    (or failing after ``timeout`` seconds); all stopped on leaving."""
    with ExitStack() as stack:
        directories = {}
        for name in ("master", "replica", "sentinel-1", "sentinel-2", "sentinel-3"):
            directories[name] = directory / name
            directories[name].mkdir(parents=True)
        master = stack.enter_context(redis_server(directories["master"]))
        replica = stack.enter_context(redis_server(directories["replica"], replica_of=master.port))
        sentinels = []
        for number in (1, 2, 3):
            sentinel = RedisSentinel(free_port(), directories[f"sentinel-{number}"], master.port)
            stack.callback(sentinel.stop)
            sentinel.start()
            sentinels.append(sentinel)
        deployment = SentinelDeployment(master, replica, sentinels)
        deadline = time.monotonic() + timeout
        # Sentinels find each other through the master, every 2 s.
        while not deployment.watched():
            if time.monotonic() > deadline:
                raise TimeoutError(f"the Sentinels did not all see each other in {timeout}s")
            time.sleep(0.1)
        yield deployment


@dataclass
class LiveProject:
    """A migrated SQLite database with users and tokens, shared by the servers of a test module."""

    env: dict[str, str]
    tokens: dict[str, str] = field(default_factory=dict)

    def manage(self, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [sys.executable, "manage.py", *args],
            cwd=PROJECT_DIR,
            env={**self.env, **env},
            capture_output=True,
            text=True,
            timeout=120,
        )

    def create_token_user(self, **env: str) -> str:
        """A new user, of the calling test only (which may take its access away); its token."""
        created = self.manage(
            "shell",
            "-c",
            "import secrets\n"
            "from django.contrib.auth.models import User\n"
            "from rest_framework.authtoken.models import Token\n"
            "user = User.objects.create_user(f'user-{secrets.token_hex(4)}')\n"
            "print(Token.objects.create(user=user).key)",
            **env,
        )
        assert created.returncode == 0, created.stderr
        return created.stdout.strip().splitlines()[-1]

    def delete_token(self, token: str, **env: str) -> str:
        """Deletes ``token`` in a process of its own, as an admin would; ``env`` names the Redis
        (and prefix) where the servers hear of it. Returns what that process logged."""
        deleted = self.manage(
            "shell",
            "-c",
            "from rest_framework.authtoken.models import Token\n"
            f"Token.objects.filter(key={token!r}).delete()",
            **env,
        )
        assert deleted.returncode == 0, deleted.stderr
        return deleted.stderr


_CREATE_USERS = """
import json
from django.contrib.auth.models import Permission, User
from rest_framework.authtoken.models import Token
publish = Permission.objects.get(codename="publish_event")
tokens = {}
for name, staff in [("alice", False), ("bob", False), ("staff", True)]:
    user = User.objects.create_user(name, password="password", is_staff=staff)
    if staff:
        user.user_permissions.add(publish)
    tokens[name] = Token.objects.create(user=user).key
    tokens[name + "_pk"] = str(user.pk)
print(json.dumps(tokens))
"""


def prepare_project(directory: Path) -> LiveProject:
    env = {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        "SECRET_KEY": "test-" + "x" * 60,
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": f"sqlite:///{directory / 'live.sqlite3'}",
        "REDIS_URL": "",
        # Tests open many streams per user and read topics of every name; the tests of limits
        # and of topic rules set these back.
        "EVENTS_PUBLIC_TOPICS": "*",
        "EVENTS_MAX_STREAMS_PER_USER": "0",
        "EVENTS_STREAM_RATE": "",
        "EVENTS_PUBLISH_RATE": "",
        "LOGIN_RATE": "",
        "LOGIN_ADDRESS_RATE": "",
    }
    project = LiveProject(env)
    for args in (("migrate", "--noinput"), ("shell", "-c", _CREATE_USERS)):
        result = project.manage(*args)
        if result.returncode != 0:
            raise RuntimeError(f"manage.py {args[0]} failed:\n{result.stderr}")
    project.tokens = json.loads(result.stdout.strip().splitlines()[-1])
    return project


@dataclass
class Daphne:
    port: int
    env: dict[str, str]
    log_path: Path
    process: subprocess.Popen | None = None
    application: str = "config.asgi:application"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> "Daphne":
        # As the Dockerfile runs it: without Daphne's own access log (the project's logs).
        daphne = [sys.executable, "-m", "daphne", "-v", "0"]
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                [
                    "timeout",
                    str(SERVER_LIFETIME_SECONDS),
                    *daphne,
                    "-b",
                    "127.0.0.1",
                    "-p",
                    str(self.port),
                    self.application,
                ],
                cwd=PROJECT_DIR,
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
            )
        wait_for_port(self.port, self.process)
        return self

    def stop(self) -> None:
        if self.process is not None:
            stop(self.process)

    @property
    def pid(self) -> int:
        return served_pid(self.process)

    def status(self, field_name: str) -> int:
        """A number from /proc/<pid>/status, e.g. "Threads" or "VmRSS" (kB)."""
        for line in Path(f"/proc/{self.pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1])
        raise KeyError(field_name)

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def connections_to(self, port: int) -> int:
        """Established TCP connections of the server to ``port`` (e.g. Redis's), from /proc."""
        inodes = set()
        for fd in Path(f"/proc/{self.pid}/fd").iterdir():
            target = os.readlink(fd) if fd.is_symlink() else ""
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
        count = 0
        for table in ("tcp", "tcp6"):
            for line in Path(f"/proc/{self.pid}/net/{table}").read_text().splitlines()[1:]:
                columns = line.split()
                remote_port = int(columns[2].rpartition(":")[2], 16)
                # State 01 is ESTABLISHED.
                if columns[9] in inodes and columns[3] == "01" and remote_port == port:
                    count += 1
        return count


@contextmanager
def daphne_server(
    project: LiveProject,
    directory: Path,
    *,
    application: str = "config.asgi:application",
    **settings: str,
) -> Iterator[Daphne]:
    """A Daphne process serving ``application``; keyword arguments are environment variables
    (settings) for it."""
    port = free_port()
    env = {**project.env, **settings}
    server = Daphne(port, env, directory / f"daphne-{port}.log", application=application).start()
    try:
        yield server
    finally:
        server.stop()


@contextmanager
def gunicorn_server(live_project: LiveProject, directory: Path, **settings: str) -> Iterator[str]:
    """The project under gunicorn (config.wsgi) on loopback, as its bake with gunicorn runs the
    API (two workers unless WEB_CONCURRENCY says otherwise); yields its URL."""
    directory.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**live_project.env, "WEB_CONCURRENCY": "2", **settings}
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes a fresh one
    with (directory / "gunicorn.log").open("wb") as log:
        process = subprocess.Popen(
            [
                "timeout",
                str(SERVER_LIFETIME_SECONDS),
                sys.executable,
                "-m",
                "gunicorn",
                "--bind",
                f"127.0.0.1:{port}",
                "config.wsgi:application",
            ],
            cwd=PROJECT_DIR,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port, process)
        yield f"http://127.0.0.1:{port}"
    finally:
        stop(process)


def api(server: Daphne, token: str) -> httpx.Client:
    return httpx.Client(
        base_url=server.url, headers={"Authorization": f"Token {token}"}, timeout=10
    )


def publish(client: httpx.Client, event_type: str, data: object = None, **address: object) -> str:
    """Publish through the REST API; returns the new event's id."""
    response = client.post("/api/events/", json={"type": event_type, "data": data, **address})
    assert response.status_code == 201, response.text
    return response.json()["id"]


def metrics(client: httpx.Client) -> dict:
    """The stream metrics of the process that answers (staff only). Served without touching
    Redis: usable while Redis is down or frozen."""
    response = client.get("/api/events/metrics/")
    assert response.status_code == 200, response.text
    return response.json()


@contextmanager
def signed_in_browser(
    server: Daphne, username: str, password: str = "password"
) -> Iterator[httpx.Client]:
    """A client holding a session cookie, signed in through the login form as a browser is."""
    with httpx.Client(base_url=server.url, timeout=10) as client:
        client.get("/accounts/login/").raise_for_status()
        response = client.post(
            "/accounts/login/",
            data={
                "username": username,
                "password": password,
                "csrfmiddlewaretoken": client.cookies["csrftoken"],
            },
        )
        assert response.status_code == 302, response.text
        yield client


@asynccontextmanager
async def raw_streams(
    server: Daphne, token: str, count: int
) -> AsyncIterator[list[asyncio.StreamReader]]:
    """``count`` streams opened at once (raw sockets, as many clients would), every one
    subscribed; closed on leaving."""
    request = (
        "GET /api/events/stream/ HTTP/1.1\r\nHost: 127.0.0.1\r\nAccept: text/event-stream\r\n"
        f"Authorization: Token {token}\r\n\r\n"
    ).encode()
    connections = []
    try:
        for _ in range(count):
            reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
            writer.write(request)
            connections.append((reader, writer))
        for reader, _ in connections:
            await asyncio.wait_for(reader.readuntil(b": connected"), 20)
        yield [reader for reader, _ in connections]
    finally:
        for _, writer in connections:
            writer.close()


async def hold_streams(server: Daphne, token: str, count: int, measure: Callable[[], T]) -> T:
    """What ``measure`` (run in a thread) finds while ``count`` streams are open."""
    async with raw_streams(server, token, count):
        return await asyncio.to_thread(measure)
