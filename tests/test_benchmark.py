"""The benchmark a generated project ships runs to completion on a real Daphne and Redis.

It checks that every system under test (the project and both baselines) delivered every event to
every stream, never how fast: the figures are measured on purpose and written in the project's
docs/benchmark.md.
"""

import json
import shutil
from pathlib import Path

import pytest

from .helpers import project_env, project_python, require_binary, run

pytestmark = pytest.mark.slow


@pytest.mark.timeout(300)
def test_quick_benchmark_delivers_every_event_on_every_system(baked, tmp_path: Path) -> None:
    require_binary("redis-server")
    project = shutil.copytree(baked(), tmp_path / "live_events", symlinks=True)
    python = project_python(project)
    results = tmp_path / "results.json"
    # Exits non-zero if any delivery was missing, duplicated or out of order.
    result = run(
        [str(python), "benchmarks/streams.py", "--quick", "--json", str(results)],
        cwd=project,
        env=project_env(python),
        timeout=240,
    )
    assert result.stdout.startswith("Event streams on one Daphne process:")
    assert "server RSS per open stream (KB)" in result.stdout
    [measurements] = json.loads(results.read_text())["results"].values()
    assert [m["system"] for m in measurements] == ["project", "article", "bare"]
    for measurement in measurements:
        assert measurement["skipped"] is None, measurement["skipped"]
        assert measurement["accepted"] == measurement["streams"] == 100
        assert measurement["delivered_everything"], measurement["problems"]
        for phase in (measurement["paced"], measurement["burst"]):
            assert phase["delivered"] == phase["expected"] == 100 * 50


@pytest.mark.timeout(300)
def test_quick_benchmark_on_a_redis_cluster_delivers_and_spreads_publishing(
    baked, tmp_path: Path
) -> None:
    """With --redis-cluster, the project alone, on a cluster the benchmark starts and stops; its
    publishing phase reaches every master."""
    require_binary("redis-server")
    project = shutil.copytree(baked(), tmp_path / "live_events", symlinks=True)
    python = project_python(project)
    results = tmp_path / "results.json"
    result = run(
        [
            str(python),
            "benchmarks/streams.py",
            "--quick",
            "--redis-cluster",
            "3",
            "--json",
            str(results),
        ],
        cwd=project,
        env=project_env(python),
        timeout=240,
    )
    assert "Publishing on a Redis Cluster of 3 master(s)" in result.stdout
    document = json.loads(results.read_text())
    [measurements] = document["results"].values()
    assert [m["system"] for m in measurements] == ["project"]
    assert measurements[0]["delivered_everything"], measurements[0]["problems"]
    publishing = document["publishing"]
    assert publishing["events"] == 2_000
    stored = publishing["events_by_master"]
    assert len(stored) == 3
    assert all(events > 0 for events in stored.values()), stored
    assert sum(stored.values()) >= 2_000
