"""Fixtures of the template's tests: baked projects (each option set once), services."""

import glob
import os
import shutil
import subprocess
import tempfile
from collections.abc import Callable, Iterator
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from .helpers import (
    all_option_sets,
    bake,
    default_options,
    free_port,
    option_set_id,
    require_binary,
    run,
    stop,
    wait_for_port,
    write_cookiecutter_config,
)

Bake = Callable[..., Path]


@pytest.fixture(scope="session")
def cookiecutter_config(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_cookiecutter_config(tmp_path_factory.mktemp("cookiecutter"))


@pytest.fixture(scope="session")
def _bakes() -> dict[tuple, Path]:
    """Projects baked so far in this session, by their complete answers."""
    return {}


def _key(answers: dict[str, Any]) -> tuple:
    return tuple(sorted(answers.items()))


@pytest.fixture(scope="session")
def baked(
    tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path, _bakes: dict[tuple, Path]
) -> Bake:
    """`baked(**answers)`: the project generated with these answers (defaults for the rest).

    Each set of answers is generated once per session and the same directory is handed out again,
    so tests must not modify it (copy it first).
    """

    def _bake(**extra_context: Any) -> Path:
        answers = {**default_options(), **extra_context}
        key = _key(answers)
        if key not in _bakes:
            output_dir = tmp_path_factory.mktemp("bake")
            _bakes[key] = bake(output_dir, answers, cookiecutter_config)
        return _bakes[key]

    return _bake


@pytest.fixture(scope="session")
def all_bakes(
    tmp_path_factory: pytest.TempPathFactory, cookiecutter_config: Path, _bakes: dict[tuple, Path]
) -> dict[str, tuple[dict[str, Any], Path]]:
    """Every combination of the multiple-choice options, baked once (in parallel), by id."""
    option_sets = [answers for answers in all_option_sets() if _key(answers) not in _bakes]
    root = tmp_path_factory.mktemp("all-bakes")
    output_dirs = [root / option_set_id(answers) for answers in option_sets]
    configs = [cookiecutter_config] * len(option_sets)
    with ProcessPoolExecutor(max_workers=os.cpu_count()) as pool:
        for answers, project in zip(
            option_sets, pool.map(bake, output_dirs, option_sets, configs), strict=True
        ):
            _bakes[_key(answers)] = project
    return {
        option_set_id(answers): (answers, _bakes[_key(answers)]) for answers in all_option_sets()
    }


@pytest.fixture(scope="session")
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A throwaway redis-server on a free loopback port; yields its URL."""
    redis = require_binary("redis-server")
    port = free_port()
    directory = tmp_path_factory.mktemp("redis")
    process = subprocess.Popen(
        [redis, "--port", str(port), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"],
        cwd=directory,
        stdout=subprocess.DEVNULL,
        start_new_session=True,
    )
    try:
        wait_for_port(port, process=process)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        stop(process)


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[str]:
    """A throwaway PostgreSQL server (Debian's package) on a free loopback port.

    Yields a DATABASE_URL without the database name; its superuser `postgres` needs no password.
    """
    bin_dirs = sorted(glob.glob("/usr/lib/postgresql/*/bin"), reverse=True)
    # The server's programs lie together in its bin directory (PATH may hold only links to some).
    server_bin = Path(require_binary("initdb", *bin_dirs)).resolve().parent
    initdb, postgres, pg_isready = (
        str(server_bin / name) for name in ("initdb", "postgres", "pg_isready")
    )
    # Not under pytest's temporary directory: that is private to this user, and PostgreSQL
    # refuses to run as root, so it runs as the `postgres` account when the tests run as root.
    directory = Path(tempfile.mkdtemp(prefix="template-tests-postgres-"))
    as_postgres: list[str] = []
    if os.geteuid() == 0:
        as_postgres = [require_binary("runuser", "/usr/sbin", "/sbin"), "-u", "postgres", "--"]
        shutil.chown(directory, "postgres")
    data = directory / "data"
    port = free_port()
    try:
        run([*as_postgres, initdb, "-D", str(data), "-U", "postgres", "-A", "trust", "--no-sync"])
        process = subprocess.Popen(
            [
                *as_postgres,
                postgres,
                "-D",
                str(data),
                "-p",
                str(port),
                "-k",
                str(directory),
                "-c",
                "listen_addresses=127.0.0.1",
                # A test database: speed over durability.
                "-c",
                "fsync=off",
                "-c",
                "full_page_writes=off",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            start_new_session=True,
        )
        try:
            wait_for_port(port, process=process)
            run([pg_isready, "--host=127.0.0.1", f"--port={port}", "--timeout=20"], timeout=30)
            yield f"postgres://postgres@127.0.0.1:{port}"
        finally:
            stop(process)
    finally:
        shutil.rmtree(directory, ignore_errors=True)
