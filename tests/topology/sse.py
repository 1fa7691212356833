"""Reading a Server-Sent Events stream from Python, for clients that are not browsers."""

import ssl
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import httpx


@dataclass(frozen=True)
class Event:
    id: str | None
    type: str
    data: str


@contextmanager
def open_stream(
    base_url: str, headers: dict[str, str], verify: ssl.SSLContext | bool = True
) -> Iterator[Iterator[Event]]:
    """Connect and wait until subscribed; yields an iterator of the stream's events. ``verify``
    checks an https server's certificate (an SSLContext trusting a test's own, say).

    The server writes its first comment line once the client is subscribed: an event published
    after that reaches this client. Ten seconds of silence fail a read.
    """
    with httpx.stream(
        "GET",
        f"{base_url}/api/events/stream/",
        headers={**headers, "Accept": "text/event-stream"},
        timeout=httpx.Timeout(10.0),
        verify=verify,
    ) as response:
        assert response.status_code == 200, response.read()
        lines = response.iter_lines()
        for line in lines:
            if line.startswith(":"):
                break
        yield _events(lines)


def _events(lines: Iterator[str]) -> Iterator[Event]:
    event_id, event_type, data = None, "message", []
    for line in lines:
        if not line:
            if data:
                yield Event(event_id, event_type, "\n".join(data))
            event_type, data = "message", []
            continue
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "id":
            event_id = value
        elif name == "event":
            event_type = value
        elif name == "data":
            data.append(value)
