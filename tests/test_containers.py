"""The generated container setup: static checks, and the real stack under podman.

The slow test builds the generated Dockerfile, starts compose.yaml with two
Daphne replicas (ASGI_REPLICAS) behind nginx, with a certificate from
`make cert`, and proves that an event published through nginx over https
reaches streams held by both replicas, while plain http is redirected. Another
starts it with the "sentinel" profile, kills the Redis master under open
streams, and proves that events flow again through the replica Sentinel
promotes. They need rootful podman,
podman-compose and debootstrap (no image registry: every image is built
from Debian packages, see tests/containers/).
"""

from __future__ import annotations

import json
import secrets
import shutil
import ssl
import subprocess
import sys
import time
from contextlib import ExitStack
from pathlib import Path

import httpx
import pytest
import yaml

from .containers.podman import (
    NGINX_IMAGE,
    POSTGRES_IMAGE,
    REDIS_IMAGE,
    Podman,
    Stack,
    can_run_as_root,
    wait_until,
)
from .helpers import CACHE_DIR, file_lock, free_port, in_ci, require_binary, run
from .topology.sse import open_stream

VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A command-line tool installed next to the running Python (or on PATH)."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else require_binary(name)


VARIANTS = [
    {"database": database, "http_topology": topology}
    for database in ("sqlite", "postgresql")
    for topology in ("daphne", "daphne+gunicorn")
]


def variant_id(context: dict) -> str:
    return f"{context['database']}-{context['http_topology']}"


# --- static checks -------------------------------------------------------


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_compose_file_follows_the_compose_spec(baked, context):
    compose_file = str(baked(**context) / "compose.yaml")
    run([tool("check-jsonschema"), "--builtin-schema", "vendor.compose-spec", compose_file])


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_compose_services_wait_for_what_they_need(baked, context):
    compose = yaml.safe_load((baked(**context) / "compose.yaml").read_text())
    services = compose["services"]

    def waits_for(service: str) -> dict[str, str]:
        depends_on = services[service].get("depends_on", {})
        return {name: spec["condition"] for name, spec in depends_on.items()}

    servers = ["asgi", "wsgi"] if context["http_topology"] == "daphne+gunicorn" else ["asgi"]
    for server in servers:
        assert waits_for(server) == {
            "redis": "service_healthy",
            "migrate": "service_completed_successfully",
        }
    assert waits_for("nginx") == {
        **dict.fromkeys(servers, "service_healthy"),
        "collectstatic": "service_completed_successfully",
    }
    if context["database"] == "postgresql":
        assert waits_for("migrate") == {"postgres": "service_healthy"}
        assert "healthcheck" in services["postgres"]
    assert "healthcheck" in services["redis"]
    # Replicas need free names and ports: only nginx publishes one.
    assert not any("container_name" in spec for spec in services.values())
    assert [name for name, spec in services.items() if "ports" in spec] == ["nginx"]


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_compose_file_holds_no_secret(baked, context):
    compose = yaml.safe_load((baked(**context) / "compose.yaml").read_text())
    for name, spec in compose["services"].items():
        environment = spec.get("environment", {})
        assert "SECRET_KEY" not in environment, name
        # Passwords only ever come from .env, by reference.
        for variable, value in environment.items():
            if "PASSWORD" in variable:
                assert value.startswith("${"), name
            if variable == "DATABASE_URL" and value.startswith("postgres"):
                assert ":${POSTGRES_PASSWORD:?" in value, name


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_sentinel_profile_is_off_by_default_and_switched_on_by_env_example(baked, context):
    project = baked(**context)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    services = compose["services"]
    profiled = {name for name, spec in services.items() if "profiles" in spec}
    assert profiled == {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
    assert all(services[name]["profiles"] == ["sentinel"] for name in profiled)
    # Without the profile, the application talks to the one Redis as before.
    assert (
        compose["x-app"]["environment"]["REDIS_URL"] == "${COMPOSE_REDIS_URL:-redis://redis:6379/0}"
    )
    # With it, .env.example's URL names the profile's Sentinels and the master they monitor.
    switch = sentinel_switch(project)
    assert switch["COMPOSE_PROFILES"] == "sentinel"
    url = switch["COMPOSE_REDIS_URL"]
    hosts, service, db = url.removeprefix("redis+sentinel://").split("/")
    assert {host.removesuffix(":26379") for host in hosts.split(",")} == profiled - {
        "redis-replica"
    }
    assert db == "0"
    for name in profiled - {"redis-replica"}:
        script = services[name]["command"][-1]
        # The master another Sentinel names, else redis.
        assert "master=redis\n" in script
        assert f"sentinel get-master-addr-by-name {service} " in script
        assert f"sentinel monitor {service} $$master 6379 2\n" in script
        assert services[name]["environment"] == {"SENTINEL_NAME": name}
    assert services["redis-replica"]["command"][-4:] == [
        "redis",
        "6379",
        "--replica-announce-ip",
        "redis-replica",
    ]


def sentinel_switch(project: Path) -> dict[str, str]:
    """The settings .env.example gives, commented out, to turn the "sentinel" profile on."""
    example = (project / ".env.example").read_text()
    lines = [
        line.removeprefix("# ")
        for line in example.splitlines()
        if line.startswith(("# COMPOSE_PROFILES=", "# COMPOSE_REDIS_URL="))
    ]
    return dict(line.split("=", 1) for line in lines)


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_dockerfile_passes_hadolint(baked, context):
    run([tool("hadolint"), str(baked(**context) / "Dockerfile")])


# --- the real stack ------------------------------------------------------


@pytest.fixture(scope="module")
def podman():
    require_binary("podman")
    require_binary("debootstrap", "/usr/sbin", "/sbin")
    if not can_run_as_root():
        message = "the container tests run podman as root: run them as root or with sudo"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    # One test session at a time: the clean-up undoes the firewall rules that appeared meanwhile.
    with file_lock(CACHE_DIR / "podman-tests.lock"):
        sandbox = Podman(tool("podman-compose"))
        try:
            started = time.monotonic()
            sandbox.build_base_images()
            print(f"base images: {time.monotonic() - started:.1f} s")
            yield sandbox
        finally:
            sandbox.close()


@pytest.fixture
def stack_factory(podman, tmp_path):
    def make(project: Path, dotenv: dict[str, str] | None = None) -> Stack:
        """``dotenv``: settings to write into the project's .env, as its user would."""
        # A copy: the bake is shared with other tests, and the stack writes beside it.
        project_dir = tmp_path / project.name
        shutil.copytree(project, project_dir)
        set_dotenv(project_dir / ".env", dotenv or {})
        # As the docs say, before the first `docker compose up`.
        subprocess.run(
            [require_binary("make"), "cert"], cwd=project_dir, check=True, capture_output=True
        )
        name = f"cds{secrets.token_hex(4)}"
        image = f"localhost/{project.name}:{name}"
        started = time.monotonic()
        podman.build_app_image(project_dir, image)
        print(f"app image: {time.monotonic() - started:.1f} s")
        return Stack(
            podman,
            project_dir,
            name=name,
            env={
                "APP_IMAGE": image,
                "REDIS_IMAGE": REDIS_IMAGE,
                "NGINX_IMAGE": NGINX_IMAGE,
                "POSTGRES_IMAGE": POSTGRES_IMAGE,
                "HTTP_BIND": "127.0.0.1",
                "HTTP_PORT": str(free_port()),
                "HTTPS_PORT": str(free_port()),
                "ASGI_REPLICAS": "2",
            },
        )

    yield make
    podman.remove_all()


def set_dotenv(path: Path, settings: dict[str, str]) -> None:
    """Give each setting its value in this .env: on its own line if it has one, else at the end."""
    lines = path.read_text().splitlines()
    for name, value in settings.items():
        line = f"{name}={value}"
        at = [i for i, old in enumerate(lines) if old.startswith(f"{name}=")]
        if at:
            lines[at[0]] = line
        else:
            lines.append(line)
    path.write_text("\n".join(lines) + "\n")


def create_token(stack: Stack, container: str) -> str:
    stack.exec(
        container,
        "python",
        "manage.py",
        "createsuperuser",
        "--noinput",
        "--username=publisher",
        "--email=publisher@example.com",
        env={"DJANGO_SUPERUSER_PASSWORD": secrets.token_urlsafe(16)},
    )
    output = stack.exec(container, "python", "manage.py", "drf_create_token", "publisher")
    # "Generated token <key> for user publisher"
    return output.split()[2]


def open_streams(stack: Stack, container: str, token: str) -> int:
    """How many event streams the Daphne process in this container is serving. Asked directly,
    as nginx asks it: the request says it came over https, or Django would redirect it there."""
    script = (
        "import json, urllib.request;"
        "request = urllib.request.Request('http://127.0.0.1:8000/api/events/metrics/',"
        f" headers={{'Authorization': 'Token {token}', 'Accept': 'application/json',"
        " 'X-Forwarded-Proto': 'https'});"
        "print(json.load(urllib.request.urlopen(request, timeout=5))['streams'])"
    )
    return int(stack.exec(container, "python", "-c", script))


@pytest.mark.slow
# The first run also builds the Debian base image: allow for it.
@pytest.mark.timeout(600)
@pytest.mark.parametrize(
    ("database", "http_topology"),
    # Each database and each topology once.
    [("sqlite", "daphne"), ("postgresql", "daphne+gunicorn")],
)
def test_event_published_through_nginx_reaches_streams_on_every_replica(
    baked, stack_factory, database, http_topology
):
    started = time.monotonic()
    stack = stack_factory(baked(database=database, http_topology=http_topology))
    plain_url = f"http://127.0.0.1:{stack.env['HTTP_PORT']}"
    base_url = f"https://localhost:{stack.env['HTTPS_PORT']}"
    trusted = ssl.create_default_context(cafile=stack.project_dir / "nginx/certs/fullchain.pem")
    try:
        # Two replicas from ASGI_REPLICAS (compose.yaml's deploy.replicas), no --scale.
        stack.up(scale={})
        wait_until(
            lambda: httpx.get(f"{plain_url}/healthz", timeout=5).status_code == 200,
            timeout=60,
            message="nginx to answer /healthz over plain http",
        )
        print(f"stack up: {time.monotonic() - started:.1f} s since the test started")
        redirected = httpx.get(f"{plain_url}/admin/", timeout=5)
        assert redirected.status_code == 301
        assert (
            redirected.headers["location"] == f"https://127.0.0.1:{stack.env['HTTPS_PORT']}/admin/"
        )
        assert httpx.get(f"{base_url}/metrics", verify=trusted, timeout=5).status_code == 404

        ready = httpx.get(f"{base_url}/readyz", verify=trusted, timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {
            "status": "ok",
            "checks": {"database": "ok", "broker": "ok", "feed": "ok", "accepting": "ok"},
        }

        css = httpx.get(f"{base_url}/static/admin/css/base.css", verify=trusted, timeout=5)
        assert css.status_code == 200
        assert css.headers["content-type"] == "text/css"

        replicas = stack.containers("asgi")
        assert len(replicas) == 2
        token = create_token(stack, replicas[0])
        headers = {"Authorization": f"Token {token}"}

        with ExitStack() as streams:
            # nginx sends each new stream to the replica with the fewest open ones.
            events = [
                streams.enter_context(open_stream(base_url, headers, verify=trusted))
                for _ in replicas
            ]
            wait_until(
                lambda: [open_streams(stack, name, token) for name in replicas] == [1, 1],
                timeout=15,
                message="one stream on each Daphne replica",
            )

            data = {"text": "through nginx", "n": 42}
            published = httpx.post(
                f"{base_url}/api/events/",
                json={"type": "message", "data": data},
                headers=headers,
                verify=trusted,
                timeout=10,
            )
            assert published.status_code == 201, published.text
            event_id = published.json()["id"]

            for stream in events:
                event = next(stream)
                assert (event.id, event.type, json.loads(event.data)) == (event_id, "message", data)

            # Daphne gets SIGTERM (through compose's init) and exits well before podman would
            # resort to SIGKILL, even with a stream open.
            stopping = time.monotonic()
            stack.podman("stop", "--time", "20", replicas[1], timeout=60)
            assert time.monotonic() - stopping < 15
            assert stack.exit_code(replicas[1]) != 137
    except BaseException:
        print(stack.logs())
        raise
    print(f"whole test: {time.monotonic() - started:.1f} s")


def sentinel(stack: Stack, container: str, *command: str) -> list[str]:
    """A Sentinel's answer to ``SENTINEL <command>``, one item a line."""
    output = stack.exec(container, "redis-cli", "-p", "26379", "sentinel", *command)
    return output.splitlines()


def pairs(items: list[str]) -> dict[str, str]:
    """redis-cli's lines of field, value, field, value... as a dict."""
    return dict(zip(items[0::2], items[1::2], strict=True))


def ready_for_failover(stack: Stack, container: str, service: str) -> bool:
    """This Sentinel knows the other two and a replica that is in sync with the master."""
    master = pairs(sentinel(stack, container, "master", service))
    replica = pairs(sentinel(stack, container, "replicas", service))
    return (
        master.get("num-other-sentinels") == "2"
        and replica.get("name") == "redis-replica:6379"
        and replica.get("master-link-status") == "ok"
    )


def publish(base_url: str, headers: dict[str, str], trusted, data: dict, *, retry_for: float = 0):
    """POST an event through nginx; retry its 503s (Redis unreachable) with the same
    Idempotency-Key for ``retry_for`` seconds. Returns the response: 201, or 200 for a retry
    whose first attempt had published it after all."""
    key = secrets.token_hex(16)
    deadline = time.monotonic() + retry_for
    while True:
        response = httpx.post(
            f"{base_url}/api/events/",
            json={"type": "message", "data": data},
            headers={**headers, "Idempotency-Key": key},
            verify=trusted,
            timeout=10,
        )
        if response.status_code != 503 or time.monotonic() > deadline:
            assert response.status_code in (200, 201), response.text
            return response
        time.sleep(0.2)


@pytest.mark.slow
# The first run also builds the Debian base image: allow for it.
@pytest.mark.timeout(600)
def test_events_flow_again_once_sentinel_promotes_the_replica(baked, stack_factory):
    started = time.monotonic()
    project = baked(database="sqlite", http_topology="daphne")
    switch = sentinel_switch(project)
    service = switch["COMPOSE_REDIS_URL"].split("/")[-2]
    stack = stack_factory(
        project,
        # The profile, as docs/deployment.md says: .env.example's two lines. A stream read fails
        # after 10 s of silence (open_stream), and the failover takes about that long.
        dotenv={**switch, "EVENTS_HEARTBEAT_SECONDS": "2"},
    )
    base_url = f"https://localhost:{stack.env['HTTPS_PORT']}"
    trusted = ssl.create_default_context(cafile=stack.project_dir / "nginx/certs/fullchain.pem")
    try:
        stack.up(scale={})
        assert set(stack.services()) >= {"redis-replica", "sentinel-1", "sentinel-2", "sentinel-3"}
        wait_until(
            lambda: httpx.get(f"{base_url}/readyz", verify=trusted, timeout=5).status_code == 200,
            timeout=60,
            message="/readyz through nginx (the broker found through the Sentinels)",
        )
        sentinels = [stack.containers(f"sentinel-{number}")[0] for number in (1, 2, 3)]
        for container in sentinels:
            # Sentinels find each other through the master every 2 s, and the replica every 10 s.
            wait_until(
                lambda c=container: ready_for_failover(stack, c, service),
                timeout=60,
                message=f"{container} to know the other Sentinels and the replica",
            )
        print(f"stack up: {time.monotonic() - started:.1f} s since the test started")

        replicas = stack.containers("asgi")
        token = create_token(stack, replicas[0])
        headers = {"Authorization": f"Token {token}"}
        (master,) = stack.containers("redis")
        (replica,) = stack.containers("redis-replica")

        with ExitStack() as streams:
            # One stream on each Daphne: both processes' feeds must find the new master.
            events = [
                streams.enter_context(open_stream(base_url, headers, verify=trusted))
                for _ in replicas
            ]
            wait_until(
                lambda: (
                    [open_streams(stack, name, token) for name in replicas] == [1] * len(replicas)
                ),
                timeout=15,
                message="one stream on each Daphne replica",
            )
            before = publish(base_url, headers, trusted, {"n": 1}).json()["id"]
            for stream in events:
                assert next(stream).id == before
            # The replica holds it before the master goes: losing an event the replica never
            # received is another matter (docs/deployment.md, EVENTS_PUBLISH_REPLICAS).
            wait_until(
                lambda: stack.exec(
                    replica, "redis-cli", "XRANGE", "events:history", before, before
                ),
                timeout=10,
                message="the replica to hold the first event",
            )

            killed = time.monotonic()
            stack.podman("kill", master)
            wait_until(
                lambda: (
                    sentinel(stack, sentinels[0], "get-master-addr-by-name", service)
                    == ["redis-replica", "6379"]
                ),
                timeout=60,
                interval=0.2,
                message="a Sentinel to name redis-replica the master",
            )
            promoted = time.monotonic() - killed
            assert stack.exit_code(master) is not None, "podman restarted the killed master"

            data = {"n": 2, "after": "failover"}
            published = publish(base_url, headers, trusted, data, retry_for=30)
            answered = time.monotonic() - killed
            for stream in events:
                event = next(stream)
                assert (event.id, event.type, json.loads(event.data)) == (
                    published.json()["id"],
                    "message",
                    data,
                )
            delivered = time.monotonic() - killed
            print(
                f"master killed: a Sentinel named the replica after {promoted:.1f} s; the first"
                f" publish answered {published.status_code} after {answered:.1f} s; its event"
                f" reached both streams after {delivered:.1f} s"
            )
            ready = httpx.get(f"{base_url}/readyz", verify=trusted, timeout=5)
            assert ready.status_code == 200, ready.text

        # A Sentinel restarted while the old master is down watches the new one.
        stack.podman("restart", "--time", "2", sentinels[2], timeout=60)
        wait_until(
            lambda: (
                sentinel(stack, sentinels[2], "get-master-addr-by-name", service)
                == ["redis-replica", "6379"]
            ),
            timeout=30,
            message="the restarted Sentinel to name redis-replica the master",
        )

        # The old master comes back as a replica of the new one, by its name (the Sentinels
        # reconfigure it: docs/deployment.md), and copies what was published meanwhile.
        stack.podman("start", master)
        restarted = time.monotonic()

        def rejoined() -> bool:
            replica = pairs(sentinel(stack, sentinels[0], "replicas", service))
            return replica.get("name") == "redis:6379" and replica.get("master-link-status") == "ok"

        wait_until(rejoined, timeout=60, message="the old master to be a replica of the new one")
        after = published.json()["id"]
        wait_until(
            lambda: stack.exec(master, "redis-cli", "XRANGE", "events:history", after, after),
            timeout=10,
            message="the old master to hold the event published after the failover",
        )
        print(f"old master restarted: a replica in sync after {time.monotonic() - restarted:.1f} s")
    except BaseException:
        print(stack.logs())
        raise
    print(f"whole test: {time.monotonic() - started:.1f} s")
