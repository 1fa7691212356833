"""The processes the benchmark starts: redis-server and one Daphne per system under test.

Each child gets the hard open-file limit as its soft limit (a server holding 10,000 streams needs
10,000 descriptors, more than the usual soft limit of 1,024), and the kernel sends it SIGTERM if
the benchmark dies, so that nothing outlives a run.
"""

from __future__ import annotations

import contextlib
import ctypes
import resource
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

PROJECT_DIR = Path(__file__).resolve().parent.parent
PR_SET_PDEATHSIG = 1
# Looked up once, in the parent: the child, forked while other threads may hold locks, then only
# calls C functions, which take none.
_prctl: Callable[..., int] | None = getattr(ctypes.CDLL(None), "prctl", None)


def raise_open_file_limit() -> int:
    """Raise this process's soft RLIMIT_NOFILE to its hard limit; returns the new soft limit."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
        return hard
    return soft


def _prepare_child() -> None:
    """Runs in the child before exec."""
    if _prctl is not None:
        _prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    raise_open_file_limit()


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def tail(path: Path, lines: int = 30) -> str:
    with contextlib.suppress(OSError):
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    return ""


@dataclass
class Service:
    name: str
    process: subprocess.Popen[bytes]
    port: int
    log: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def running(self) -> bool:
        return self.process.poll() is None

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def _wait_for_port(service: Service, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not service.running():
            raise RuntimeError(
                f"{service.name} exited with {service.process.returncode}:\n{tail(service.log)}"
            )
        try:
            socket.create_connection(("127.0.0.1", service.port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.05)
    raise TimeoutError(f"nothing listens on port {service.port} after {timeout:.0f}s")


def start_service(
    name: str, command: list[str], port: int, log: Path, env: dict[str, str] | None = None
) -> Service:
    with log.open("ab") as output:
        process = subprocess.Popen(
            command,
            cwd=PROJECT_DIR,
            env=env,
            stdin=subprocess.DEVNULL,
            stdout=output,
            stderr=subprocess.STDOUT,
            preexec_fn=_prepare_child,
        )
    service = Service(name, process, port, log)
    try:
        _wait_for_port(service, timeout=60)
    except BaseException:
        service.stop()
        raise
    return service


def start_redis(work_dir: Path) -> Service:
    program = shutil.which("redis-server")
    if program is None:
        raise SystemExit(
            "redis-server is not installed (Debian/Ubuntu: apt-get install redis-server). "
            "Pass --redis-url redis://127.0.0.1:6379/0 to use a running one, "
            "or --broker memory to measure the project alone without Redis."
        )
    port = free_port()
    # No persistence and no other listener: a scratch Redis for this run only.
    command = [program, "--port", str(port), "--bind", "127.0.0.1", "--save", ""]
    command += ["--appendonly", "no", "--dir", str(work_dir)]
    return start_service("redis-server", command, port, work_dir / "redis.log")


def start_daphne(name: str, application: str, env: dict[str, str], work_dir: Path) -> Service:
    port = free_port()
    command = [sys.executable, "-m", "daphne", "-b", "127.0.0.1", "-p", str(port), application]
    return start_service(name, command, port, work_dir / f"daphne-{name}-{port}.log", env)
