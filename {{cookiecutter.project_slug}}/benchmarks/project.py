"""The project under test: a throw-away database with users and tokens, its environment, and the
ways events are published during a run."""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import httpx
import redis

from .launcher import PROJECT_DIR

PUBLISH_PATH = "/api/events/"
METRICS_PATH = "/api/events/metrics/"

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


def project_env(work_dir: Path, redis_url: str, prefix: str, partitions: int) -> dict[str, str]:
    return {
        **os.environ,
        "DJANGO_SETTINGS_MODULE": "config.settings",
        "DEBUG": "false",
        "SECRET_KEY": "benchmark-only-" + os.urandom(24).hex(),
        "ALLOWED_HOSTS": "127.0.0.1,localhost",
        "SECURE_SSL_REDIRECT": "false",
        "DATABASE_URL": f"sqlite:///{work_dir / 'benchmark.sqlite3'}",
        "REDIS_URL": redis_url,
        "EVENTS_PARTITIONS": str(partitions),
        # A prefix of this run's own, so that a shared Redis keeps its real events apart.
        "EVENTS_REDIS_PREFIX": prefix,
        # The baselines' channel, under the same prefix.
        "BENCHMARK_CHANNEL": f"{prefix}:baseline",
        # Limits checked, as in production, but never reached: their cost is part of the figures.
        "EVENTS_MAX_STREAMS_PER_USER": "1000000",
        "EVENTS_STREAM_RATE": "1000000/min",
        "EVENTS_PUBLISH_RATE": "1000000/min",
        "LOG_LEVEL": "WARNING",
        "PYTHONUNBUFFERED": "1",
    }


def prepare_project(
    work_dir: Path, redis_url: str, prefix: str, users: int, partitions: int = 1
) -> Project:
    env = project_env(work_dir, redis_url, prefix, partitions)
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


# A publisher sends the broadcast event {"seq": seq, "pad": payload}.
Publisher = Callable[[int, str], None]


def project_publisher(project: Project) -> Publisher:
    """The project's own ``publish()``, run in this process: events reach the server through
    Redis, as they do from a worker, a management command or another web process."""
    os.environ.update(project.env)
    sys.path.insert(0, str(PROJECT_DIR))
    import django
    from django.apps import apps

    django.setup()
    publish = importlib.import_module(apps.get_app_config("events").name + ".publish").publish
    return lambda seq, payload: publish("bench", {"seq": seq, "pad": payload})


def http_publisher(project: Project, port: int) -> Publisher:
    """POST to the server's publish API: the server then also spends CPU on each publish."""
    client = httpx.Client(
        base_url=f"http://127.0.0.1:{port}",
        headers={"Authorization": f"Token {project.staff_token}"},
        timeout=30,
    )

    def publish(seq: int, payload: str) -> None:
        data = {"seq": seq, "pad": payload}
        response = client.post(PUBLISH_PATH, json={"type": "bench", "data": data})
        if response.status_code != 201:
            raise RuntimeError(f"publishing answered {response.status_code}: {response.text}")

    return publish


def channel_publisher(client: redis.Redis, channel: str) -> Publisher:
    """A plain ``PUBLISH`` of the event's JSON, for the baselines."""

    def publish(seq: int, payload: str) -> None:
        client.publish(channel, json.dumps({"seq": seq, "pad": payload}, separators=(",", ":")))

    return publish


def hub_metrics(project: Project, port: int) -> dict[str, int]:
    """The project's staff metrics (open streams, channels, tasks) of the server process."""
    # No keep-alive: an idle connection would count as an open stream of the server.
    with httpx.Client(
        headers={"Authorization": f"Token {project.staff_token}", "Connection": "close"},
        timeout=30,
    ) as client:
        response = client.get(f"http://127.0.0.1:{port}{METRICS_PATH}")
    if response.status_code != 200:
        raise RuntimeError(f"{METRICS_PATH} answered {response.status_code}")
    return response.json()


def timed(publish: Publisher, seq: int, payload: str) -> tuple[float, float]:
    """(when the call started, how long it took)."""
    started = time.perf_counter()
    publish(seq, payload)
    return started, time.perf_counter() - started
