"""What this process's hubs hold right now, read on demand: for Prometheus at scrape time
(``HUB_STATE``, registered by the project's ``observability`` app), for the staff statistics
endpoint (``snapshot()``) and for ``/readyz`` (``feed_problems()``).

Only reads the hubs' counters, from whatever thread asks: nothing here costs anything between
two reads.
"""

import asyncio
import threading
from collections.abc import Iterator

from prometheus_client import REGISTRY
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from ..telemetry.malformed import malformed_total
from .hub import running_hubs


def feed_problems() -> list[str]:
    """Why this process's live subscriptions cannot deliver now (none: they can, or there are
    none yet)."""
    return [problem for _, hub in running_hubs() if (problem := hub.problem())]


def snapshot() -> dict[str, object]:
    """Open streams, subscribed channels, asyncio tasks, OS threads, malformed broker messages
    skipped since the process started, and what keeps its feed down (or None)."""
    hubs = running_hubs()
    return {
        "streams": sum(hub.subscriber_count for _, hub in hubs),
        "channels": sum(hub.channel_count for _, hub in hubs),
        "tasks": sum(len(asyncio.all_tasks(loop)) for loop, _ in hubs),
        "threads": threading.active_count(),
        "malformed": malformed_total(),
        "feed_problem": "; ".join(feed_problems()) or None,
    }


class HubStateCollector(Collector):
    """Open streams, subscribed channels and feed state of this process, read at scrape time."""

    def describe(self) -> Iterator[Metric]:
        # What collect() yields, without reading the hubs: the registry asks on registration.
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        hubs = [hub for _, hub in running_hubs()]
        streams, channels, connected = self._families()
        streams.add_metric([], sum(hub.subscriber_count for hub in hubs))
        channels.add_metric([], sum(hub.channel_count for hub in hubs))
        connected.add_metric([], 0 if feed_problems() else 1)
        yield from (streams, channels, connected)

    @staticmethod
    def _families() -> tuple[GaugeMetricFamily, GaugeMetricFamily, GaugeMetricFamily]:
        return (
            GaugeMetricFamily("events_streams_open", "Event streams open on this process."),
            GaugeMetricFamily(
                "events_channels_subscribed",
                "Broker channels this process's feed is subscribed to.",
            ),
            GaugeMetricFamily(
                "events_feed_connected",
                "1 when this process's broker feed is connected (or no stream has needed it "
                "yet), 0 while it is down: its streams get no live events.",
            ),
        )


HUB_STATE = HubStateCollector()
REGISTRY.register(HUB_STATE)
