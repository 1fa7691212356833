"""The benchmark a generated project ships runs to completion on a real Daphne and Redis.

It asserts that every event reached every stream, never how fast: its figures are measured on
purpose and written in the project's docs/benchmark.md.
"""

import shutil
from pathlib import Path

import pytest

from .helpers import project_env, project_python, require_binary, run

pytestmark = pytest.mark.slow


@pytest.mark.timeout(600)
def test_quick_benchmark_delivers_every_event_and_reports_its_table(baked, tmp_path: Path) -> None:
    require_binary("redis-server")
    project = shutil.copytree(baked(), tmp_path / "live_events", symlinks=True)
    python = project_python(project)
    result = run(
        [str(python), "benchmarks/streams.py", "--quick"],
        cwd=project,
        env=project_env(python),
        timeout=500,
    )
    assert result.stdout.startswith("Event streams on one Daphne process:")
    assert "server RSS per stream (KB)" in result.stdout
