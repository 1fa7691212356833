"""Baseline "the article's design": the DRF view of the article this project grew from.

Each client gets an async generator streaming from a Redis Pub/Sub connection of its own, under
Django's stock ASGI handler (``benchmarks.stock_asgi``, with ``benchmarks.article_settings``), so
each open stream also holds an OS thread. It is served unauthenticated: the cost measured is the
design's, not that of authentication.

The article's bugs are fixed, its design kept: it read ``is_on_connect`` before assigning it,
named ``JsonRenderer`` (DRF's is ``JSONRenderer``) and an unimported ``redis`` module, sent its
heartbeat as a data event (here a comment, which never reaches ``onmessage``), and announced the
stream before Redis had confirmed the subscription (events published in between were lost: here
``: connected`` follows the confirmation). Like the article, every client decodes and re-encodes
every message itself. Never used to serve the project.
"""

import json
import os
from collections.abc import AsyncIterator
from typing import Any

from django.conf import settings
from django.http import StreamingHttpResponse
from django.urls import path
from redis import asyncio as aioredis
from rest_framework.permissions import AllowAny
from rest_framework.renderers import BaseRenderer, JSONRenderer
from rest_framework.request import Request
from rest_framework.views import APIView

CHANNEL = os.environ.get("BENCHMARK_CHANNEL", "benchmark")
HEARTBEAT_SECONDS = 15.0


class ServerSentEventRenderer(BaseRenderer):
    media_type = "text/event-stream"
    format = "txt"

    def render(
        self, data: Any, accepted_media_type: Any = None, renderer_context: Any = None
    ) -> Any:
        return data


def is_recipient(user_id: int | None, message: dict[str, Any]) -> bool:
    """The article's filter, where a message without a recipient is for everyone."""
    recipient = message.get("recipient_id")
    return recipient is None or recipient == str(user_id)


async def listen_to_channel(user_id: int | None) -> AsyncIterator[str]:
    # A client, and so a connection, for each stream, as the article's get_async_redis_client().
    client = aioredis.from_url(settings.REDIS_URL, decode_responses=True)
    async with client, client.pubsub() as listener:
        await listener.subscribe(CHANNEL)
        # Redis confirms the subscription first: from then on, nothing published is missed.
        confirmation = None
        while confirmation is None or confirmation["type"] != "subscribe":
            confirmation = await listener.get_message(timeout=HEARTBEAT_SECONDS)
        yield ": connected\n\n"
        while True:
            message = await listener.get_message(
                timeout=HEARTBEAT_SECONDS, ignore_subscribe_messages=True
            )
            if message is None:
                yield ": ping\n\n"
                continue
            event = json.loads(message["data"])
            if is_recipient(user_id, event):
                yield f"data: {json.dumps(event)}\n\n"


class Notify(APIView):
    authentication_classes: list[type] = []
    permission_classes = [AllowAny]
    throttle_classes: list[type] = []
    renderer_classes = [JSONRenderer, ServerSentEventRenderer]

    def get(self, request: Request) -> StreamingHttpResponse:
        response = StreamingHttpResponse(
            streaming_content=listen_to_channel(None), content_type="text/event-stream"
        )
        response["X-Accel-Buffering"] = "no"
        response["Cache-Control"] = "no-cache"
        return response


urlpatterns = [path("api/events/stream/", Notify.as_view())]
