"""On PostgreSQL, a generated project's server processes share a few pooled connections instead of
opening one per request: each would be a new PostgreSQL server process, with its authentication,
for every API call and every stream accepted (thousands of them when clients reconnect at once).

Measured on a real PostgreSQL behind the loopback stack (nginx, Daphne, gunicorn), with the pool
and without it: PostgreSQL counts the sessions opened on each database (pg_stat_database).
"""

import time
from pathlib import Path

import httpx
import pytest

from .helpers import project_python, run
from .topology.stack import loopback_stack

pytestmark = pytest.mark.slow

# API calls (to gunicorn) and streams (to Daphne), one after the other.
REQUESTS = 20
GUNICORN_WORKERS = 2
POOL_MAX_SIZE = 4
# The processes that may each keep a pool: one Daphne and the gunicorn workers.
POOLED_PROCESSES = 1 + GUNICORN_WORKERS

_CREATE_DATABASE = """
import sys, psycopg
with psycopg.connect(sys.argv[1], autocommit=True) as connection:
    connection.execute(f'CREATE DATABASE "{sys.argv[2]}"')
"""
_SESSIONS = """
import sys, psycopg
with psycopg.connect(sys.argv[1]) as connection:
    row = connection.execute(
        "SELECT sessions FROM pg_stat_database WHERE datname = %s", [sys.argv[2]]
    ).fetchone()
print(row[0] if row else 0)
"""


def sessions_opened(python: Path, server: str, database: str) -> int:
    """Sessions PostgreSQL has opened on ``database`` so far (asked from another database)."""
    output = run([str(python), "-c", _SESSIONS, f"{server}/postgres", database]).stdout
    return int(output.strip())


def settled_sessions(python: Path, server: str, database: str) -> int:
    """The count once it stops changing: a session reports itself when it ends or goes idle,
    up to a second later."""
    count = sessions_opened(python, server, database)
    for _ in range(10):
        time.sleep(1)
        latest = sessions_opened(python, server, database)
        if latest == count:
            return count
        count = latest
    return count


def requests_and_streams(url: str, headers: dict[str, str]) -> None:
    """REQUESTS staff API calls and REQUESTS streams, each authenticated by a token (a query)."""
    with httpx.Client(base_url=url, headers=headers, timeout=10) as client:
        for _ in range(REQUESTS):
            assert client.get("/api/events/metrics/").status_code == 200
            stream_headers = {"Accept": "text/event-stream"}
            with client.stream("GET", "/api/events/stream/", headers=stream_headers) as stream:
                assert stream.status_code == 200
                next(stream.iter_lines())  # accepted and streaming


@pytest.mark.timeout(600)
def test_server_processes_share_a_few_postgresql_connections(
    baked, postgres_server: str, redis_server: str, tmp_path: Path
) -> None:
    project = baked(database="postgresql", http_topology="daphne+gunicorn")
    python = project_python(project)
    opened = {}
    for pool_size in (POOL_MAX_SIZE, 0):
        database = f"pool_{pool_size}"
        run([str(python), "-c", _CREATE_DATABASE, f"{postgres_server}/postgres", database])
        settings = {
            "DATABASE_URL": f"{postgres_server}/{database}",
            "DATABASE_POOL_MAX_SIZE": str(pool_size),
            "WEB_CONCURRENCY": str(GUNICORN_WORKERS),
        }
        directory = tmp_path / database
        directory.mkdir()
        with loopback_stack(
            project, python, "daphne+gunicorn", redis_server, directory, settings, daphnes=1
        ) as stack:
            before = settled_sessions(python, postgres_server, database)
            requests_and_streams(stack.url, stack.auth)
            opened[pool_size] = settled_sessions(python, postgres_server, database) - before
    print(f"PostgreSQL sessions opened by {REQUESTS} API calls and {REQUESTS} streams: {opened}")
    # Without a pool: one per request and per stream (the last may not have reported yet).
    assert opened[0] >= 2 * REQUESTS - 1, opened
    # With it: at most each process's pool, whatever the number of requests.
    assert opened[POOL_MAX_SIZE] <= POOLED_PROCESSES * POOL_MAX_SIZE, opened
