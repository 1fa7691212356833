"""Reconnecting clients: exact replay after Last-Event-ID, and a reset when history is gone."""

import threading
import time

import pytest

from .services import Daphne, LiveProject, api, daphne_server, publish
from .sse import EventStream, open_stream

pytestmark = pytest.mark.timeout(90)

EVENT_COUNT = 150


def test_reconnects_miss_nothing_and_repeat_nothing_while_events_flow(
    server: Daphne, live_project: LiveProject
) -> None:
    """A client drops twice mid-flow and resumes, once by header and once by query parameter."""
    with (
        api(server, live_project.tokens["staff"]) as publisher,
        api(server, live_project.tokens["alice"]) as alice,
    ):
        with open_stream(alice) as stream:

            def publish_ticks() -> None:
                for n in range(EVENT_COUNT):
                    publish(publisher, "tick", n)
                    time.sleep(0.002)

            flow = threading.Thread(target=publish_ticks)
            flow.start()
            received = stream.take(30)
        time.sleep(0.2)  # events keep flowing while the client is away
        with open_stream(alice, last_event_id=received[-1].id) as stream:
            received += stream.take(40)
        time.sleep(0.2)
        resume = alice.stream(
            "GET",
            "/api/events/stream/",
            params={"last_event_id": received[-1].id},
            headers={"Accept": "text/event-stream"},
        )
        with resume as response:
            remaining = EVENT_COUNT - len(received)
            received += EventStream(response).take(remaining)
        flow.join()
    assert [m.data for m in received] == [str(n) for n in range(EVENT_COUNT)]
    assert len({m.id for m in received}) == EVENT_COUNT


def test_replay_shows_only_what_the_client_may_see(
    server: Daphne, live_project: LiveProject
) -> None:
    tokens = live_project.tokens
    with api(server, tokens["staff"]) as publisher, api(server, tokens["alice"]) as alice:
        start = publish(publisher, "start")
        publish(publisher, "private", "for bob", user=tokens["bob_pk"])
        publish(publisher, "topic", "sports", topic="sports")
        publish(publisher, "topic", "news", topic="news")
        mine = publish(publisher, "private", "for alice", user=tokens["alice_pk"])
        with open_stream(alice, topics=("news",), last_event_id=start) as stream:
            replayed = stream.take(2)
    assert [(m.event, m.data) for m in replayed] == [
        ("topic", '"news"'),
        ("private", '"for alice"'),
    ]
    assert replayed[-1].id == mine


def test_unknown_or_trimmed_id_gets_a_reset_then_live_events(
    live_project: LiveProject, broker_settings: dict, tmp_path
) -> None:
    with (
        daphne_server(
            live_project, tmp_path, EVENTS_HISTORY_LENGTH="10", **broker_settings
        ) as daphne,
        api(daphne, live_project.tokens["staff"]) as publisher,
        api(daphne, live_project.tokens["alice"]) as alice,
    ):
        oldest = publish(publisher, "old")
        # Redis trims capped streams by whole nodes of 100 entries: go well past one node.
        for n in range(250):
            newest = publish(publisher, "filler", n)
        for last_event_id in (oldest, "1-0"):
            with open_stream(alice, last_event_id=last_event_id) as stream:
                [reset] = stream.take(1)
                new = publish(publisher, "after-reset")
                [live] = stream.take(1)
            # The reset moves the client's Last-Event-ID to the newest event in history.
            assert (reset.event, reset.id) == ("reset", newest)
            assert (live.event, live.id) == ("after-reset", new)
            newest = new
        with open_stream(alice, last_event_id=newest) as stream:
            resumed = publish(publisher, "resumed")
            assert [m.id for m in stream.take(1)] == [resumed]
