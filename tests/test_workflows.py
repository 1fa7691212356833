"""GitHub workflow and Dependabot files, the template's and every generated project's, are valid
and follow the same rules: actions pinned to a commit, a read-only token by default, time limits."""

import re
import sys
from pathlib import Path

import pytest
import yaml

from .helpers import TEMPLATE_DIR, run

WORKFLOW_PATTERNS = (".github/workflows/*.yml", ".github/workflows/*.yaml")
DEPENDABOT_PATTERNS = (".github/dependabot.yml", ".github/dependabot.yaml")
PINNED_ACTION = re.compile(r"[\w.-]+/[\w./-]+@[0-9a-f]{40}")


def distinct_files(directories: list[Path], patterns: tuple[str, ...]) -> list[Path]:
    """One file per distinct content: the projects share most of theirs."""
    by_content: dict[bytes, Path] = {}
    for directory in directories:
        for pattern in patterns:
            for path in sorted(directory.glob(pattern)):
                by_content.setdefault(path.read_bytes(), path)
    return list(by_content.values())


@pytest.fixture(scope="module")
def directories(all_bakes) -> list[Path]:
    return [TEMPLATE_DIR, *(project for _, project in all_bakes.values())]


def check_schema(schema: str, files: list[Path]) -> None:
    check_jsonschema = str(Path(sys.executable).with_name("check-jsonschema"))
    run([check_jsonschema, "--builtin-schema", schema, *map(str, files)])


def test_workflows_match_the_github_schema(directories: list[Path]) -> None:
    files = distinct_files(directories, WORKFLOW_PATTERNS)
    assert TEMPLATE_DIR / ".github" / "workflows" / "template.yml" in files
    check_schema("vendor.github-workflows", files)


def test_dependabot_files_match_their_schema(directories: list[Path]) -> None:
    files = distinct_files(directories, DEPENDABOT_PATTERNS)
    if not files:
        pytest.skip("neither the template nor its projects configure Dependabot")
    check_schema("vendor.dependabot", files)


def test_workflows_pin_actions_limit_the_token_and_time(directories: list[Path]) -> None:
    problems = []
    for path in distinct_files(directories, WORKFLOW_PATTERNS):
        workflow = yaml.safe_load(path.read_text())
        jobs = workflow["jobs"]
        if "permissions" not in workflow and not all("permissions" in job for job in jobs.values()):
            problems.append(f"{path}: no permissions (the token would get the default scopes)")
        for name, job in jobs.items():
            if "uses" not in job and "timeout-minutes" not in job:
                problems.append(f"{path}: job {name} has no timeout-minutes")
            actions = [job["uses"]] if "uses" in job else []
            actions += [step["uses"] for step in job.get("steps", []) if "uses" in step]
            for action in actions:
                if not action.startswith("./") and not PINNED_ACTION.fullmatch(action):
                    problems.append(f"{path}: job {name} uses {action}, not pinned to a commit")
    assert problems == []


def test_template_workflow_runs_the_tests_with_a_read_only_token() -> None:
    workflow = yaml.safe_load((TEMPLATE_DIR / ".github" / "workflows" / "template.yml").read_text())
    assert workflow["permissions"] == {"contents": "read"}
    assert "concurrency" in workflow
    steps = [step for job in workflow["jobs"].values() for step in job["steps"]]
    assert any("bash scripts/test" in step.get("run", "") for step in steps)


def test_workflows_pass_zizmors_offline_audits(directories: list[Path]) -> None:
    """No credential left for later steps, no template injection, no excessive permissions: what
    zizmor (the GitHub Actions security linter) finds without the network."""
    zizmor = str(Path(sys.executable).with_name("zizmor"))
    run([zizmor, "--offline", *map(str, distinct_files(directories, WORKFLOW_PATTERNS))])
