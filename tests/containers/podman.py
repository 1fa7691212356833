"""A throwaway podman installation for the container tests.

podman runs as root (through `sudo --non-interactive` when the tests do not).
Everything podman creates (images, containers, volumes, networks, its DNS
state) lives under one temporary directory, selected through
CONTAINERS_STORAGE_CONF and CONTAINERS_CONF, and is removed by `close()`.
No image registry is needed: the base image comes from debootstrap, and the
redis, nginx and postgres images compose.yaml uses by default are replaced
with stand-ins built on that base from Debian's packages.
"""

from __future__ import annotations

import configparser
import hashlib
import os
import shlex
import subprocess
import tempfile
import time
from collections import defaultdict
from pathlib import Path

import yaml

from ..helpers import CACHE_DIR, run

HERE = Path(__file__).resolve().parent

SUITE = "bookworm"
# One Debian root filesystem serves every image of the tests: python3 for the
# application image (the Dockerfile's PYTHON_IMAGE), redis-server, nginx and
# PostgreSQL for the stand-ins. Layers are shared, so this costs one import.
BASE_PACKAGES = (
    "python3",
    "python3-venv",
    "redis-server",
    "redis-tools",
    "nginx-light",
    "gettext-base",
    "postgresql-15",
)
BASE_IMAGE = "localhost/cds-test-base:latest"
REDIS_IMAGE = "localhost/cds-test-redis:latest"
NGINX_IMAGE = "localhost/cds-test-nginx:latest"
POSTGRES_IMAGE = "localhost/cds-test-postgres:latest"


def as_root(args, variables: dict[str, str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment that run ``args`` as root with ``variables`` set."""
    args = [str(arg) for arg in args]
    variables = variables or {}
    if os.geteuid() == 0:
        return args, {**os.environ, **variables}
    settings = [f"{name}={value}" for name, value in variables.items()]
    return ["sudo", "--non-interactive", "env", *settings, *args], dict(os.environ)


def can_run_as_root() -> bool:
    """Whether we are root, or may use sudo without a password."""
    try:
        return attempt(["true"]).returncode == 0
    except FileNotFoundError:  # no sudo
        return False


def run_as_root(args, variables=None, *, timeout=120, cwd=None) -> subprocess.CompletedProcess:
    """Run a command as root; a failure fails the test."""
    command, env = as_root(args, variables)
    return run(command, env=env, timeout=timeout, cwd=cwd)


def attempt(args, variables=None, *, timeout=120) -> subprocess.CompletedProcess:
    """Run a command as root; its failure is an answer, not an error (probes, clean-up)."""
    command, env = as_root(args, variables)
    return subprocess.run(
        command, env=env, capture_output=True, text=True, timeout=timeout, check=False
    )


def debian_mirror() -> str:
    """The Debian mirror apt uses on this machine (debootstrap needs one)."""
    sources = Path("/etc/apt/sources.list.d/debian.sources")
    if sources.exists():
        for line in sources.read_text().splitlines():
            if line.startswith("URIs:"):
                return line.split()[1]
    sources = Path("/etc/apt/sources.list")
    if sources.exists():
        for line in sources.read_text().splitlines():
            parts = line.split()
            if len(parts) >= 3 and parts[0] == "deb" and "security" not in parts[1]:
                return parts[1]
    return "http://deb.debian.org/debian"


def base_rootfs_tarball() -> Path:
    """A debootstrap root filesystem as a tarball, cached between runs."""
    mirror = debian_mirror()
    key = hashlib.sha256(f"{SUITE} {mirror} {' '.join(BASE_PACKAGES)}".encode()).hexdigest()[:12]
    tarball = CACHE_DIR / f"rootfs-{SUITE}-{key}.tar"
    if tarball.exists():
        return tarball
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="cds-rootfs-", dir=CACHE_DIR))
    rootfs, partial = work / "rootfs", work / "rootfs.tar"
    try:
        debootstrap = ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}"]
        run_as_root([*debootstrap, SUITE, rootfs, mirror], timeout=600)
        # Not needed by the tests: downloaded packages, package lists, documentation,
        # translations, and LLVM (PostgreSQL's JIT compiler, turned off in the stand-in).
        unneeded = (
            "var/cache/apt/archives/*.deb var/lib/apt/lists/*_* usr/share/doc/* usr/share/man/*"
            " usr/share/locale/* usr/lib/*/libLLVM* usr/lib/postgresql/*/lib/llvmjit*"
            " usr/lib/postgresql/*/lib/bitcode"
        )
        run_as_root(["sh", "-c", f"cd {rootfs} && rm -rf {unneeded}"])
        run_as_root(["tar", "-C", rootfs, "-cf", partial, "."], timeout=300)
        run_as_root(["chown", f"{os.getuid()}:{os.getgid()}", partial])
        partial.replace(tarball)
    finally:
        run_as_root(["rm", "-rf", work])
    return tarball


def host_pip_settings() -> tuple[str, list[Path]]:
    """pip.conf lines and local directories that reproduce the host's package index.

    pip inside the image build must reach the same index as the host (it may be
    a mirror, or local directories), and must trust the host's CA bundle, which
    the build mounts at /run/host-ca.crt.
    """
    parser = configparser.ConfigParser(interpolation=None)
    for path in (
        "/etc/pip.conf",
        "/etc/xdg/pip/pip.conf",
        Path.home() / ".config/pip/pip.conf",
        Path.home() / ".pip/pip.conf",
    ):
        parser.read(path)
    settings = dict(parser["global"]) if parser.has_section("global") else {}
    for name in ("index-url", "extra-index-url", "find-links", "trusted-host"):
        value = os.environ.get("PIP_" + name.upper().replace("-", "_"))
        if value:
            settings[name] = value
    lines = ["[global]", "cert = /run/host-ca.crt"]
    mounts: list[Path] = []
    for name in ("index-url", "extra-index-url", "find-links", "trusted-host"):
        value = settings.get(name, "").split()
        if not value:
            continue
        lines.append(f"{name} = {' '.join(value)}")
        for location in value:
            local = Path(location.removeprefix("file://"))
            if local.is_absolute() and local.exists():
                # A local index's pages usually link to files beside it
                # (<root>/simple/..., <root>/files/...): mount its parent.
                mounts.append(local.parent if name.endswith("index-url") else local)
    return "\n".join(lines) + "\n", mounts


class Podman:
    """podman and podman-compose confined to a temporary directory."""

    def __init__(self, compose_bin: str):
        self.compose_bin = compose_bin
        self.root = Path(tempfile.mkdtemp(prefix="cds-podman-"))
        (self.root / "storage.conf").write_text(
            "[storage]\n"
            'driver = "overlay"\n'
            f'graphroot = "{self.root}/graph"\n'
            f'runroot = "{self.root}/run"\n'
        )
        (self.root / "containers.conf").write_text(
            "[containers]\n"
            'default_ulimits = ["nofile=20000:20000", "nproc=32768:32768"]\n'
            "[network]\n"
            f'network_config_dir = "{self.root}/networks"\n'
            "[engine]\n"
            # crun fails on hosts in cgroup hybrid mode; runc works everywhere.
            'runtime = "runc"\n'
            'cgroup_manager = "cgroupfs"\n'
            'events_logger = "file"\n'
            f'events_logfile_path = "{self.root}/events.log"\n'
            f'tmp_dir = "{self.root}/tmp"\n'
        )
        self.firewall = FirewallSnapshot()
        self.variables = {
            "CONTAINERS_STORAGE_CONF": str(self.root / "storage.conf"),
            "CONTAINERS_CONF": str(self.root / "containers.conf"),
        }

    def __call__(self, *args, timeout=120) -> subprocess.CompletedProcess:
        """Run podman; a failure fails the test."""
        return run_as_root(["podman", *args], self.variables, timeout=timeout)

    def attempt(self, *args, timeout=120) -> subprocess.CompletedProcess:
        """Run podman; the caller looks at the outcome."""
        return attempt(["podman", *args], self.variables, timeout=timeout)

    def compose(self, project_dir: Path, project: str, *args, variables=None, timeout=300):
        return run_as_root(
            [self.compose_bin, "--project-name", project, *args],
            {**self.variables, **(variables or {})},
            cwd=project_dir,
            timeout=timeout,
        )

    # --- images -----------------------------------------------------------
    def build_base_images(self) -> None:
        """Import the Debian base image and build the redis, nginx and postgres stand-ins."""
        self(
            "import",
            "--change",
            'CMD ["/bin/bash"]',
            base_rootfs_tarball(),
            BASE_IMAGE,
            timeout=300,
        )
        stand_ins = ((REDIS_IMAGE, "redis"), (NGINX_IMAGE, "nginx"), (POSTGRES_IMAGE, "postgres"))
        for image, directory in stand_ins:
            self(
                "build",
                "--format=docker",
                "--network=host",
                "--build-arg",
                f"BASE_IMAGE={BASE_IMAGE}",
                "--tag",
                image,
                HERE / "images" / directory,
                timeout=300,
            )

    def build_app_image(self, project_dir: Path, tag: str) -> None:
        """Build the project's Dockerfile on the Debian base image."""
        pip_conf, local_indexes = host_pip_settings()
        (self.root / "pip.conf").write_text(pip_conf)
        volumes = [
            "/etc/ssl/certs/ca-certificates.crt:/run/host-ca.crt:ro",
            f"{self.root / 'pip.conf'}:/etc/pip.conf:ro",
            *(f"{path}:{path}:ro" for path in local_indexes),
        ]
        self(
            "build",
            # The OCI format has no HEALTHCHECK; the Docker format keeps it.
            "--format=docker",
            # Build steps need no network of their own: no bridge to clean up.
            "--network=host",
            "--build-arg",
            f"PYTHON_IMAGE={BASE_IMAGE}",
            *(f"--volume={v}" for v in volumes),
            "--tag",
            tag,
            project_dir,
            timeout=600,
        )

    # --- teardown ---------------------------------------------------------
    def remove_all(self) -> None:
        """Remove every container, pod, volume and network (images stay)."""
        self.attempt("rm", "--all", "--force", "--time", "2")
        self.attempt("pod", "rm", "--all", "--force")
        self.attempt("volume", "prune", "--force")
        for network in self.attempt("network", "ls", "--format", "{{.Name}}").stdout.split():
            if network != "podman":
                self.attempt("network", "rm", "--force", network)
                # CNI's address allocator keeps its state outside podman's storage.
                attempt(["rm", "-rf", Path("/var/lib/cni/networks") / network])

    def close(self) -> None:
        """Remove everything, the images and the directory, and undo the firewall rules."""
        try:
            self.remove_all()
            self.attempt("system", "reset", "--force")
        finally:
            # overlay mounts left behind would make rm fail.
            attempt(["umount", "--recursive", "--lazy", self.root / "graph" / "overlay"])
            attempt(["rm", "-rf", self.root])
            self.firewall.restore()


class FirewallSnapshot:
    """The iptables rules and chains present before the tests.

    CNI's plugins add rules for each network and container and do not remove
    all of them (the DNS rule of a bridge, their own chains). `restore()`
    deletes whatever CNI added since the snapshot and nothing else.
    """

    TABLES = ("filter", "nat")

    def __init__(self):
        self.before = {table: set(self._rules(table)) for table in self.TABLES}

    @staticmethod
    def _rules(table: str) -> list[str]:
        return attempt(["iptables", "-t", table, "-S"]).stdout.splitlines()

    def restore(self) -> None:
        for table in self.TABLES:
            added = [
                rule
                for rule in self._rules(table)
                if rule not in self.before[table] and "CNI" in rule.upper()
            ]
            for rule in added:
                if rule.startswith("-A "):
                    attempt(["iptables", "-t", table, "-D", *shlex.split(rule)[1:]])
            for rule in added:
                if rule.startswith("-N "):
                    chain = rule.split()[1]
                    attempt(["iptables", "-t", table, "-F", chain])
                    attempt(["iptables", "-t", table, "-X", chain])


def wait_until(predicate, *, timeout: float, interval: float = 0.5, message: str = "condition"):
    """Call predicate until it returns a truthy value; fail after timeout seconds."""
    deadline = time.monotonic() + timeout
    last_error = None
    while time.monotonic() < deadline:
        try:
            value = predicate()
        except Exception as error:
            last_error = error
        else:
            if value:
                return value
        time.sleep(interval)
    raise AssertionError(
        f"timed out after {timeout} s waiting for {message}; last error: {last_error!r}"
    )


class Stack:
    """One compose project, run by podman-compose inside a `Podman` sandbox."""

    def __init__(self, podman: Podman, project_dir: Path, name: str, env: dict[str, str]):
        self.podman = podman
        self.project_dir = project_dir
        self.name = name
        self.env = env
        self.compose_file = yaml.safe_load((project_dir / "compose.yaml").read_text())
        # podman 4.3 cannot start a container whose stopped dependency depends on a running
        # one (`--requires`, which podman-compose uses for depends_on; fixed in podman 5.6), and
        # podman-compose ignores `condition: service_healthy` anyway. So the stack runs without
        # depends_on, and `up()` follows compose.yaml's conditions itself.
        override = project_dir.parent / f"{name}.override.yaml"
        override.write_text(
            "services:\n"
            + "".join(
                f"  {service}:\n    depends_on: !reset {{}}\n"
                for service, spec in self.compose_file["services"].items()
                if "depends_on" in spec
            )
        )
        self.files = ["--file", str(project_dir / "compose.yaml"), "--file", str(override)]

    def services(self) -> dict[str, dict]:
        """compose.yaml's services that run: those of no profile, and those of the profiles
        COMPOSE_PROFILES (in .env or the environment) turns on, as podman-compose reads them."""
        names = self.podman.compose(
            self.project_dir, self.name, *self.files, "config", "--services", variables=self.env
        ).stdout.split()
        return {name: self.compose_file["services"][name] for name in names}

    def up(self, scale: dict[str, int]) -> None:
        """`docker compose up --wait`: start the services one dependency level at a time, each
        once what it depends on is healthy, or has completed, as compose.yaml asks."""
        services = self.services()
        awaited = defaultdict(set)  # service -> the conditions other services wait for
        for spec in services.values():
            for dependency, requirement in spec.get("depends_on", {}).items():
                awaited[dependency].add(requirement["condition"])
        started: set[str] = set()
        while len(started) < len(services):
            level = [
                name
                for name, spec in services.items()
                if name not in started and set(spec.get("depends_on", {})) <= started
            ]
            assert level, "dependency cycle"
            scaling = [f"--scale={name}={n}" for name, n in scale.items() if name in level]
            self.compose("up", "--detach", *scaling, *level)
            for name in level:
                for container in self.containers(name):
                    if "service_healthy" in awaited[name]:
                        wait_until(
                            lambda c=container: self.healthy(c),
                            timeout=90,
                            message=f"{container} to be healthy",
                        )
                    if "service_completed_successfully" in awaited[name]:
                        wait_until(
                            lambda c=container: self.completed(c),
                            timeout=90,
                            message=f"{container} to complete",
                        )
            started.update(level)

    def compose(self, *args: str) -> None:
        self.podman.compose(self.project_dir, self.name, *self.files, *args, variables=self.env)

    def containers(self, service: str) -> list[str]:
        """Names of the service's containers (all replicas), running or not."""
        result = self.podman(
            "ps",
            "--all",
            "--filter",
            f"label=io.podman.compose.project={self.name}",
            "--filter",
            f"label=com.docker.compose.service={service}",
            "--format",
            "{{.Names}}",
        )
        return sorted(result.stdout.split())

    def exit_code(self, container: str) -> int | None:
        """The container's exit code once it has exited, else None."""
        status, code = self.podman(
            "inspect", "--format", "{{.State.Status}} {{.State.ExitCode}}", container
        ).stdout.split()
        return int(code) if status in ("exited", "stopped") else None

    def completed(self, container: str) -> bool:
        code = self.exit_code(container)
        assert code in (None, 0), f"{container} exited with {code}"
        return code == 0

    def healthy(self, container: str) -> bool:
        # Without systemd podman runs no healthcheck timers: run the check by hand.
        return self.podman.attempt("healthcheck", "run", container, timeout=30).returncode == 0

    def exec(self, container: str, *command: str, env: dict[str, str] | None = None) -> str:
        env_args = [f"--env={key}={value}" for key, value in (env or {}).items()]
        return self.podman("exec", *env_args, container, *command, timeout=120).stdout

    def logs(self) -> str:
        """Every container's log, for failure reports."""
        names = self.podman(
            "ps",
            "--all",
            "--filter",
            f"label=io.podman.compose.project={self.name}",
            "--format",
            "{{.Names}}",
        ).stdout.split()
        parts = []
        for name in names:
            result = self.podman.attempt("logs", "--tail", "40", name)
            parts.append(f"--- {name} ---\n{result.stdout}{result.stderr}")
        return "\n".join(parts)
