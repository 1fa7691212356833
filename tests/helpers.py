"""What the template's tests share: the options, baking, project virtualenvs, programs and ports."""

import fcntl
import hashlib
import itertools
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
from cookiecutter.main import cookiecutter

TEMPLATE_DIR = Path(__file__).resolve().parent.parent
CACHE_DIR = (
    Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "cookiecutter-django-sse"
)

# The generated project's settings read these from the environment; a test decides their values,
# never the environment the test suite happens to run in.
SETTINGS_VARIABLE_PREFIXES = ("EVENTS_", "SECURE_", "SESSION_", "CSRF_", "POSTGRES_")
SETTINGS_VARIABLES = frozenset(
    {
        "ALLOWED_HOSTS",
        "DATABASE_URL",
        "DEBUG",
        "DJANGO_SETTINGS_MODULE",
        "LOG_LEVEL",
        "REDIS_URL",
        "SECRET_KEY",
        "TIME_ZONE",
    }
)


def in_ci() -> bool:
    return os.environ.get("CI", "").lower() in {"1", "true", "yes"}


def require_binary(name: str, *extra_dirs: str) -> str:
    """Path of a program; under CI=true its absence fails the test, elsewhere it skips it."""
    found = shutil.which(name) or shutil.which(name, path=os.pathsep.join(extra_dirs))
    if found is None:
        message = f"{name} is not installed (bash scripts/test installs it)"
        if in_ci():
            pytest.fail(message)
        pytest.skip(message)
    return found


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def wait_for_port(
    port: int, timeout: float = 20.0, process: subprocess.Popen | None = None
) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise RuntimeError(f"{process.args} exited with {process.returncode}")
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.5).close()
            return
        except OSError:
            time.sleep(0.1)
    raise TimeoutError(f"nothing listens on 127.0.0.1:{port} after {timeout} s")


def stop(process: subprocess.Popen) -> None:
    """Stop a process that a test started with start_new_session=True, and all it started."""
    if process.poll() is not None:
        return
    os.killpg(process.pid, signal.SIGTERM)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(process.pid, signal.SIGKILL)
        process.wait()


# --- Options and baking ----------------------------------------------------------------------


def template_options() -> dict[str, list[Any]]:
    """Every multiple-choice question of cookiecutter.json with its answers, default first."""
    questions = json.loads((TEMPLATE_DIR / "cookiecutter.json").read_text())
    options = {}
    for name, default in questions.items():
        if name.startswith("_"):  # cookiecutter's own settings, not questions
            continue
        if isinstance(default, list):
            options[name] = default
        elif isinstance(default, bool):
            options[name] = [default, not default]
    return options


def default_options() -> dict[str, Any]:
    return {name: answers[0] for name, answers in template_options().items()}


# Options that change only files of their own (no Python code, no file another option changes)
# do not multiply the combinations: each rides along with a partner option instead, answer i of the
# partner getting answer i modulo its count. kubernetes follows the license: MIT and Apache-2.0 get
# "none", BSD-3-Clause and "Not open source" get "kustomize". So both answers still meet every
# combination of python_version, database, http_topology, include_demo and ci, and the number of
# bakes stays what the other options make it.
PAIRED_OPTIONS = {"kubernetes": "open_source_license"}


def all_option_sets() -> list[dict[str, Any]]:
    options = template_options()
    multiplied = {name: answers for name, answers in options.items() if name not in PAIRED_OPTIONS}
    option_sets = []
    for answers in itertools.product(*multiplied.values()):
        chosen = dict(zip(multiplied, answers, strict=True))
        for name, partner in PAIRED_OPTIONS.items():
            index = options[partner].index(chosen[partner]) % len(options[name])
            chosen[name] = options[name][index]
        option_sets.append({name: chosen[name] for name in options})  # in the questions' order
    return option_sets


def option_set_id(answers: Mapping[str, Any]) -> str:
    return "-".join(f"{value}" for value in answers.values()).replace(" ", "_")


def bake(output_dir: Path, answers: Mapping[str, Any], config_file: Path) -> Path:
    """Generate a project without prompting, as `cookiecutter --no-input` would."""
    return Path(
        cookiecutter(
            str(TEMPLATE_DIR),
            no_input=True,
            extra_context=dict(answers),
            output_dir=str(output_dir),
            config_file=str(config_file),
        )
    )


def write_cookiecutter_config(directory: Path) -> Path:
    """A cookiecutter configuration that keeps replay files out of the home directory."""
    config = directory / "cookiecutter.yaml"
    config.write_text(
        f"cookiecutters_dir: {directory / 'cookiecutters'}\nreplay_dir: {directory / 'replay'}\n"
    )
    return config


def project_files(project: Path) -> dict[str, bytes]:
    """Relative path -> content of every file of a generated project."""
    return {
        str(path.relative_to(project)): path.read_bytes()
        for path in sorted(project.rglob("*"))
        if path.is_file()
    }


# --- Generated projects: virtualenvs and commands ----------------------------------------------


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """Serialises work on a cache entry between test runs that happen at the same time."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


def project_python(project_dir: Path) -> Path:
    """Python of a virtualenv with the project's requirements-dev.txt installed.

    Cached under CACHE_DIR/venvs/, keyed by the requirements files and this Python's version, so
    an unchanged project reuses it and a changed pin gets a fresh one.
    """
    requirements = b"".join(
        (project_dir / name).read_bytes() for name in ("requirements.txt", "requirements-dev.txt")
    )
    key = hashlib.sha256(requirements + sys.version.encode()).hexdigest()[:16]
    venv_dir = CACHE_DIR / "venvs" / key
    python = venv_dir / "bin" / "python"
    ready = venv_dir / ".installed"
    with file_lock(CACHE_DIR / "venvs" / f"{key}.lock"):
        if not ready.exists():
            shutil.rmtree(venv_dir, ignore_errors=True)
            run([sys.executable, "-m", "venv", str(venv_dir)], timeout=120)
            run(
                [str(python), "-m", "pip", "install", "--quiet", "-r", "requirements-dev.txt"],
                cwd=project_dir,
                timeout=900,
            )
            ready.touch()
    return python


def project_env(python: Path, **variables: str) -> dict[str, str]:
    """Environment for a generated project's commands: its virtualenv first on PATH, no setting
    inherited from the test run's own environment, then `variables`."""
    env = {
        name: value
        for name, value in os.environ.items()
        if name not in SETTINGS_VARIABLES and not name.startswith(SETTINGS_VARIABLE_PREFIXES)
    }
    env["PATH"] = f"{python.parent}{os.pathsep}{env.get('PATH', '')}"
    env.pop("VIRTUAL_ENV", None)
    return {**env, **variables}


def run(
    command: list[str],
    *,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    timeout: float = 120,
) -> subprocess.CompletedProcess[str]:
    """Run a command; fail the test with its output if it exits non-zero."""
    result = subprocess.run(
        command, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )
    if result.returncode != 0:
        pytest.fail(
            f"{' '.join(command)} (in {cwd}) exited {result.returncode}\n"
            f"--- stdout\n{result.stdout}\n--- stderr\n{result.stderr}",
            pytrace=False,
        )
    return result
