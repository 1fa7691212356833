"""The hooks: answers that would break the project are refused before anything is written, and a
generated project gets its own secrets and a .env that git ignores."""

import importlib.util
import shutil
import stat
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from cookiecutter.exceptions import FailedHookException
from cookiecutter.hooks import run_script_with_context

from .helpers import TEMPLATE_DIR, bake, require_binary, run

# (answers, what the error must say): the answer itself and the rule it breaks.
REJECTED = [
    ({"project_slug": "Live_Events"}, "project_slug 'Live_Events': must be a lowercase Python"),
    ({"project_slug": "live-events"}, "project_slug 'live-events': must be a lowercase Python"),
    ({"project_slug": "2fast"}, "project_slug '2fast': must be a lowercase Python identifier"),
    ({"project_slug": "class"}, "project_slug 'class': must be a lowercase Python identifier"),
    ({"project_slug": "django"}, "project_slug 'django': must not shadow a module"),
    ({"project_slug": "redis"}, "project_slug 'redis': must not shadow a module"),
    ({"project_slug": "rest_framework"}, "project_slug 'rest_framework': must not shadow"),
    ({"project_slug": "config"}, "project_slug 'config': must not shadow a module"),
    ({"project_slug": "tests"}, "project_slug 'tests': must not shadow a module"),
    ({"project_slug": "json"}, "project_slug 'json': must not shadow a module"),
    ({"project_name": "Test"}, "project_slug 'test': must not shadow a module"),
    ({"email": "jane.example.com"}, "email 'jane.example.com': must be an address"),
    ({"email": "jane@localhost"}, "email 'jane@localhost': must be an address"),
    ({"domain_name": "https://example.com"}, "domain_name 'https://example.com': must be a host"),
    ({"domain_name": "example.com:8000"}, "domain_name 'example.com:8000': must be a host"),
    ({"domain_name": "-bad.example.com"}, "domain_name '-bad.example.com': must be a host"),
    ({"timezone": "Mars/Olympus_Mons"}, "timezone 'Mars/Olympus_Mons': must be an IANA time zone"),
    ({"timezone": "utc"}, "timezone 'utc': must be an IANA time zone"),
]


@pytest.mark.parametrize(
    ("answers", "message"), REJECTED, ids=[str(answers) for answers, _ in REJECTED]
)
def test_bad_answer_is_refused_and_nothing_is_written(
    answers: dict[str, str], message: str, tmp_path: Path, cookiecutter_config: Path, capfd
) -> None:
    with pytest.raises(FailedHookException):
        bake(tmp_path, answers, cookiecutter_config)
    assert message in capfd.readouterr().err
    assert list(tmp_path.iterdir()) == []


def test_every_problem_is_reported_at_once(
    tmp_path: Path, cookiecutter_config: Path, capfd
) -> None:
    answers = {"project_slug": "django", "email": "nobody", "timezone": "Nowhere/Town"}
    with pytest.raises(FailedHookException):
        bake(tmp_path, answers, cookiecutter_config)
    errors = capfd.readouterr().err
    assert "project_slug 'django'" in errors
    assert "email 'nobody'" in errors
    assert "timezone 'Nowhere/Town'" in errors


def test_command_line_refusal_exits_1_with_the_reason(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "cookiecutter",
            "--no-input",
            "--output-dir",
            str(tmp_path / "out"),
            str(TEMPLATE_DIR),
            "project_slug=import",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "project_slug 'import': must be a lowercase Python identifier" in result.stderr
    assert list((tmp_path / "out").iterdir()) == []


def test_unsupported_python_version_is_refused(tmp_path: Path, cookiecutter_config: Path) -> None:
    # cookiecutter itself refuses an answer that is not one of the choices...
    with pytest.raises(ValueError, match=r"3\.10 provided for choice variable python_version"):
        bake(tmp_path, {"python_version": "3.10"}, cookiecutter_config)
    assert list(tmp_path.iterdir()) == []


def test_pre_generation_hook_refuses_unsupported_python_version(tmp_path: Path, capfd) -> None:
    # ...and the hook refuses it too, for answers that bypass the choices (a replay file).
    context = {
        "cookiecutter": {
            "project_slug": "live_events",
            "email": "jane@example.com",
            "domain_name": "example.com",
            "timezone": "UTC",
            "python_version": "3.10",
        }
    }
    with pytest.raises(FailedHookException):
        run_script_with_context(TEMPLATE_DIR / "hooks" / "pre_gen_project.py", tmp_path, context)
    assert "python_version '3.10': must be one of 3.11, 3.12, 3.13" in capfd.readouterr().err


def test_unusual_but_valid_answers_are_accepted(tmp_path: Path, cookiecutter_config: Path) -> None:
    project = bake(
        tmp_path,
        {
            "project_name": "Acme Push-Notifications",
            "email": "first.last+events@mail.example.co.uk",
            "domain_name": "events.example.co.uk",
            "timezone": "America/Argentina/Buenos_Aires",
            "description": 'Says "hello" \\ with quotes',
        },
        cookiecutter_config,
    )
    assert project.name == "acme_push_notifications"
    metadata = tomllib.loads((project / "pyproject.toml").read_text())["project"]
    assert metadata["description"] == 'Says "hello" \\ with quotes'
    assert metadata["authors"] == [
        {"name": "Jane Doe", "email": "first.last+events@mail.example.co.uk"}
    ]
    assert (project / "acme_push_notifications" / "events").is_dir()
    assert (
        'default="America/Argentina/Buenos_Aires"'
        in (project / "config" / "settings.py").read_text()
    )
    example = (project / ".env.example").read_text()
    assert "\nALLOWED_HOSTS=localhost,127.0.0.1,events.example.co.uk\n" in example
    assert "\nCSRF_TRUSTED_ORIGINS=https://events.example.co.uk\n" in example


# --- post_gen_project --------------------------------------------------------------------------


def dotenv(project: Path) -> dict[str, str]:
    values = {}
    for line in (project / ".env").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.partition("=")
            values[name] = value
    return values


def test_dotenv_is_for_local_development_with_fresh_secrets(baked) -> None:
    first, second = baked(), baked(python_version="3.13")
    settings = dotenv(first)
    assert settings["DEBUG"] == "true"
    assert len(settings["SECRET_KEY"]) >= 50
    assert settings["SECRET_KEY"] != dotenv(second)["SECRET_KEY"]
    assert "POSTGRES_PASSWORD" not in settings
    assert stat.S_IMODE((first / ".env").stat().st_mode) == 0o600
    # Everything else is as documented in .env.example.
    example = (first / ".env.example").read_text()
    for name, value in settings.items():
        if name not in {"DEBUG", "SECRET_KEY"}:
            assert f"\n{name}={value}\n" in example


def test_postgresql_project_gets_a_database_password(baked) -> None:
    settings = dotenv(baked(database="postgresql"))
    assert len(settings["POSTGRES_PASSWORD"]) >= 24
    assert settings["POSTGRES_USER"] == "live_events"
    assert settings["POSTGRES_DB"] == "live_events"


def test_git_ignores_dotenv_but_not_its_example(baked, tmp_path: Path) -> None:
    git = require_binary("git")
    project = shutil.copytree(baked(), tmp_path / "project")
    run([git, "init", "--quiet"], cwd=project)
    untracked = run([git, "status", "--porcelain", "--untracked-files=all"], cwd=project).stdout
    assert "?? .env.example" in untracked.splitlines()
    assert "?? .env" not in untracked.splitlines()


def test_next_steps_are_printed(tmp_path: Path, cookiecutter_config: Path, capfd) -> None:
    bake(tmp_path, {"include_demo": False}, cookiecutter_config)
    printed = capfd.readouterr().out
    assert "Next steps:" in printed
    assert "cd live_events" in printed
    assert "python manage.py createsuperuser" in printed
    assert "create_demo_user" not in printed


def post_gen_hook():
    """hooks/post_gen_project.py as a module (its main() does not run on import)."""
    path = TEMPLATE_DIR / "hooks" / "post_gen_project.py"
    spec = importlib.util.spec_from_file_location("post_gen_project", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


KUBERNETES_FILES = [
    "deploy/kubernetes/base/asgi.yaml",
    "deploy/kubernetes/base/wsgi.yaml",
    "deploy/kubernetes/base/data.yaml",
    "deploy/kubernetes/overlays/development/redis.yaml",
    "deploy/kubernetes/overlays/development/postgres.yaml",
    "docs/kubernetes.md",
    "docs/deployment.md",
]


@pytest.mark.parametrize(
    ("answers", "kept"),
    [
        ({"kubernetes": "none"}, ["docs/deployment.md"]),
        (
            {"kubernetes": "kustomize", "http_topology": "daphne", "database": "sqlite"},
            [
                "deploy/kubernetes/base/asgi.yaml",
                "deploy/kubernetes/base/data.yaml",
                "deploy/kubernetes/overlays/development/redis.yaml",
                "docs/kubernetes.md",
                "docs/deployment.md",
            ],
        ),
        (
            {
                "kubernetes": "kustomize",
                "http_topology": "daphne+gunicorn",
                "database": "postgresql",
            },
            [
                "deploy/kubernetes/base/asgi.yaml",
                "deploy/kubernetes/base/wsgi.yaml",
                "deploy/kubernetes/overlays/development/redis.yaml",
                "deploy/kubernetes/overlays/development/postgres.yaml",
                "docs/kubernetes.md",
                "docs/deployment.md",
            ],
        ),
    ],
    ids=["none", "kustomize-daphne-sqlite", "kustomize-gunicorn-postgresql"],
)
def test_kubernetes_files_follow_the_answers_and_leave_no_empty_directory(
    answers: dict[str, str], kept: list[str], tmp_path: Path
) -> None:
    hook = post_gen_hook()
    for relative in KUBERNETES_FILES:
        (tmp_path / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / relative).touch()
    full_answers = {
        "open_source_license": "MIT",
        "ci": "github",
        "include_demo": True,
        "project_slug": "live_events",
        "http_topology": "daphne",
        "database": "sqlite",
        **answers,
    }
    hook.remove(tmp_path, hook.unselected_paths(full_answers))
    remaining = sorted(str(path.relative_to(tmp_path)) for path in tmp_path.rglob("*"))
    directories = {str(Path(relative).parent) for relative in kept}
    parents = {str(parent) for d in directories for parent in [Path(d), *Path(d).parents]}
    assert remaining == sorted(set(kept) | (parents - {"."}))
