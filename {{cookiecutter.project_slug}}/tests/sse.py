"""A small Server-Sent Events client for the tests, parsing the stream as a browser does."""

import json
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

import httpx


@dataclass
class Message:
    """An event as EventSource dispatches it, or a comment line (``comment`` set)."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    retry: int | None = None
    comment: str | None = None


@dataclass
class EventStream:
    response: httpx.Response
    last_event_id: str | None = None
    _lines: Iterator[str] = field(init=False)

    def __post_init__(self) -> None:
        self._lines = self.response.iter_lines()

    def __iter__(self) -> Iterator[Message]:
        """Events and comments in order, until the server ends the stream."""
        event, retry = Message(), None
        data: list[str] = []
        for line in self._lines:
            if not line:
                if data:
                    event.data = "\n".join(data)
                    event.id = self.last_event_id
                    yield event
                elif retry is not None:
                    yield Message(event="", retry=retry)
                event, data, retry = Message(), [], None
                continue
            name, _, value = line.partition(":")
            value = value.removeprefix(" ")
            if not name:
                yield Message(event="", comment=value)
            elif name == "data":
                data.append(value)
            elif name == "event":
                event.event = value
            elif name == "id" and "\0" not in value:
                self.last_event_id = value
            elif name == "retry" and value.isdigit():
                retry = int(value)

    def events(self) -> Iterator[Message]:
        """Dispatched events only, as ``onmessage``/``addEventListener`` would see them."""
        return (message for message in self if message.comment is None and message.retry is None)

    def take_all(self, count: int) -> list[Message]:
        """The next ``count`` messages, comments and retry fields included."""
        return [message for _, message in zip(range(count), self, strict=False)]

    def take(self, count: int) -> list[Message]:
        """The next ``count`` dispatched events."""
        received = []
        for message in self.events():
            received.append(message)
            if len(received) == count:
                break
        return received


def revoked_reason(stream: EventStream, within: float = 10.0) -> str:
    """Reads the stream to its end, which must come within ``within`` seconds (heartbeats keep
    arriving meanwhile); returns the reason of its closing ``revoked`` event."""
    deadline = time.monotonic() + within
    events: list[Message] = []
    for message in stream:
        assert time.monotonic() < deadline, f"still open after {within} s: {events}"
        if message.comment is None and message.retry is None:
            events.append(message)
    assert events, "the stream ended without a revoked event"
    assert events[-1].event == "revoked", events
    return json.loads(events[-1].data)["reason"]


@contextmanager
def open_stream(
    client: httpx.Client,
    *,
    topics: tuple[str, ...] = (),
    last_event_id: str | None = None,
    origin: str | None = None,
    read_timeout: float = 10.0,
) -> Iterator[EventStream]:
    """Open the stream; any read fails after ``read_timeout`` seconds of silence."""
    headers = {"Accept": "text/event-stream"}
    if last_event_id is not None:
        headers["Last-Event-ID"] = last_event_id
    if origin is not None:
        headers["Origin"] = origin
    with client.stream(
        "GET",
        "/api/events/stream/",
        params=[("topic", topic) for topic in topics],
        headers=headers,
        timeout=httpx.Timeout(10.0, read=read_timeout),
    ) as response:
        assert response.status_code == 200, (response.status_code, response.read())
        assert response.headers["content-type"].startswith("text/event-stream")
        yield EventStream(response)
