"""Finish the generated project: remove the files of options not chosen, write a .env for local
development with fresh secrets, and say what to do next. Runs inside the new project directory."""

import json
import secrets
import shutil
import sys
from pathlib import Path


def unselected_paths(answers: dict[str, object]) -> list[str]:
    """Whole files and directories that belong only to options not chosen."""
    paths = []
    if answers["open_source_license"] == "Not open source":
        paths.append("LICENSE")
    if answers["ci"] == "none":
        paths.append(".github")
    if not answers["include_demo"]:
        # The demo app, and its test in a browser.
        paths += [f"{answers['project_slug']}/demo", "tests/test_browser.py"]
    if answers["http_topology"] == "daphne":
        # gunicorn's settings, and the test of its workers' metrics.
        paths += ["gunicorn.conf.py", "tests/test_gunicorn_metrics.py"]
    paths += unselected_kubernetes_paths(answers)
    return paths


KUBERNETES = "deploy/kubernetes"


def unselected_kubernetes_paths(answers: dict[str, object]) -> list[str]:
    """The manifests, whole or those of the servers and database not chosen."""
    if answers["kubernetes"] == "none":
        return [KUBERNETES, "docs/kubernetes.md"]
    paths = []
    if answers["http_topology"] == "daphne":
        paths.append(f"{KUBERNETES}/base/wsgi.yaml")
    if answers["database"] == "postgresql":
        paths.append(f"{KUBERNETES}/base/data.yaml")  # SQLite's volume
    else:
        paths.append(f"{KUBERNETES}/overlays/development/postgres.yaml")
    return paths


def remove(project: Path, relative_paths: list[str]) -> None:
    for relative in relative_paths:
        path = project / relative
        if path.is_dir():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        # No empty directory left behind (deploy/ once deploy/kubernetes/ is gone).
        parent = path.parent
        while parent != project and parent.is_dir() and not any(parent.iterdir()):
            parent.rmdir()
            parent = parent.parent


def local_settings(answers: dict[str, object]) -> dict[str, str]:
    """What .env changes in .env.example: development mode and secrets of its own."""
    values = {"DEBUG": "true", "SECRET_KEY": secrets.token_urlsafe(50)}
    if answers["database"] == "postgresql":
        values["POSTGRES_PASSWORD"] = secrets.token_urlsafe(24)
    return values


def write_dotenv(project: Path, values: dict[str, str]) -> None:
    """.env = .env.example with `values` filled in, under a header of its own."""
    example = (project / ".env.example").read_text()
    _introduction, _, settings = example.partition("\n\n")
    lines = ["# Local development settings, with secrets: never commit this file (.gitignore).", ""]
    for line in settings.splitlines():
        name = line.partition("=")[0]
        lines.append(f"{name}={values[name]}" if name in values else line)
    dotenv = project / ".env"
    dotenv.touch(mode=0o600)  # readable by its owner only, from the start: it holds secrets
    dotenv.write_text("\n".join(lines) + "\n")


def next_steps(project: Path, answers: dict[str, object]) -> str:
    first_user = (
        "python manage.py create_demo_user   # prints the demo login"
        if answers["include_demo"]
        else "python manage.py createsuperuser"
    )
    return f"""
Created {project}

Next steps:
  cd {project.name}
  python3 -m venv .venv && . .venv/bin/activate
  pip install -r requirements-dev.txt
  python manage.py migrate
  {first_user}
  python manage.py runserver            # http://127.0.0.1:8000/

.env holds local development settings (DEBUG=true and a fresh SECRET_KEY); it is not committed.
Tests: pytest. Containers: docker compose up --build (see docs/deployment.md).
"""


def main() -> int:
    answers = json.loads(r"""{{ cookiecutter | tojson }}""")
    project = Path.cwd()
    remove(project, unselected_paths(answers))
    write_dotenv(project, local_settings(answers))
    print(next_steps(project, answers))
    return 0


if __name__ == "__main__":
    sys.exit(main())
