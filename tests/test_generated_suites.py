"""Generated projects pass their own test suites, and the quick-start demo serves a project.

The suites run with CI=true: a test whose program or service is missing fails instead of skipping.
"""

import os
import re
import shutil
import subprocess
from pathlib import Path

import httpx
import pytest

from .helpers import (
    TEMPLATE_DIR,
    free_port,
    project_env,
    project_python,
    run,
    stop,
    wait_for_port,
)

pytestmark = pytest.mark.slow


def run_own_tests(project: Path, *pytest_args: str, **variables: str) -> str:
    python = project_python(project)
    result = run(
        [str(python), "-m", "pytest", "-p", "no:cacheprovider", *pytest_args],
        cwd=project,
        env=project_env(python, CI="true", **variables),
        timeout=1800,
    )
    summary = result.stdout.strip().splitlines()[-1]
    assert re.search(r"\d+ passed", summary), summary
    assert "skipped" not in summary, summary
    return summary


@pytest.mark.timeout(2100)
def test_default_project_passes_its_own_tests(baked, tmp_path: Path) -> None:
    project = shutil.copytree(baked(), tmp_path / "live_events", symlinks=True)
    run_own_tests(project)


@pytest.mark.timeout(2100)
def test_postgresql_gunicorn_project_without_demo_passes_its_own_tests(
    baked, postgres_server: str, tmp_path: Path
) -> None:
    answers = {
        "database": "postgresql",
        "http_topology": "daphne+gunicorn",
        "include_demo": False,
        "ci": "none",
        "python_version": "3.13",
    }
    project = shutil.copytree(baked(**answers), tmp_path / "live_events", symlinks=True)
    # In-process tests use PostgreSQL; servers the suite starts keep their own SQLite files. The
    # long fault and load proofs exercise the same engine code in every bake: the default
    # project's run above covers them once, and the Sentinel failover proofs, where timing
    # matters most, run here a second time.
    run_own_tests(
        project, "-m", "not proof or failover", DATABASE_URL=f"{postgres_server}/live_events"
    )


@pytest.mark.timeout(900)
def test_demo_script_serves_a_project_to_sign_in_to(tmp_path: Path) -> None:
    port = free_port()
    log = tmp_path / "demo.log"
    env = {**os.environ, "PORT": str(port), "DEMO_DIR": str(tmp_path / "demo")}
    with log.open("w") as output:
        demo = subprocess.Popen(
            ["bash", str(TEMPLATE_DIR / "scripts" / "demo")],
            env=env,
            stdout=output,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
    try:
        wait_for_port(port, timeout=600, process=demo)
        printed = log.read_text()
        assert f"http://127.0.0.1:{port}/" in printed
        assert "demo / demo" in printed
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=10) as browser:
            assert browser.get("/healthz").json() == {"status": "ok"}
            browser.get("/accounts/login/")
            signed_in = browser.post(
                "/accounts/login/",
                data={
                    "username": "demo",
                    "password": "demo",
                    "csrfmiddlewaretoken": browser.cookies["csrftoken"],
                },
            )
            assert signed_in.status_code == 302, signed_in.text
            page = browser.get("/")
            assert page.status_code == 200
    finally:
        stop(demo)
