"""What Linux's /proc says about a server process: CPU, memory, threads, descriptors, sockets."""

from __future__ import annotations

import contextlib
import os
import resource
from dataclasses import dataclass
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")
TCP_ESTABLISHED = "01"


def proc_status(pid: int, name: str) -> int:
    """A number from /proc/<pid>/status, such as "Threads" or "VmRSS" (kB)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(name + ":"):
            return int(line.split()[1])
    raise KeyError(name)


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used (fields 14 and 15 of /proc/<pid>/stat)."""
    # The command name (field 2) may contain spaces: split after its closing parenthesis.
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def open_fds(pid: int) -> int:
    return len(os.listdir(f"/proc/{pid}/fd"))


@dataclass(frozen=True)
class TcpSocket:
    local_port: int
    remote_port: int
    established: bool


def tcp_sockets(pid: int) -> list[TcpSocket]:
    """Every TCP socket the process has open (matched by inode through /proc/<pid>/net/tcp)."""
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        with contextlib.suppress(OSError):
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("tcp", "tcp6"):
        path = Path(f"/proc/{pid}/net/{table}")
        if not path.exists():
            continue
        for line in path.read_text().splitlines()[1:]:
            columns = line.split()
            if columns[9] in inodes:
                found.append(
                    TcpSocket(
                        local_port=int(columns[1].rpartition(":")[2], 16),
                        remote_port=int(columns[2].rpartition(":")[2], 16),
                        established=columns[3] == TCP_ESTABLISHED,
                    )
                )
    return found


def connections_to(pid: int, remote_port: int) -> int:
    """Established TCP connections the process holds to ``remote_port`` (e.g. Redis's)."""
    return sum(1 for s in tcp_sockets(pid) if s.established and s.remote_port == remote_port)


def connections_on(pid: int, local_port: int) -> int:
    """Established TCP connections the process serves on ``local_port``: its open streams,
    whatever the server under test counts itself."""
    return sum(1 for s in tcp_sockets(pid) if s.established and s.local_port == local_port)


@dataclass
class ProcessSample:
    threads: int
    rss_kb: int
    fds: int
    cpu_seconds: float

    @classmethod
    def of(cls, pid: int) -> ProcessSample:
        return cls(
            threads=proc_status(pid, "Threads"),
            rss_kb=proc_status(pid, "VmRSS"),
            fds=open_fds(pid),
            cpu_seconds=cpu_seconds(pid),
        )
