"""The engine's Prometheus counters and histograms (docs/operations.md says what each one means).

Counters move where things happen, once per event or per stream, never once per client and
event: delivering one event to N clients is one ``inc(N)``. What is a state rather than a count
(open streams, subscribed channels, whether the feed is connected) is read from the hubs when
Prometheus scrapes (``delivery/stats.py``), so it costs nothing in between.

Label values are bounded sets, never a user, a topic or an id.
"""

from enum import StrEnum

from prometheus_client import Counter, Histogram, disable_created_metrics

# No "_created" series next to every counter: Prometheus does not need them, and they double the
# number of series to store.
disable_created_metrics()  # type: ignore[no-untyped-call]

PUBLISH_OUTCOMES = ("ok", "duplicate", "refused", "unavailable")


class EndReason(StrEnum):
    """Why a stream ended: its end log line's ``reason``, and the eviction metric's label."""

    CLIENT = "client"  # the client went away
    SLOW = "slow"  # it fell behind: too many events waiting, or its connection stopped draining
    LIFETIME = "lifetime"  # EVENTS_STREAM_MAX_SECONDS
    REVOKED = "revoked"  # its access was taken away
    SHUTDOWN = "shutdown"  # the server is stopping
    BROKER_UNAVAILABLE = "broker_unavailable"
    ERROR = "error"  # a bug: logged with its traceback


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
for _reason in EndReason:
    if _reason is not EndReason.CLIENT:  # the client's doing: no eviction
        clients_evicted.labels(_reason.value)
for _status in REFUSAL_STATUSES:
    streams_refused.labels(_status)


def count_refusal(status_code: int) -> None:
    status = str(status_code)
    # Any other status (a 500) is already counted by the error log; the label set stays bounded.
    if status in REFUSAL_STATUSES:
        streams_refused.labels(status).inc()
