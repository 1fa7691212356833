"""The order of a stream's first bytes, checked inside the process (too fast to race over HTTP)."""

import asyncio

from django.test import override_settings

from ..conf import event_settings
from ..hub import get_hub
from ..stream import event_stream


def test_nothing_is_sent_before_the_client_is_subscribed_and_closing_unsubscribes() -> None:
    """Daphne sends the headers with the first chunk: a browser's "open" must mean subscribed."""

    async def scenario() -> tuple[bytes, int, int]:
        stream = event_stream(frozenset({"broadcast"}), None, event_settings())
        first_chunk = await anext(stream)
        subscribed_then = get_hub().subscriber_count
        await stream.aclose()  # what a client disconnect does
        return first_chunk, subscribed_then, get_hub().subscriber_count

    with override_settings(REDIS_URL=""):
        first_chunk, subscribed_then, subscribed_after = asyncio.run(scenario())
    assert first_chunk == b"retry: 3000\n\n: connected\n\n"
    assert (subscribed_then, subscribed_after) == (1, 0)
