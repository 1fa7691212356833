"""One system under test at one stream count: start its server, warm it up, open N streams,
publish (paced, then in a burst), sample the server all along, close, stop."""

from __future__ import annotations

import math
import os
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from .client import ClientPool, stream_request
from .launcher import Service, start_daphne, tail
from .procfs import ProcessSample, connections_on, connections_to, cpu_seconds
from .project import Project, Publisher, hub_metrics, timed
from .systems import STREAM_PATH, System


@dataclass
class Phase:
    """One publishing phase: events published, deliveries to every stream, what it cost."""

    events: int
    delivered: int
    expected: int
    seconds: float
    latency_ms: dict[str, float]
    deliveries_per_second: float
    server_cpu_us_per_delivery: float
    client_cpu_us_per_delivery: float
    publish_call_ms_p50: float


@dataclass
class Measurement:
    system: str
    streams: int
    skipped: str | None = None  # why this N was not run or not finished
    accepted: int = 0
    accept_seconds: float | None = None
    server_cpu_ms_per_accept: float | None = None
    idle: ProcessSample | None = None
    open: ProcessSample | None = None
    closed: ProcessSample | None = None
    redis_connections: tuple[int | None, int | None, int | None] = (None, None, None)
    hub_open: dict[str, int] | None = None
    paced: Phase | None = None
    burst: Phase | None = None
    close_seconds: float | None = None
    load_average: tuple[float, float] = (0.0, 0.0)
    problems: list[str] = field(default_factory=list)

    @property
    def rss_kb_per_stream(self) -> float | None:
        if self.idle is None or self.open is None or not self.accepted:
            return None
        return (self.open.rss_kb - self.idle.rss_kb) / self.accepted

    @property
    def fds_per_stream(self) -> float | None:
        if self.idle is None or self.open is None or not self.accepted:
            return None
        return (self.open.fds - self.idle.fds) / self.accepted

    @property
    def delivered_everything(self) -> bool:
        phases = [phase for phase in (self.paced, self.burst) if phase is not None]
        return bool(phases) and not self.skipped and not self.problems


@dataclass(frozen=True)
class Plan:
    events: int
    burst_events: int
    rate: float
    payload_bytes: int
    connect_concurrency: int
    phase_timeout: float


def percentiles(values: array) -> dict[str, float]:
    if not values:
        return {}
    ordered = sorted(values)

    def rank(fraction: float) -> float:
        return ordered[min(len(ordered) - 1, max(0, math.ceil(fraction * len(ordered)) - 1))]

    return {
        "p50": rank(0.50) * 1000,
        "p95": rank(0.95) * 1000,
        "p99": rank(0.99) * 1000,
        "max": ordered[-1] * 1000,
    }


class Scenario:
    def __init__(
        self,
        system: System,
        streams: int,
        plan: Plan,
        project: Project,
        pool: ClientPool,
        publisher: Callable[[Service], Publisher],
        redis_port: int | None,
        work_dir: Path,
        progress: Callable[[str], None],
    ) -> None:
        self.system, self.streams, self.plan = system, streams, plan
        self.project, self.pool, self.redis_port = project, pool, redis_port
        self.make_publisher, self.work_dir, self.progress = publisher, work_dir, progress
        self.next_seq = 0
        self.server: Service | None = None

    # Readings of the server
    def sample(self) -> ProcessSample:
        assert self.server is not None
        return ProcessSample.of(self.server.pid)

    def redis_connections(self) -> int | None:
        assert self.server is not None
        if self.redis_port is None:
            return None
        return connections_to(self.server.pid, self.redis_port)

    def open_at_server(self) -> int:
        """Streams still open, as the server sees them: the project's hub count (a stream may
        outlive its socket there; the HTTP publisher's connection is no stream), else the
        server's connections."""
        assert self.server is not None
        if self.system.uses_project_broker:
            return hub_metrics(self.project, self.server.port)["streams"]
        return connections_on(self.server.pid, self.server.port)

    def wait_until_released(self) -> float:
        started = time.perf_counter()
        deadline = time.monotonic() + self.plan.phase_timeout
        while self.open_at_server() and time.monotonic() < deadline:
            time.sleep(0.1)
        return time.perf_counter() - started

    def requests(self, count: int) -> list[bytes]:
        assert self.server is not None
        tokens = self.project.tokens if self.system.authenticated else [None]
        return [
            stream_request(self.server.port, STREAM_PATH, tokens[index % len(tokens)])
            for index in range(count)
        ]

    # Phases
    def fanout(self, publish: Publisher, events: int, rate: float | None) -> Phase:
        plan, pool, server = self.plan, self.pool, self.server
        assert server is not None
        first_seq = self.next_seq
        expected = pool.start_phase(first_seq, events)
        payload = "x" * max(plan.payload_bytes - 24, 0)
        published: dict[int, float] = {}
        call_times = []
        server_cpu = cpu_seconds(server.pid)
        started = time.perf_counter()
        for index in range(events):
            if rate is not None:
                delay = started + index / rate - time.perf_counter()
                if delay > 0:
                    time.sleep(delay)
            seq = first_seq + index
            published[seq], took = timed(publish, seq, payload)
            call_times.append(took)
        self.next_seq += events
        pool.wait_phase(plan.phase_timeout)
        server_cpu = cpu_seconds(server.pid) - server_cpu
        receipts = pool.collect(published)
        delivered = len(receipts.latencies)
        ended = receipts.last_receipt if delivered else time.perf_counter()
        call_times.sort()
        phase = Phase(
            events=events,
            delivered=delivered,
            expected=expected,
            seconds=ended - started,
            latency_ms=percentiles(receipts.latencies),
            deliveries_per_second=delivered / max(ended - started, 1e-9),
            server_cpu_us_per_delivery=server_cpu / max(delivered, 1) * 1e6,
            client_cpu_us_per_delivery=receipts.client_cpu_seconds / max(delivered, 1) * 1e6,
            publish_call_ms_p50=call_times[len(call_times) // 2] * 1000,
        )
        if delivered != expected:
            self.result.problems.append(f"{expected - delivered} of {expected} deliveries missing")
        if receipts.unexpected:
            self.result.problems.append(
                f"{receipts.unexpected} deliveries duplicated, out of order or late"
            )
        if receipts.dropped_streams:
            self.result.problems.append(f"{receipts.dropped_streams} streams closed by the server")
        return phase

    def warm_up(self, publish: Publisher) -> None:
        """Load the code paths once, so that the idle sample includes them and the streams don't;
        and check that the system delivers at all."""
        assert self.server is not None
        accepted, errors = self.pool.open(
            self.server.port, self.requests(1), 1, self.plan.phase_timeout
        )
        if not accepted:
            raise RuntimeError(f"the warm-up stream was refused: {errors}")
        self.fanout(publish, 1, None)
        if self.result.problems:
            raise RuntimeError(f"the warm-up event was not delivered: {self.result.problems}")
        self.pool.close_streams(self.plan.phase_timeout)
        self.wait_until_released()
        time.sleep(0.5)

    def run(self) -> Measurement:
        self.result = result = Measurement(self.system.name, self.streams)
        result.load_average = (os.getloadavg()[0], 0.0)
        env = {**self.project.env, "DJANGO_SETTINGS_MODULE": self.system.settings_module}
        self.progress(f"{self.system.name}, {self.streams:,} streams: starting Daphne")
        self.server = start_daphne(self.system.name, self.system.application, env, self.work_dir)
        try:
            self._measure(self.make_publisher(self.server))
        except Exception as error:  # reported in the table: the other systems still run
            result.skipped = f"failed: {error}"
            self.progress(f"  {result.skipped}\n  Daphne log:\n{tail(self.server.log)}")
        finally:
            self.pool.close_streams(self.plan.phase_timeout)
            self.server.stop()
        result.load_average = (result.load_average[0], os.getloadavg()[0])
        return result

    def _measure(self, publish: Publisher) -> None:
        result, plan, server = self.result, self.plan, self.server
        assert server is not None
        self.warm_up(publish)
        result.idle = self.sample()
        redis_idle = self.redis_connections()

        self.progress(f"  opening {self.streams:,} streams")
        started, cpu = time.perf_counter(), cpu_seconds(server.pid)
        result.accepted, errors = self.pool.open(
            server.port, self.requests(self.streams), plan.connect_concurrency, plan.phase_timeout
        )
        result.accept_seconds = time.perf_counter() - started
        result.server_cpu_ms_per_accept = (cpu_seconds(server.pid) - cpu) / self.streams * 1000
        if result.accepted < self.streams:
            result.problems.append(
                f"{self.streams - result.accepted} of {self.streams} streams not accepted: "
                + "; ".join(errors)
            )
        time.sleep(1.0)  # let the server settle before sampling it
        result.open = self.sample()
        redis_open = self.redis_connections()
        if self.system.uses_project_broker:
            result.hub_open = hub_metrics(self.project, server.port)

        self.progress(f"  paced: {plan.events} events at {plan.rate:g}/s")
        result.paced = self.fanout(publish, plan.events, plan.rate)
        if plan.burst_events:
            self.progress(f"  burst: {plan.burst_events} events at once")
            result.burst = self.fanout(publish, plan.burst_events, None)

        self.progress("  closing the streams")
        closing = time.perf_counter()
        self.pool.close_streams(plan.phase_timeout)
        self.wait_until_released()
        result.close_seconds = time.perf_counter() - closing
        time.sleep(1.0)
        result.closed = self.sample()
        result.redis_connections = (redis_idle, redis_open, self.redis_connections())
