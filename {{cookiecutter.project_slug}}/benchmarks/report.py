"""The report: one table per stream count, the systems side by side with their ratio to this
project, and the issue's targets; then a summary across stream counts. JSON on request."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

from .scenario import Measurement
from .systems import BASELINE

# label, figure of a measurement, comparable number (for ratios), target: (text, met?)
Figure = Callable[[Measurement], tuple[str, float | None]]


@dataclasses.dataclass(frozen=True)
class Target:
    text: str
    met: Callable[[float], bool]


def _num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def _paced(key: str, digits: int = 1) -> Figure:
    def figure(m: Measurement) -> tuple[str, float | None]:
        value = None if m.paced is None else getattr(m.paced, key)
        return _num(value, digits), value

    return figure


def _latency(phase: str, key: str) -> Figure:
    def figure(m: Measurement) -> tuple[str, float | None]:
        found = getattr(m, phase)
        value = None if found is None else found.latency_ms.get(key)
        return _num(value), value

    return figure


def _burst_cpu(m: Measurement) -> tuple[str, float | None]:
    value = None if m.burst is None else m.burst.server_cpu_us_per_delivery
    return _num(value), value


def _delivered(m: Measurement) -> tuple[str, float | None]:
    phases = [phase for phase in (m.paced, m.burst) if phase is not None]
    if not phases:
        return "-", None
    delivered = sum(phase.delivered for phase in phases)
    expected = sum(phase.expected for phase in phases)
    verdict = "yes" if m.delivered_everything else "NO"
    return f"{verdict} ({delivered:,}/{expected:,})", None


def _accept_cpu(m: Measurement) -> tuple[str, float | None]:
    return _num(m.server_cpu_ms_per_accept, 2), m.server_cpu_ms_per_accept


def _accept_time(m: Measurement) -> tuple[str, float | None]:
    return _num(m.accept_seconds, 2), m.accept_seconds


def _rss(m: Measurement) -> tuple[str, float | None]:
    return _num(m.rss_kb_per_stream), m.rss_kb_per_stream


def _threads(m: Measurement) -> tuple[str, float | None]:
    if m.idle is None or m.open is None:
        return "-", None
    return f"{m.idle.threads} -> {m.open.threads}", float(m.open.threads)


def _redis(m: Measurement) -> tuple[str, float | None]:
    idle, opened, _ = m.redis_connections
    if idle is None or opened is None:
        return "-", None
    return f"{idle} -> {opened}", float(opened)


def _fds(m: Measurement) -> tuple[str, float | None]:
    return _num(m.fds_per_stream, 2), m.fds_per_stream


def _hub(m: Measurement) -> tuple[str, float | None]:
    if m.hub_open is None:
        return "n/a", None
    return "/".join(str(m.hub_open.get(key, "?")) for key in ("streams", "channels", "tasks")), None


def _after_close(m: Measurement) -> tuple[str, float | None]:
    if m.closed is None:
        return "-", None
    redis = m.redis_connections[2]
    return (
        f"{m.closed.threads}/{m.closed.rss_kb / 1024:.0f}/{'-' if redis is None else redis}",
        None,
    )


def _release(m: Measurement) -> tuple[str, float | None]:
    return _num(m.close_seconds, 2), None


def _load(m: Measurement) -> tuple[str, float | None]:
    return "{:.1f} -> {:.1f}".format(*m.load_average), None


ROWS: list[tuple[str, Figure, Target | None]] = [
    (
        "server CPU per delivery, paced (us)",
        _paced("server_cpu_us_per_delivery"),
        Target("<= 20", lambda value: value <= 20),
    ),
    ("latency p99, paced (ms)", _latency("paced", "p99"), Target("< 1,000", lambda v: v < 1000)),
    ("all delivered", _delivered, None),
    (
        "server CPU per accepted stream (ms)",
        _accept_cpu,
        Target("<= 0.5", lambda value: value <= 0.5),
    ),
    ("time to accept all streams (s)", _accept_time, None),
    ("server RSS per open stream (KB)", _rss, Target("<= 20", lambda value: value <= 20)),
    ("server threads idle -> open", _threads, None),
    ("server Redis connections idle -> open", _redis, None),
    ("latency p50, paced (ms)", _latency("paced", "p50"), None),
    ("latency max, paced (ms)", _latency("paced", "max"), None),
    ("deliveries per second, paced", _paced("deliveries_per_second", 0), None),
    ("client CPU per delivery, paced (us)", _paced("client_cpu_us_per_delivery"), None),
    ("publish call p50, paced (ms)", _paced("publish_call_ms_p50", 2), None),
    ("burst: server CPU per delivery (us)", _burst_cpu, None),
    ("burst: latency p99 (ms)", _latency("burst", "p99"), None),
    ("server open files per stream", _fds, None),
    ("hub streams/channels/tasks (open)", _hub, None),
    ("time to release all streams (s)", _release, None),
    ("after close: threads/RSS MB/Redis", _after_close, None),
    ("machine load average, start -> end", _load, None),
]
REQUIRED_ROWS = 8  # the figures; the rest are details


def _align(table: list[list[str]]) -> list[str]:
    widths = [max(len(line[column]) for line in table) for column in range(len(table[0]))]
    lines = [
        "  ".join(
            cell.ljust(widths[column]) if column == 0 else cell.rjust(widths[column])
            for column, cell in enumerate(line)
        ).rstrip()
        for line in table
    ]
    lines.insert(1, "-" * max(map(len, lines)))
    return lines


def render_streams_table(streams: int, measurements: list[Measurement], rate: float) -> str:
    names = [m.system for m in measurements]
    base = next((m for m in measurements if m.system == BASELINE and not m.skipped), None)
    others = [name for name in names if name != BASELINE] if base is not None else []
    header = [f"{streams:,} streams, {rate:g} events/s", *names]
    header += [f"{name}/{BASELINE}" for name in others]
    header += [f"target ({BASELINE})"] if base is not None else []
    table = [header]
    for index, (label, figure, target) in enumerate(ROWS):
        if index == REQUIRED_ROWS:
            table.append(["details", *[""] * (len(header) - 1)])
        cells = [
            figure(m) if not m.skipped or m.accepted else ("not run", None) for m in measurements
        ]
        line = [label, *(text for text, _ in cells)]
        if base is not None:
            base_value = figure(base)[1]
            for name in others:
                value = cells[names.index(name)][1]
                line.append(
                    f"{value / base_value:.1f}x" if value is not None and base_value else ""
                )
            if target is not None and base_value is not None:
                line.append(f"{target.text}: {'met' if target.met(base_value) else 'MISSED'}")
            else:
                line.append("")
        table.append(line)
    notes = [
        f"{m.system}: {m.skipped}" if m.skipped else f"{m.system}: PROBLEM: {problem}"
        for m in measurements
        for problem in (m.problems or [""])
        if m.skipped or problem
    ]
    return "\n".join(_align(table) + notes)


def render_summary(by_streams: dict[int, list[Measurement]]) -> str:
    """One line per system and stream count: the issue's figures only."""
    table = [
        [
            "system",
            "streams",
            "CPU/delivery us",
            "p99 ms",
            "all delivered",
            "CPU/accept ms",
            "accept s",
            "RSS/stream KB",
            "threads",
            "Redis conns",
        ]
    ]
    for streams, measurements in by_streams.items():
        for m in measurements:
            if m.skipped and not m.accepted:
                table.append([m.system, f"{streams:,}", "not run", *[""] * 7])
                continue
            table.append(
                [
                    m.system,
                    f"{streams:,}",
                    *(figure(m)[0].split(" (")[0] for _, figure, _ in ROWS[:REQUIRED_ROWS]),
                ]
            )
    return "\n".join(_align(table))


def render(
    environment: dict[str, Any], by_streams: dict[int, list[Measurement]], rate: float
) -> str:
    host = environment["machine"]
    lines = [
        "Event streams on one Daphne process: this project and its baselines, in one run",
        f"{environment['date']}; {host['cpus']} CPUs ({host['cpu_model'] or 'unknown model'}), "
        f"kernel {host['kernel']}, load average before: {host['load_average'][0]}",
        ", ".join(f"{name} {version}" for name, version in environment["versions"].items()),
        f"broker: {environment['broker']}; events published via {environment['publish_via']}; "
        f"{environment['users']} users; client: {environment['workers']} worker processes",
        *(f"  {name}: {text}" for name, text in environment["systems"].items()),
        "",
    ]
    for streams, measurements in by_streams.items():
        lines += [render_streams_table(streams, measurements, rate), ""]
    if len(by_streams) > 1:
        lines += ["Summary", render_summary(by_streams), ""]
    return "\n".join(lines).rstrip() + "\n"


def as_json(value: Any) -> Any:
    if isinstance(value, Measurement):
        data = as_json(dataclasses.asdict(value))
        data.update(
            rss_kb_per_stream=value.rss_kb_per_stream,
            fds_per_stream=value.fds_per_stream,
            delivered_everything=value.delivered_everything,
        )
        return data
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return as_json(dataclasses.asdict(value))
    if isinstance(value, dict):
        return {str(key): as_json(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [as_json(item) for item in value]
    return value
