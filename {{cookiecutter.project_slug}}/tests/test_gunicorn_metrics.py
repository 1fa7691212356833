"""gunicorn's workers are separate processes behind one port: /metrics, answered by any one of
them, counts what all of them did (prometheus-client's multiprocess mode, gunicorn.conf.py)."""

import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .services import (
    PROJECT_DIR,
    SERVER_LIFETIME_SECONDS,
    LiveProject,
    RedisServer,
    free_port,
    stop,
    wait_for_port,
)
from .test_observability import scrape_url, series

WORKERS = 3
PUBLISHES = 12


@pytest.fixture
def gunicorn_url(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> Iterator[str]:
    port = free_port()
    env = {
        **live_project.env,
        "REDIS_URL": redis_service.url,
        "EVENTS_REDIS_PREFIX": "test-gunicorn-metrics",
        "WEB_CONCURRENCY": str(WORKERS),
    }
    env.pop("PROMETHEUS_MULTIPROC_DIR", None)  # gunicorn.conf.py makes a fresh one
    with (tmp_path / "gunicorn.log").open("wb") as log:
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


def test_any_worker_reports_the_publishes_of_all_workers(
    gunicorn_url: str, live_project: LiveProject
) -> None:
    token = live_project.tokens["staff"]
    # A new connection per request: gunicorn's sync workers then take turns.
    for n in range(PUBLISHES):
        response = httpx.post(
            f"{gunicorn_url}/api/events/",
            json={"type": "counted", "data": n},
            headers={"Authorization": f"Token {token}", "Connection": "close"},
        )
        assert response.status_code == 201, response.text
    ok = series("events_published_total", outcome="ok")
    answers = {scrape_url(f"{gunicorn_url}/metrics")[ok] for _ in range(2 * WORKERS)}
    assert answers == {PUBLISHES}
