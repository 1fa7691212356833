"""The ASGI entry point of the event stream: Django's own handler, minus the per-request thread.

Django runs each request inside an asgiref ``ThreadSensitiveContext``, which gives the request a
thread of its own for sync code (stock middleware, DRF views). That thread lives as long as the
response; for a stream, as long as the client stays connected: one idle thread per client.

``EventStreamHandler`` is Django's ``ASGIHandler`` without that context. The stream request still
runs the whole middleware stack and the DRF view (authentication, permissions, negotiation), on
asgiref's single shared thread, for the few milliseconds its setup takes; then the response
streams from the event loop and holds no thread at all.

It also runs that setup as Django's WSGI handler does: the synchronous middleware chain and the
view in one trip to that thread. Django's async chain makes a trip per middleware hook instead
(each built-in middleware's ``process_request`` and ``process_response``): about 18 per stream,
which were half of the CPU that accepting a stream cost.

It also wraps the connection (``daphne.StreamSend``: flow control, direct writes) and binds it
to the stream the view returns (``stream.EventStreamResponse``).

No exception may leave a stream request: Daphne's housekeeping (its loop that reaps finished
requests and enforces timeouts) stops for good when it meets one from a response that had already
started. ``EventStreamHandler`` logs it and ends the request (with a 500 if nothing was sent yet).
"""

import logging
from typing import Any

from asgiref.sync import sync_to_async
from django.core.handlers.asgi import ASGIHandler
from django.http import HttpRequest, HttpResponseBase
from django.urls import reverse

from ..conf import event_settings
from .daphne import ClientTooSlow, Send, StreamSend
from .shutdown import process_shutdown
from .stream import EventStreamResponse

logger = logging.getLogger(__name__)

ASGIApp = Any  # an ASGI 3 callable: (scope, receive, send) -> awaitable


class EventStreamHandler(ASGIHandler):
    def __init__(self) -> None:
        super().__init__()
        self.load_middleware(is_async=False)  # the chain get_response_async runs, in one trip

    async def get_response_async(self, request: HttpRequest) -> HttpResponseBase:
        return await sync_to_async(self.get_response, thread_sensitive=True)(request)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] != "http":
            raise ValueError(f"The event stream serves HTTP only, not {scope['type']!r}.")
        settings = event_settings()
        stream_send = StreamSend(
            send,
            max_backlog_bytes=settings.client_max_backlog_bytes,
            send_timeout=settings.client_send_timeout_seconds,
        )
        try:
            await self.handle(scope, receive, stream_send)
        except ClientTooSlow as error:
            logger.info("Stream ended: the client is too slow (%s)", error)
        except Exception:
            logger.exception("Stream request ended by an error")
            if not stream_send.response_started:
                await _server_error(send)

    async def send_response(self, response: HttpResponseBase, send: Any) -> None:
        if isinstance(response, EventStreamResponse) and isinstance(send, StreamSend):
            response.stream.bind(send)
        await super().send_response(response, send)


class EventStreamRouter:
    """Routes the stream URL to ``EventStreamHandler`` and everything else to ``application``."""

    def __init__(self, application: ASGIApp) -> None:
        self._application = application
        self._stream_handler = EventStreamHandler()
        self._stream_path: str | None = None
        self._shutdown = process_shutdown()
        self._shutdown.install()

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == self.stream_path:
            await self._stream_handler(scope, receive, send)
            return
        with self._shutdown.answering():
            await self._application(scope, receive, send)

    @property
    def stream_path(self) -> str:
        # Resolved on first use: the URLconf is the single source of truth for the path.
        if self._stream_path is None:
            self._stream_path = reverse("events:stream")
        return self._stream_path


async def _server_error(send: Send) -> None:
    body = b'{"detail": "Server error.", "code": "error"}'  # the shape of events/api/errors.py
    headers = [(b"content-type", b"application/json"), (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": 500, "headers": headers})
    await send({"type": "http.response.body", "body": body})
