"""Every combination of the options generates a clean, consistent, working project."""

import fnmatch
import json
import re
import secrets
import shutil
import subprocess
import sys
import tomllib
from collections import defaultdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from .helpers import (
    TEMPLATE_DIR,
    all_option_sets,
    option_set_id,
    project_env,
    project_files,
    project_python,
    run,
)

SLUG = "live_events"
OPTION_SETS = all_option_sets()
# The options that change Python code; python_version, kubernetes and the license must not.
CODE_OPTIONS = ("database", "http_topology", "include_demo")
CODE_COMBINATIONS = sorted(
    {tuple(answers[name] for name in CODE_OPTIONS) for answers in OPTION_SETS}
)
COPIED_WITHOUT_RENDERING = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())[
    "_copy_without_render"
]
# A phrase found in one license text only.
LICENSE_MARKERS = {
    "MIT": "MIT License",
    "BSD-3-Clause": "BSD 3-Clause License",
    "Apache-2.0": "Apache License",
}


def expected_absent(relative: str, answers: dict[str, Any]) -> bool:
    """Whether a file of the template must be missing from a project with these answers."""
    return (
        (relative == "LICENSE" and answers["open_source_license"] == "Not open source")
        or (relative.startswith(".github/") and answers["ci"] == "none")
        or (
            (relative.startswith(f"{SLUG}/demo/") or relative == "tests/test_browser.py")
            and not answers["include_demo"]
        )
        or (
            relative in ("gunicorn.conf.py", "tests/test_gunicorn_metrics.py")
            and answers["http_topology"] == "daphne"
        )
        or kubernetes_file_absent(relative, answers)
    )


def kubernetes_file_absent(relative: str, answers: dict[str, Any]) -> bool:
    """The manifests and their docs exist only with kubernetes chosen, and then only those of
    the chosen servers (wsgi: gunicorn's) and database (SQLite's volume, or a PostgreSQL server)."""
    manifests = relative.startswith("deploy/kubernetes/") or relative == "docs/kubernetes.md"
    return (
        (manifests and answers["kubernetes"] == "none")
        or (relative == "deploy/kubernetes/base/wsgi.yaml" and answers["http_topology"] == "daphne")
        or (relative == "deploy/kubernetes/base/data.yaml" and answers["database"] != "sqlite")
        or (
            relative == "deploy/kubernetes/overlays/development/postgres.yaml"
            and answers["database"] != "postgresql"
        )
    )


def template_files() -> list[str]:
    """Every file of the project template, by the path it gets in a generated project."""
    template = TEMPLATE_DIR / "{{cookiecutter.project_slug}}"
    return [
        str(path.relative_to(template)).replace("{{cookiecutter.project_slug}}", SLUG)
        for path in template.rglob("*")
        if path.is_file()
    ]


def leftovers(relative: str, text: str) -> list[str]:
    """Template syntax that survived rendering."""
    markers = ["cookiecutter."]
    # Django templates are copied as they are: their {{ }} and {% %} are Django's own.
    if not any(fnmatch.fnmatch(relative, pattern) for pattern in COPIED_WITHOUT_RENDERING):
        markers += ["{{", "{%", "{#"]
    if relative.startswith(".github/"):
        text = text.replace("${{", "")  # GitHub Actions expressions
    return [marker for marker in markers if marker in text]


@pytest.mark.parametrize("answers", OPTION_SETS, ids=option_set_id)
def test_option_set_renders_completely(answers: dict[str, Any], all_bakes) -> None:
    _, project = all_bakes[option_set_id(answers)]
    files = project_files(project)

    expected = {path for path in template_files() if not expected_absent(path, answers)}
    assert set(files) == expected | {".env"}

    problems = {}
    for relative, content in files.items():
        try:
            text = content.decode()
        except UnicodeDecodeError:
            continue
        if found := leftovers(relative, text):
            problems[relative] = found
        suffix = Path(relative).suffix
        if suffix in {".yml", ".yaml"}:
            list(yaml.safe_load_all(text))
        elif suffix == ".toml":
            tomllib.loads(text)
        elif suffix == ".json":
            json.loads(text)
    assert problems == {}


@pytest.mark.parametrize("answers", OPTION_SETS, ids=option_set_id)
def test_option_set_keeps_the_files_of_its_choices(answers: dict[str, Any], all_bakes) -> None:
    _, project = all_bakes[option_set_id(answers)]

    license_file = project / "LICENSE"
    if answers["open_source_license"] == "Not open source":
        assert not license_file.exists()
    else:
        text = license_file.read_text()
        found = [name for name, marker in LICENSE_MARKERS.items() if marker in text]
        assert found == [answers["open_source_license"]]
        assert re.search(rf"Copyright (\(c\) )?{datetime.now(UTC).year},? Jane Doe", text)
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    expected_license = answers["open_source_license"]
    assert metadata.get("license") == (
        None if expected_license == "Not open source" else expected_license
    )

    workflows = list((project / ".github" / "workflows").glob("*.y*ml"))
    assert bool(workflows) == (answers["ci"] == "github")

    assert (project / SLUG / "demo" / "views.py").exists() == answers["include_demo"]
    settings = (project / "config" / "settings.py").read_text()
    assert (f'"{SLUG}.demo"' in settings) == answers["include_demo"]

    python_image = f"PYTHON_IMAGE=python:{answers['python_version']}-slim-bookworm"
    assert python_image in (project / ".env.example").read_text()

    requirements = (project / "requirements.txt").read_text()
    assert ("psycopg[binary]==" in requirements) == (answers["database"] == "postgresql")

    # Without Kubernetes, no manifests, and no link to them in the README.
    kubernetes = answers["kubernetes"] == "kustomize"
    assert (project / "deploy" / "kubernetes").exists() == kubernetes
    assert ("docs/kubernetes.md" in (project / "README.md").read_text()) == kubernetes


def test_generated_python_passes_ruff(all_bakes) -> None:
    """`ruff check` and `ruff format --check`, each project with its own configuration."""
    projects = {str(project): option_set_id for option_set_id, (_, project) in all_bakes.items()}
    ruff = str(Path(sys.executable).with_name("ruff"))

    def relative(path: str) -> str:
        # The same file of every project that has it is one finding.
        project = next(project for project in projects if path.startswith(project + "/"))
        return path.removeprefix(project + "/")

    check = subprocess.run(
        [ruff, "check", "--no-cache", "--output-format=json", *projects],
        capture_output=True,
        text=True,
        check=False,
    )
    lint = {
        f"{relative(problem['filename'])}:{problem['location']['row']}: "
        f"{problem['code']} {problem['message']}"
        for problem in json.loads(check.stdout)
    }
    assert sorted(lint) == []
    fmt = subprocess.run(
        [ruff, "format", "--check", "--no-cache", *projects],
        capture_output=True,
        text=True,
        check=False,
    )
    unformatted = {
        relative(line.removeprefix("Would reformat: "))
        for line in fmt.stdout.splitlines()
        if line.startswith("Would reformat: ")
    }
    assert sorted(unformatted) == []
    assert fmt.returncode == 0, fmt.stderr


def test_python_version_and_license_do_not_change_python_code(all_bakes) -> None:
    code_by_combination: dict[tuple, dict[str, dict[str, bytes]]] = defaultdict(dict)
    for option_set, (answers, project) in all_bakes.items():
        combination = tuple(answers[name] for name in CODE_OPTIONS)
        code_by_combination[combination][option_set] = {
            relative: content
            for relative, content in project_files(project).items()
            if relative.endswith(".py")
        }
    differences = {}
    for variants in code_by_combination.values():
        (first_id, first), *others = variants.items()
        for option_set, files in others:
            differing = sorted(
                path for path in files.keys() | first.keys() if files.get(path) != first.get(path)
            )
            if differing:
                differences[f"{option_set} vs {first_id}"] = differing
    assert differences == {}


def test_dependencies_are_pinned_exactly(baked) -> None:
    project = baked(database="postgresql")
    for name in ("requirements.txt", "requirements-dev.txt"):
        for line in (project / name).read_text().splitlines():
            if line and not line.startswith(("#", "-r ")):
                assert re.fullmatch(r"[A-Za-z0-9_.\-\[\]]+==[0-9][0-9A-Za-z.]*", line), line
    dev_requirements = (project / "requirements-dev.txt").read_text()
    ruff_pin = re.search(r"^ruff==(\S+)$", dev_requirements, re.MULTILINE)[1]
    pre_commit = yaml.safe_load((project / ".pre-commit-config.yaml").read_text())
    hook_pins = {
        dependency
        for repo in pre_commit["repos"]
        for hook in repo["hooks"]
        for dependency in hook.get("additional_dependencies", [])
    }
    assert hook_pins == {f"ruff=={ruff_pin}"}


# --- Django's own checks, once per combination of the options that change code ---------------

PRODUCTION = {
    "DEBUG": "false",
    "SECRET_KEY": secrets.token_urlsafe(50),
    "ALLOWED_HOSTS": "example.com,testserver",
}

# Requests a visitor would make first, through Django's test client, with production settings.
SMOKE_REQUESTS = """
import json
from django.test import Client
client = Client()
answers = {
    path: client.get(path, secure=True)
    for path in ("/healthz", "/accounts/login/", "/", "/admin/login/")
}
print(json.dumps({path: [r.status_code, r.headers.get("Location")] for path, r in answers.items()}))
"""


@pytest.mark.slow
@pytest.mark.timeout(900)
@pytest.mark.parametrize("combination", CODE_COMBINATIONS, ids=lambda c: "-".join(map(str, c)))
def test_django_checks_and_types_pass(combination: tuple, baked, tmp_path: Path) -> None:
    answers = dict(zip(CODE_OPTIONS, combination, strict=True))
    project = baked(**answers)
    python = project_python(project)
    database = f"sqlite:///{tmp_path / 'db.sqlite3'}"
    development = project_env(python, DEBUG="true", DATABASE_URL=database)
    production = project_env(python, DATABASE_URL=database, **PRODUCTION)

    def manage(env: dict[str, str], *args: str) -> str:
        return run([str(python), "-B", "manage.py", *args], cwd=project, env=env).stdout

    manage(development, "check", "--fail-level", "WARNING")
    manage(development, "makemigrations", "--check", "--dry-run")
    manage(production, "check", "--deploy", "--fail-level", "WARNING")

    # Types, as the project configures mypy (pyproject.toml): the application strictly, its tests
    # and benchmark too.
    types = run(
        [str(python), "-m", "mypy", "--cache-dir", str(tmp_path / "mypy-cache")],
        cwd=project,
        env=development,
        timeout=500,
    )
    assert types.stdout.startswith("Success: no issues found"), types.stdout

    # The events app's layers and no import cycle (import-linter's contracts in pyproject.toml).
    layers = run([str(python.with_name("lint-imports")), "--no-cache"], cwd=project, env=development)
    assert "0 broken" in layers.stdout, layers.stdout

    output = manage(production, "shell", "-c", SMOKE_REQUESTS)
    answered = json.loads(output.strip().splitlines()[-1])
    assert answered["/healthz"] == [200, None]
    assert answered["/accounts/login/"] == [200, None]
    assert answered["/admin/login/"] == [200, None]
    # The home page: the demo (for signed-in users), else the admin.
    if answers["include_demo"]:
        assert answered["/"] == [302, "/accounts/login/?next=/"]
    else:
        assert answered["/"] == [302, "/admin/"]


@pytest.mark.slow
def test_an_import_against_the_layers_breaks_the_contracts(baked, tmp_path: Path) -> None:
    """The contracts bite: a lower layer importing a higher one (the metrics reading the hub, the
    cycle this layout removed) fails lint-imports, in the generated CI and `make lint`."""
    project = baked()
    python = project_python(project)
    copy = tmp_path / project.name
    shutil.copytree(project, copy, ignore=shutil.ignore_patterns(".venv", "__pycache__"))
    metrics = copy / SLUG / "events" / "telemetry" / "metrics.py"
    metrics.write_text(metrics.read_text() + "\nfrom ..delivery.hub import running_hubs  # noqa\n")
    broken = subprocess.run(
        [str(python.with_name("lint-imports")), "--no-cache"],
        cwd=copy,
        env=project_env(python, COLUMNS="200"),  # its report on one line per import
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert broken.returncode != 0
    assert "BROKEN" in broken.stdout
    assert f"{SLUG}.events.telemetry.metrics -> {SLUG}.events.delivery.hub" in broken.stdout


def test_the_readme_states_the_numbers_of_cookiecutter_json() -> None:
    """A figure written in a sentence goes stale when an option is added: derived here from the
    template's own questions, it cannot."""
    readme = (TEMPLATE_DIR / "README.md").read_text()
    stated = re.search(r"bakes each of the ([\d,]+) combinations", readme)
    assert stated, "the README no longer says how many combinations the tests bake"
    assert int(stated[1].replace(",", "")) == len(OPTION_SETS)
    code_stated = re.search(r"for each of the ([\d,]+) combinations that change code", readme)
    assert code_stated, "the README no longer says how many code-changing combinations there are"
    assert int(code_stated[1].replace(",", "")) == len(CODE_COMBINATIONS)


def test_every_make_target_is_named_in_the_readme_and_runs_dry(baked) -> None:
    project = baked()
    makefile = (project / "Makefile").read_text()
    targets = re.findall(r"^([a-z]+):", makefile, re.MULTILINE)
    assert {"run", "test", "lint", "types", "bench", "up"} <= set(targets)
    phony = re.search(r"^\.PHONY: (.+)$", makefile, re.MULTILINE)
    assert phony
    assert set(phony[1].split()) == set(targets)
    readme = (project / "README.md").read_text()
    assert [target for target in targets if f"`make {target}`" not in readme] == []
    for target in targets:  # -n: print the commands, run none
        run(["make", "-n", target], cwd=project)
