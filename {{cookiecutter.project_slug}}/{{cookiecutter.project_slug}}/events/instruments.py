"""The engine's Prometheus metrics (docs/operations.md says what each one means).

Counters move where things happen, once per event or per stream, never once per client and
event: delivering one event to N clients is one ``inc(N)``. What is a state rather than a count
(open streams, subscribed channels, whether the feed is connected) is read from the hubs when
Prometheus scrapes, so it costs nothing in between.

Label values are bounded sets, never a user, a topic or an id.
"""

from collections.abc import Iterator

from prometheus_client import REGISTRY, Counter, Histogram, disable_created_metrics
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

# No "_created" series next to every counter: Prometheus does not need them, and they double the
# number of series to store.
disable_created_metrics()  # type: ignore[no-untyped-call]

PUBLISH_OUTCOMES = ("ok", "duplicate", "refused", "unavailable")
EVICTION_REASONS = ("slow", "lifetime", "revoked", "shutdown", "broker_unavailable", "error")
REFUSAL_STATUSES = ("400", "401", "403", "429", "503")

published = Counter(
    "events_published",
    "Publish attempts through this process (the API, publish() and the command), by outcome: "
    "ok, duplicate (an idempotency key seen before), refused (invalid, too large, conflicting "
    "key, over the rate), unavailable (the broker could not store it).",
    ["outcome"],
)
delivered = Counter(
    "events_delivered",
    "Live events handed to this process's open streams (one per event and recipient).",
)
replayed = Counter(
    "events_replayed", "Events sent from history to clients resuming with Last-Event-ID."
)
resets_sent = Counter(
    "events_resets_sent",
    "Reset events sent: a client's missed events were gone and it must reload its state.",
)
streams_opened = Counter("events_streams_opened", "Event streams accepted by this process.")
streams_refused = Counter(
    "events_streams_refused",
    "Stream requests answered with an error status instead of a stream.",
    ["status"],
)
clients_evicted = Counter(
    "events_clients_evicted",
    "Streams ended by the server, by reason: slow (fell behind), lifetime "
    "(EVENTS_STREAM_MAX_SECONDS), revoked (access ended), shutdown, broker_unavailable, error.",
    ["reason"],
)
malformed_skipped = Counter(
    "events_malformed_skipped", "Messages on the broker or in history that were skipped."
)
feed_reconnects = Counter(
    "events_feed_reconnects", "Times this process's broker feed reconnected after losing Redis."
)
delivery_latency = Histogram(
    "events_delivery_latency_seconds",
    "From an event's publication (its id's time, on the broker's clock) to this process writing "
    "it to its clients that keep up, or queueing it for those that are behind.",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
stream_duration = Histogram(
    "events_stream_duration_seconds",
    "How long event streams stayed open, observed when they end.",
    buckets=(1, 5, 15, 60, 300, 900, 1800, 3600, 7200, 21600),
)

# Every labelled series exists from the start (at 0): a rate() over a series that appears only
# with its first increment misses that increment, and a dashboard shows "no data" for "none".
for _outcome in PUBLISH_OUTCOMES:
    published.labels(_outcome)
for _reason in EVICTION_REASONS:
    clients_evicted.labels(_reason)
for _status in REFUSAL_STATUSES:
    streams_refused.labels(_status)


def count_refusal(status_code: int) -> None:
    status = str(status_code)
    # Any other status (a 500) is already counted by the error log; the label set stays bounded.
    if status in REFUSAL_STATUSES:
        streams_refused.labels(status).inc()


class HubStateCollector(Collector):
    """Open streams, subscribed channels and feed state of this process, read at scrape time."""

    def describe(self) -> Iterator[Metric]:
        # What collect() yields, without reading the hubs: the registry asks on registration.
        return iter(self._families())

    def collect(self) -> Iterator[Metric]:
        from .hub import running_hubs  # the hub counts with this module's counters

        hubs = [hub for _, hub in running_hubs()]
        streams, channels, connected = self._families()
        streams.add_metric([], sum(hub.subscriber_count for hub in hubs))
        channels.add_metric([], sum(hub.channel_count for hub in hubs))
        connected.add_metric([], 0 if any(hub.problem() for hub in hubs) else 1)
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
