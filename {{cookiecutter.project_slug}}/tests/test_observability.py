"""What operators see of a real Daphne process on Redis: its /metrics after traffic, who may read
them, and its JSON log lines (one when a stream opens, one when it ends, none per event)."""

import json
import re
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import promql_parser
import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from .services import Daphne, LiveProject, RedisServer, api, daphne_server, publish
from .sse import open_stream

METRICS_TOKEN = "scrape-" + "s" * 40
DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
# Labels that Prometheus adds to every scraped series.
TARGET_LABELS = {"job", "instance"}


@pytest.fixture(scope="module")
def server(
    live_project: LiveProject, redis_service: RedisServer, tmp_path_factory
) -> Iterator[Daphne]:
    with daphne_server(
        live_project,
        tmp_path_factory.mktemp("observed"),
        REDIS_URL=redis_service.url,
        EVENTS_REDIS_PREFIX="test-observability",
        LOG_FORMAT="json",
        METRICS_TOKEN=METRICS_TOKEN,
    ) as daphne:
        yield daphne


def scrape(server: Daphne, **headers: str) -> dict[str, float]:
    """Every sample of /metrics, by name and labels, e.g. ``events_published_total{outcome="ok"}``."""
    return scrape_url(f"{server.url}/metrics", **headers)


def scrape_url(url: str, **headers: str) -> dict[str, float]:
    response = httpx.get(url, headers={"Connection": "close", **headers}, timeout=10)
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    samples = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            samples[series(sample.name, **sample.labels)] = sample.value
    return samples


def series(name: str, **labels: str) -> str:
    """A sample's name as Prometheus writes it: ``name{label="value",...}``."""
    if not labels:
        return name
    pairs = ",".join(f'{key}="{value}"' for key, value in sorted(labels.items()))
    return name + "{" + pairs + "}"


def increase(before: dict[str, float], after: dict[str, float], name: str) -> float:
    return after.get(name, 0.0) - before.get(name, 0.0)


def json_lines(server: Daphne) -> list[dict]:
    lines = []
    for line in server.log().splitlines():
        if line.startswith("{"):
            lines.append(json.loads(line))
    return lines


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def test_metrics_count_what_happened(server: Daphne, live_project: LiveProject) -> None:
    before = scrape(server)
    with (
        api(server, live_project.tokens["staff"]) as staff,
        api(server, live_project.tokens["alice"]) as alice,
        api(server, live_project.tokens["bob"]) as bob,
        open_stream(alice) as alice_stream,
        open_stream(bob) as bob_stream,
    ):
        during = scrape(server)
        assert increase(before, during, "events_streams_open") == 2
        assert during["events_feed_connected"] == 1
        assert during["events_channels_subscribed"] >= 1
        ids = [publish(staff, "tick", n) for n in range(3)]
        assert [event.id for event in alice_stream.take(3)] == ids
        assert [event.id for event in bob_stream.take(3)] == ids
        # Refused publishes: an invalid type; a repeat of an idempotency key.
        assert staff.post("/api/events/", json={"type": "no spaces"}).status_code == 400
        for _ in range(2):
            once = staff.post(
                "/api/events/", json={"type": "once", "data": 1}, headers={"Idempotency-Key": "k1"}
            )
            assert once.status_code in (200, 201), once.text
        # Refused streams: no credentials, a bad Last-Event-ID, a topic for staff only.
        assert httpx.get(f"{server.url}/api/events/stream/").status_code == 401
        bad_id = alice.get("/api/events/stream/", headers={"Last-Event-ID": "x"})
        assert bad_id.status_code == 400
        assert alice.get("/api/events/stream/?topic=staff.audit").status_code == 403
        # A client resuming from the first event is sent the rest from history.
        with open_stream(alice, last_event_id=ids[0]) as resumed:
            assert [event.id for event in resumed.take(3)][:2] == ids[1:]  # then "once"
        # One resuming from an id history does not hold is sent a reset, and no event.
        with open_stream(alice, last_event_id="1-0") as reset:
            assert [event.event for event in reset.take(1)] == ["reset"]
    wait_for(lambda: scrape(server)["events_streams_open"] == before["events_streams_open"])
    after = scrape(server)

    assert increase(before, after, series("events_published_total", outcome="ok")) == 4
    assert increase(before, after, series("events_published_total", outcome="duplicate")) == 1
    assert increase(before, after, series("events_published_total", outcome="refused")) == 1
    # Live: three ticks and "once", each to the two streams (the resumed one read history).
    assert increase(before, after, "events_delivered_total") == 8
    # Sent from history: the two ticks after the first and "once"; the reset is not an event.
    assert increase(before, after, "events_replayed_total") == 3
    assert increase(before, after, "events_resets_sent_total") == 1
    for status in ("400", "401", "403"):
        assert increase(before, after, series("events_streams_refused_total", status=status)) == 1
    assert increase(before, after, "events_streams_opened_total") == 4
    assert increase(before, after, "events_stream_duration_seconds_count") == 4
    # Latency is observed once per event and process, whatever the number of recipients.
    assert increase(before, after, "events_delivery_latency_seconds_count") == 4
    # The clients left by themselves: no eviction.
    evictions = [name for name in after if name.startswith("events_clients_evicted_total")]
    assert sum(increase(before, after, name) for name in evictions) == 0


def test_metrics_are_for_the_scraper_only(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> None:
    """Off loopback (here: loopback not allowed), only the bearer token opens /metrics."""
    with daphne_server(
        live_project,
        tmp_path,
        METRICS_TOKEN=METRICS_TOKEN,
        METRICS_ALLOWED_NETWORKS="10.0.0.0/8",
    ) as elsewhere:
        url = f"{elsewhere.url}/metrics"
        assert httpx.get(url).status_code == 403
        assert httpx.get(url, headers={"Authorization": "Bearer wrong"}).status_code == 403
        # A signed-in staff user is not a scraper either.
        staff = {"Authorization": f"Token {live_project.tokens['staff']}"}
        assert httpx.get(url, headers=staff).status_code == 403
        samples = scrape(elsewhere, Authorization=f"Bearer {METRICS_TOKEN}")
        assert series("events_published_total", outcome="ok") in samples
    with daphne_server(live_project, tmp_path, METRICS_TOKEN="") as no_token:
        # No token configured: an empty bearer is not a match; loopback is allowed by default.
        assert scrape(no_token)


def test_evictions_are_counted_by_reason(
    live_project: LiveProject, redis_service: RedisServer, tmp_path: Path
) -> None:
    with daphne_server(
        live_project,
        tmp_path,
        REDIS_URL=redis_service.url,
        EVENTS_REDIS_PREFIX="test-evictions",
        EVENTS_STREAM_MAX_SECONDS="2",
        EVENTS_MAX_STREAMS_PER_USER="1",
    ) as short_lived:
        before = scrape(short_lived)
        with api(short_lived, live_project.tokens["alice"]) as alice, open_stream(alice) as stream:
            # A second stream of the same user, over the limit.
            assert alice.get("/api/events/stream/").status_code == 429
            assert list(stream.events()) == []  # it ends by itself, at its lifetime
        wait_for(lambda: scrape(short_lived)["events_streams_open"] == 0)
        after = scrape(short_lived)
        lifetime = series("events_clients_evicted_total", reason="lifetime")
        assert increase(before, after, lifetime) == 1
        assert increase(before, after, series("events_streams_refused_total", status="429")) == 1


def test_a_revoked_stream_is_counted(server: Daphne, live_project: LiveProject) -> None:
    token = live_project.create_token_user()
    before = scrape(server)
    with api(server, token) as client, open_stream(client) as stream:
        live_project.delete_token(
            token,
            REDIS_URL=server.env["REDIS_URL"],
            EVENTS_REDIS_PREFIX=server.env["EVENTS_REDIS_PREFIX"],
        )
        assert [event.event for event in stream.events()] == ["revoked"]
    wait_for(lambda: scrape(server)["events_streams_open"] == before["events_streams_open"])
    revoked = series("events_clients_evicted_total", reason="revoked")
    assert increase(before, scrape(server), revoked) == 1


def test_a_stream_logs_one_json_line_when_it_opens_and_one_when_it_ends(
    server: Daphne, live_project: LiveProject
) -> None:
    request_id = "req-" + "7" * 20
    with (
        api(server, live_project.tokens["staff"]) as staff,
        api(server, live_project.tokens["alice"]) as alice,
    ):
        alice.headers["X-Request-ID"] = request_id
        with open_stream(alice) as stream:
            for n in range(5):
                publish(staff, "logged", n)
            assert len(stream.take(5)) == 5
    alice_pk = live_project.tokens["alice_pk"]

    def request_lines() -> list[dict]:
        return [line for line in json_lines(server) if line.get("request_id") == request_id]

    wait_for(lambda: any(line.get("reason") for line in request_lines()))
    access = [line for line in request_lines() if line["logger"].endswith(".access_log")]
    opened, ended = [line for line in request_lines() if line not in access]  # none per event
    [request] = access  # the request's access line, with its answer
    assert (request["status"], request["client"]) == (200, "127.0.0.1")
    assert request["message"] == '127.0.0.1 "GET /api/events/stream/" 200'
    assert opened["level"] == "INFO"
    assert {"time", "logger", "message"} <= opened.keys()
    assert opened["user_id"] == ended["user_id"] == alice_pk
    assert opened["stream_id"] == ended["stream_id"]
    assert ended["reason"] == "client"
    assert ended["events_sent"] == 5
    assert ended["duration_seconds"] > 0
    # The publishes' own lines carry their event ids and the publisher.
    published = [line for line in json_lines(server) if "event_id" in line]
    assert published
    assert all(line["user_id"] == live_project.tokens["staff_pk"] for line in published)


def alert_rules() -> list[dict]:
    groups = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text())["groups"]
    return [rule for group in groups for rule in group["rules"]]


def dashboard_queries() -> list[str]:
    dashboard = json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())
    return [target["expr"] for panel in dashboard["panels"] for target in panel["targets"]]


def selectors(expression: str) -> Iterator[promql_parser.VectorSelector]:
    # Grafana's variables, as Grafana substitutes them before sending the query.
    expression = expression.replace("$__rate_interval", "1m").replace("$job", ".*")
    yield from _selectors(promql_parser.parse(expression))


def _selectors(node: object) -> Iterator[promql_parser.VectorSelector]:
    if isinstance(node, promql_parser.VectorSelector):
        yield node
        return
    for name in ("lhs", "rhs", "expr", "vector_selector", "param"):
        child = getattr(node, name, None)
        if child is not None:
            yield from _selectors(child)
    for child in getattr(node, "args", None) or ():
        yield from _selectors(child)


def test_alert_rules_are_complete() -> None:
    rules = alert_rules()
    assert rules
    for rule in rules:
        assert re.fullmatch(r"[A-Z][A-Za-z]+", rule["alert"]), rule
        assert rule["labels"]["severity"] in ("critical", "warning"), rule
        assert rule["annotations"]["summary"], rule
        assert list(selectors(rule["expr"])), rule  # parses, and reads at least one metric


def test_the_dashboard_and_the_alerts_use_only_metrics_a_process_exposes(server: Daphne) -> None:
    samples = scrape(server)
    values_by_label: dict[str, set[str]] = {}
    for key in samples:
        for label, value in re.findall(r'(\w+)="([^"]*)"', key):
            values_by_label.setdefault(label, set()).add(value)
    names = {key.partition("{")[0] for key in samples}
    expressions = [rule["expr"] for rule in alert_rules()] + dashboard_queries()
    for expression in expressions:
        for selector in selectors(expression):
            assert selector.name in names, (selector.name, expression)
            for matcher in selector.matchers.matchers:
                if matcher.name in TARGET_LABELS:
                    continue
                # Every value a matcher selects is one that a series has.
                wanted = matcher.value.split("|")
                assert set(wanted) <= values_by_label.get(matcher.name, set()), expression
