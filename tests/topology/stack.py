"""A generated project served as in production, on loopback: nginx (plain http, and https with
HTTP/2) in front of Daphne processes, two by default (and gunicorn for everything but the streams,
in the daphne+gunicorn topology), sharing one Redis and one database."""

import re
import secrets
from collections.abc import Iterator, Mapping
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from pathlib import Path

from ..certificates import Certificate, self_signed_certificate
from ..helpers import free_port, project_env, require_binary, run
from ..nginx_config import nginx_command, nginx_config
from .processes import Server

# The demo login, created with the project's own command.
USERNAME = "demo"
PASSWORD = "demo"
# How long a browser waits before it reconnects a dropped stream: long enough for a test to act
# while the client is away, short enough to keep the tests quick.
RETRY_MILLISECONDS = 1500
# A stopping Daphne spreads its clients' reconnects over this window (10 s by default): short
# here, so that a browser whose server stops is back within a test's expect timeout.
SHUTDOWN_RECONNECT_WINDOW_SECONDS = 1
# Django sends Strict-Transport-Security on responses over https only (nginx tells it the scheme),
# so plain-http clients of this stack never see it.
HSTS_SECONDS = 3600


@dataclass
class Stack:
    nginx: Server
    daphnes: list[Server]
    gunicorn: Server | None
    token: str  # of the demo user, a superuser: may publish and read metrics
    tls_port: int  # nginx's https port (HTTP/2)
    certificate: Certificate  # nginx's, self-signed: trust it to verify https

    @property
    def url(self) -> str:
        return self.nginx.url

    @property
    def tls_url(self) -> str:
        return f"https://localhost:{self.tls_port}"

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Token {self.token}"}


def _settings(directory: Path, redis_url: str, prefix: str) -> dict[str, str]:
    """Production settings (DEBUG off), except for https: this stack serves plain http too
    (nginx's plain_http="serve"), to clients that speak nothing else."""
    return {
        "DEBUG": "false",
        "SECRET_KEY": secrets.token_urlsafe(50),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "DATABASE_URL": f"sqlite:///{directory / 'db.sqlite3'}",
        "REDIS_URL": redis_url,
        "EVENTS_REDIS_PREFIX": prefix,
        "EVENTS_RETRY_MILLISECONDS": str(RETRY_MILLISECONDS),
        "EVENTS_SHUTDOWN_RECONNECT_WINDOW_SECONDS": str(SHUTDOWN_RECONNECT_WINDOW_SECONDS),
        # Hundreds of streams of one user, opened at once: checked, never reached.
        "EVENTS_MAX_STREAMS_PER_USER": "100000",
        "EVENTS_STREAM_RATE": "100000/min",
        "SECURE_SSL_REDIRECT": "false",
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
        "SECURE_HSTS_SECONDS": str(HSTS_SECONDS),
        "LOG_LEVEL": "WARNING",
    }


def _prepare_database(project: Path, python: Path, env: dict[str, str]) -> str:
    """Migrate, create the demo superuser; returns its API token."""
    manage = [str(python), "manage.py"]
    run([*manage, "migrate", "--noinput"], cwd=project, env=env)
    run([*manage, "create_demo_user", "--force"], cwd=project, env=env)
    output = run([*manage, "drf_create_token", USERNAME], cwd=project, env=env).stdout
    match = re.search(r"Generated token (\w+)", output)
    assert match, output
    return match.group(1)


@contextmanager
def loopback_stack(
    project: Path,
    python: Path,
    topology: str,
    redis_url: str,
    directory: Path,
    extra_settings: Mapping[str, str] | None = None,
    nginx_worker_connections: int = 1024,
    daphnes: int = 2,
) -> Iterator[Stack]:
    """Start every server of ``topology``; all of them are stopped when the block ends.

    ``extra_settings`` (environment variables of the project) override the stack's own.
    ``nginx_worker_connections`` bounds nginx's connections: two per open HTTP/1.1 stream.
    ``daphnes`` is the number of Daphne processes behind nginx.
    """
    settings = _settings(directory, redis_url, f"topology-{directory.name}")
    env = project_env(python, **{**settings, **(extra_settings or {})})
    token = _prepare_database(project, python, env)
    with ExitStack() as running:

        def start(name: str, command: list[str], port: int, **extra_env: str) -> Server:
            server = Server(
                name, command, port, project, {**env, **extra_env}, directory / f"{name}.log"
            )
            running.callback(server.stop)
            return server.start()

        servers = []
        for number in range(1, daphnes + 1):
            port = free_port()
            daphne = [str(python), "-m", "daphne", "-v", "0", "-b", "127.0.0.1"]
            command = [*daphne, "-p", str(port), "config.asgi:application"]
            servers.append(start(f"daphne-{number}", command, port))
        gunicorn = None
        if topology == "daphne+gunicorn":
            port = free_port()
            command = [str(python), "-m", "gunicorn", "--bind", f"127.0.0.1:{port}"]
            gunicorn = start("gunicorn", [*command, "config.wsgi:application"], port)

        nginx_port, tls_port = free_port(), free_port()
        certificate = self_signed_certificate(directory / "certs")
        config = nginx_config(
            project,
            directory / "nginx",
            port=nginx_port,
            asgi_upstreams=[f"127.0.0.1:{daphne.port}" for daphne in servers],
            wsgi_upstream=f"127.0.0.1:{gunicorn.port}" if gunicorn else None,
            worker_connections=nginx_worker_connections,
            tls_port=tls_port,
            certificate=certificate,
        )
        command = nginx_command(require_binary("nginx", "/usr/sbin"), config, "daemon off;")
        nginx = start("nginx", command, nginx_port)
        yield Stack(nginx, servers, gunicorn, token, tls_port, certificate)
