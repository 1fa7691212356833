"""The generated container setup: static checks, and the real stack under podman.

The slow test builds the generated Dockerfile, starts compose.yaml with two
Daphne replicas behind nginx, and proves that an event published through
nginx reaches streams held by both replicas. It needs rootful podman,
podman-compose and debootstrap (no image registry: every image is built
from Debian packages, see tests/containers/).
"""

from __future__ import annotations

import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from .containers.podman import NGINX_IMAGE, REDIS_IMAGE, Podman, Stack, wait_until
from .containers.sse import StreamReader
from .helpers import free_port, in_ci, require_binary

VENV_BIN = Path(sys.executable).parent


def tool(name: str) -> str:
    """A command-line tool installed next to the running Python (or on PATH)."""
    candidate = VENV_BIN / name
    return str(candidate) if candidate.exists() else require_binary(name)


VARIANTS = [
    {"database": database, "http_topology": topology, "ci": "github"}
    for database in ("sqlite", "postgresql")
    for topology in ("daphne", "daphne+gunicorn")
]


def variant_id(context: dict) -> str:
    return f"{context['database']}-{context['http_topology']}"


# --- static checks -------------------------------------------------------


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_compose_file_follows_the_compose_spec(baked, context):
    project = baked(**context)
    subprocess.run(
        [
            tool("check-jsonschema"),
            "--builtin-schema",
            "vendor.compose-spec",
            project / "compose.yaml",
        ],
        check=True,
    )


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_dockerfile_passes_hadolint(baked, context):
    project = baked(**context)
    subprocess.run([tool("hadolint"), project / "Dockerfile"], check=True)


@pytest.mark.parametrize("context", VARIANTS, ids=variant_id)
def test_github_files_follow_their_schemas(baked, context):
    github = baked(**context) / ".github"
    workflows = sorted((github / "workflows").glob("*.yml"))
    assert workflows
    check = tool("check-jsonschema")
    subprocess.run([check, "--builtin-schema", "vendor.github-workflows", *workflows], check=True)
    subprocess.run(
        [check, "--builtin-schema", "vendor.dependabot", github / "dependabot.yml"], check=True
    )


# --- the real stack ------------------------------------------------------


@pytest.fixture(scope="module")
def podman():
    require_binary("podman")
    require_binary("debootstrap", "/usr/sbin", "/sbin")
    if os.geteuid() != 0:
        message = "the container test needs rootful podman (run as root)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
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
    stacks: list[Stack] = []

    def make(project: Path) -> Stack:
        # A copy: the test writes .env and the bake is shared.
        project_dir = tmp_path / project.name
        shutil.copytree(project, project_dir)
        image = f"localhost/{project.name}:test-{len(stacks)}"
        started = time.monotonic()
        podman.build_app_image(project_dir, image)
        print(f"app image: {time.monotonic() - started:.1f} s")
        stack = Stack(
            podman,
            project_dir,
            name=f"cds{secrets.token_hex(4)}",
            env={
                "APP_IMAGE": image,
                "REDIS_IMAGE": REDIS_IMAGE,
                "NGINX_IMAGE": NGINX_IMAGE,
                "HTTP_BIND": "127.0.0.1",
                "HTTP_PORT": str(free_port()),
            },
        )
        stacks.append(stack)
        return stack

    yield make
    podman.remove_all()


def wait_for_stack(stack: Stack, base_url: str, services: list[str]) -> None:
    """What `docker compose up --wait` does (podman-compose ignores service_healthy)."""

    def migrated():
        codes = [stack.exit_code(name) for name in stack.containers("migrate")]
        assert codes, "no migrate container"
        assert all(code in (None, 0) for code in codes), f"migrate exited with {codes}"
        return all(code == 0 for code in codes)

    wait_until(migrated, timeout=90, message="the migrations")
    for service in services:
        for container in stack.containers(service):
            wait_until(
                lambda c=container: stack.healthy(c),
                timeout=90,
                message=f"{container} to be healthy",
            )
    wait_until(
        lambda: httpx.get(f"{base_url}/healthz", timeout=5).status_code == 200,
        timeout=60,
        message="nginx to answer /healthz",
    )


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
    """How many event streams the Daphne process in this container is serving."""
    script = (
        "import json, urllib.request;"
        "request = urllib.request.Request('http://127.0.0.1:8000/api/events/metrics/',"
        f" headers={{'Authorization': 'Token {token}', 'Accept': 'application/json'}});"
        "print(json.load(urllib.request.urlopen(request, timeout=5))['streams'])"
    )
    return int(stack.exec(container, "python", "-c", script))


@pytest.mark.slow
# The first run also builds the Debian base image: allow for it.
@pytest.mark.timeout(600)
@pytest.mark.parametrize("http_topology", ["daphne", "daphne+gunicorn"])
def test_event_published_through_nginx_reaches_streams_on_every_replica(
    baked, stack_factory, http_topology
):
    started = time.monotonic()
    stack = stack_factory(baked(http_topology=http_topology))
    base_url = f"http://127.0.0.1:{stack.env['HTTP_PORT']}"
    app_services = ["asgi", "wsgi"] if http_topology == "daphne+gunicorn" else ["asgi"]
    readers: list[StreamReader] = []
    try:
        stack.up("--scale", "asgi=2")
        wait_for_stack(stack, base_url, ["redis", *app_services])
        print(f"stack up: {time.monotonic() - started:.1f} s since the test started")

        ready = httpx.get(f"{base_url}/readyz", timeout=5)
        assert ready.status_code == 200, ready.text
        assert ready.json() == {"status": "ok", "checks": {"database": "ok", "broker": "ok"}}

        css = httpx.get(f"{base_url}/static/admin/css/base.css", timeout=5)
        assert css.status_code == 200
        assert css.headers["content-type"] == "text/css"

        replicas = stack.containers("asgi")
        assert len(replicas) == 2
        token = create_token(stack, replicas[0])
        headers = {"Authorization": f"Token {token}", "Accept": "text/event-stream"}

        # nginx sends each new stream to the replica with the fewest open ones.
        for _ in replicas:
            reader = StreamReader(f"{base_url}/api/events/stream/", headers)
            readers.append(reader)
            assert reader.connected.wait(15), "the stream did not open"
            assert reader.status == 200, reader.error
            assert reader.content_type.startswith("text/event-stream")
        wait_until(
            lambda: [open_streams(stack, name, token) for name in replicas] == [1, 1],
            timeout=15,
            message="one stream on each Daphne replica",
        )

        data = {"text": "through nginx", "n": 42}
        published = httpx.post(
            f"{base_url}/api/events/",
            json={"type": "message", "data": data},
            headers={"Authorization": f"Token {token}"},
            timeout=10,
        )
        assert published.status_code == 201, published.text
        event_id = published.json()["id"]

        for reader in readers:
            event = reader.next_event(timeout=15)
            assert (event.id, event.event, json.loads(event.data)) == (event_id, "message", data)

        # Daphne gets SIGTERM (through compose's init) and exits well before
        # podman would resort to SIGKILL.
        stopping = time.monotonic()
        stack.podman("stop", "--time", "20", replicas[1], timeout=60)
        assert time.monotonic() - stopping < 15
        assert stack.exit_code(replicas[1]) != 137
    except BaseException:
        print(stack.logs())
        raise
    finally:
        for reader in readers:
            reader.close()
    print(f"whole test: {time.monotonic() - started:.1f} s")
