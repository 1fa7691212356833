"""gunicorn's workers are separate processes behind one port: /metrics, answered by any one of
them, counts what all of them did (prometheus-client's multiprocess mode, gunicorn.conf.py)."""

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from .services import LiveProject, RedisServer, gunicorn_server
from .test_observability import scrape_url, series

WORKERS = 3
PUBLISHES = 12


@pytest.fixture
def gunicorn_url(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> Iterator[str]:
    with gunicorn_server(
        live_project,
        tmp_path,
        WEB_CONCURRENCY=str(WORKERS),
        REDIS_URL=redis_service.url,
        EVENTS_REDIS_PREFIX="test-gunicorn-metrics",
    ) as url:
        yield url


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
