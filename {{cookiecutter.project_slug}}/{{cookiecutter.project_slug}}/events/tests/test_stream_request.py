"""The stream request's setup, inside the process: one trip to the sync thread, not one per hook."""

import asyncio
from collections.abc import Mapping
from typing import Any

import pytest
from asgiref import sync

from ..delivery.handler import EventStreamHandler

SCOPE = {
    "type": "http",
    "asgi": {"version": "3.0"},
    "http_version": "1.1",
    "method": "GET",
    "scheme": "http",
    "path": "/api/events/stream/",
    "root_path": "",
    "query_string": b"",
    "headers": [(b"host", b"testserver"), (b"accept", b"text/event-stream")],
    "server": ("testserver", 80),
    "client": ("127.0.0.1", 50000),
}


def test_the_middleware_and_the_view_run_in_one_trip_to_the_sync_thread(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Django's async middleware chain goes to the sync thread for every middleware's
    process_request and process_response; accepting a stream would pay that 18 times."""
    trips: list[str] = []
    call = sync.SyncToAsync.__call__

    async def counted(self: sync.SyncToAsync, *args: Any, **kwargs: Any) -> Any:
        trips.append(getattr(self.func, "__name__", repr(self.func)))
        return await call(self, *args, **kwargs)

    monkeypatch.setattr(sync.SyncToAsync, "__call__", counted)
    sent: list[Mapping[str, Any]] = []

    async def scenario() -> None:
        requested = False

        async def receive() -> dict[str, Any]:
            nonlocal requested
            if not requested:
                requested = True
                return {"type": "http.request", "body": b"", "more_body": False}
            await asyncio.Event().wait()  # the client stays connected
            raise AssertionError("unreachable")

        async def send(message: Mapping[str, Any]) -> None:
            sent.append(message)

        await EventStreamHandler()(SCOPE, receive, send)

    asyncio.run(scenario())
    assert sent[0]["status"] == 401  # no credentials: answered, without a stream
    assert trips.count("get_response") == 1
    # Besides it, Django's own first and last steps: the request_started signal, and closing the
    # response (request_finished).
    assert len(trips) <= 3, trips
