"""The order of a stream's first bytes, checked inside the process (too fast to race over HTTP)."""

import asyncio
from typing import NoReturn

import pytest
from django.test import override_settings

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
    assert first_chunk == b"retry: 3000\n\n: connected\n\n"
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
