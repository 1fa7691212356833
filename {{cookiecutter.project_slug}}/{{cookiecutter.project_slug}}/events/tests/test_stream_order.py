"""The order of a stream's first bytes, checked inside the process (too fast to race over HTTP)."""

import asyncio
import re
from typing import NoReturn

import pytest
from django.test import override_settings

from .. import apublish
from ..broker import get_broker
from ..conf import event_settings
from ..delivery.hub import get_hub
from ..delivery.stream import EventStream


def test_nothing_is_sent_before_the_client_is_subscribed_and_closing_unsubscribes() -> None:
    """Daphne sends the headers with the first chunk: a browser's "open" must mean subscribed."""

    async def scenario() -> tuple[bytes, int, int]:
        stream = aiter(EventStream(frozenset({"broadcast"}), None, event_settings()))
        first_chunk = await anext(stream)
        subscribed_then = get_hub().subscriber_count
        await stream.aclose()  # what a client disconnect does
        return first_chunk, subscribed_then, get_hub().subscriber_count

    with override_settings(REDIS_URL=""):
        first_chunk, subscribed_then, subscribed_after = asyncio.run(scenario())
    # Where it starts (an empty history's oldest) comes with it: see the test below.
    assert first_chunk == b"retry: 3000\n\nid: 0-0\n\n: connected\n\n"
    assert (subscribed_then, subscribed_after) == (1, 0)


def test_an_unexpected_error_mid_stream_ends_it_with_a_comment_and_a_log_line(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Whatever fails once the response has started (here: a bug in reading history), the client
    learns that its stream ended and the log says why; the failure never escapes to the server."""

    def broken_history(partition: int, event_id: str, channels: object = None) -> NoReturn:
        raise RuntimeError("a bug in reading history")

    async def scenario() -> list[bytes]:
        monkeypatch.setattr(get_broker(), "history_after", broken_history)
        stream = EventStream(frozenset({"broadcast"}), "1-0", event_settings())
        return [chunk async for chunk in stream]

    with override_settings(REDIS_URL=""):
        chunks = asyncio.run(scenario())
    assert chunks == [b": server error, reconnect\n\n"]
    assert "Stream ended by an error" in caplog.text
    assert "a bug in reading history" in caplog.text


@pytest.mark.parametrize("already_read", [False, True], ids=["new channel", "channel already read"])
@pytest.mark.parametrize("broker", ["memory", "redis"])
def test_a_stream_that_ends_before_any_event_resumes_from_where_it_joined(
    broker: str, already_read: bool, request: pytest.FixtureRequest
) -> None:
    """A client whose stream ends before any event reached it (a quiet topic, a network drop)
    reconnects with the id it was given on connecting: it gets what was published meanwhile,
    and nothing from before it came, whether it is the first in its process to read its channels
    or joins another stream's. Without that id, EventSource reconnects without Last-Event-ID,
    and what is published while it reconnects is lost to it."""
    url = "" if broker == "memory" else request.getfixturevalue("redis_url")

    async def scenario() -> list[bytes]:
        other = aiter(EventStream(frozenset({"broadcast"}), None, event_settings()))
        if already_read:  # the process reads the channel from before "before" on
            await anext(other)
        await apublish("before", 1)
        if already_read:
            while b"event: before" not in await asyncio.wait_for(anext(other), 10):
                pass  # the process has seen it: the channel is read past it
        quiet = aiter(EventStream(frozenset({"broadcast"}), None, event_settings()))
        first_chunk = await anext(quiet)
        await quiet.aclose()
        await apublish("meanwhile", 2)
        joined = re.search(rb"\nid: (\S+)\n", first_chunk)
        assert joined is not None, first_chunk
        resumed = aiter(EventStream(frozenset({"broadcast"}), joined[1].decode(), event_settings()))
        chunks: list[bytes] = []
        while not any(b"meanwhile" in chunk for chunk in chunks):
            chunks.append(await asyncio.wait_for(anext(resumed), 10))
        await resumed.aclose()
        await other.aclose()
        return chunks

    with override_settings(REDIS_URL=url, EVENTS_REDIS_PREFIX=f"quiet-{broker}-{already_read}"):
        chunks = asyncio.run(scenario())
    assert b"event: meanwhile" in b"".join(chunks)
    assert b"event: before" not in b"".join(chunks)
