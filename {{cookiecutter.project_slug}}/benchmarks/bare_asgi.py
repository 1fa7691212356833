"""Baseline "a bare ASGI callable": the least a Daphne process can do to fan events out.

One Redis subscription per process; each message is framed once and sent directly to every open
stream, in the order they connected. No Django, no authentication, no history, no backpressure.
Daphne's ``send`` buffers without waiting, so one pass over the clients writes the event to all of
them. Configured from the environment: ``REDIS_URL``, ``BENCHMARK_CHANNEL``. Never used to serve
the project.
"""

import asyncio
import os
from collections.abc import Awaitable, Callable
from typing import Any

from redis import asyncio as aioredis

Send = Callable[[dict[str, Any]], Awaitable[None]]

RESPONSE_START = {
    "type": "http.response.start",
    "status": 200,
    "headers": [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")],
}
CONNECTED = {"type": "http.response.body", "body": b": connected\n\n", "more_body": True}


class SharedFeed:
    """The process's one subscription, started by its first client."""

    def __init__(self) -> None:
        self.clients: dict[Send, None] = {}  # insertion-ordered set
        self._subscribed: asyncio.Future[None] | None = None
        self._task: asyncio.Task[None] | None = None

    async def subscribed(self) -> None:
        if self._subscribed is None:
            self._subscribed = asyncio.get_running_loop().create_future()
            self._task = asyncio.create_task(self._run(self._subscribed))
        await asyncio.shield(self._subscribed)

    async def _run(self, subscribed: asyncio.Future[None]) -> None:
        redis = aioredis.from_url(os.environ["REDIS_URL"])
        async with redis.pubsub() as pubsub:
            await pubsub.subscribe(os.environ.get("BENCHMARK_CHANNEL", "benchmark"))
            async for message in pubsub.listen():
                if message["type"] == "subscribe":
                    subscribed.set_result(None)
                elif message["type"] == "message":
                    body = b"data: " + message["data"] + b"\n\n"
                    await self._send_to_all(
                        {"type": "http.response.body", "body": body, "more_body": True}
                    )

    async def _send_to_all(self, message: dict[str, Any]) -> None:
        for send in list(self.clients):
            try:
                await send(message)
            except Exception:  # the client went away between two events
                self.clients.pop(send, None)


FEED = SharedFeed()


async def application(scope: dict[str, Any], receive: Any, send: Send) -> None:
    if scope["type"] != "http":
        return
    await FEED.subscribed()
    await send(RESPONSE_START)
    await send(CONNECTED)
    FEED.clients[send] = None
    try:
        while (await receive())["type"] != "http.disconnect":
            pass
    finally:
        FEED.clients.pop(send, None)
