"""Hundreds of Server-Sent Events clients in one asyncio loop, each behaving like EventSource.

Raw sockets rather than an HTTP library: a test of a server's shutdown must see exactly what
reached each client and when (every ``retry:``, every comment, the end of every response), and
hundreds of streams must fit in the test's own process. Each client

- decodes the HTTP/1.1 response: chunked, sized by Content-Length, or delimited by the close;
- interprets the stream as the HTML standard says (``id``, ``event``, ``data``, ``retry``,
  comments; lines ended by CRLF, LF or CR);
- reconnects as EventSource does: after a stream ends or the connection breaks, it waits the last
  ``retry`` it was sent, then asks again with ``Last-Event-ID``; a response that is not a 200
  ``text/event-stream`` makes it give up for good.

https://html.spec.whatwg.org/multipage/server-sent-events.html
"""

import asyncio
import codecs
import re
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field

# EventSource's reconnection time until the server sends a ``retry:`` (browsers wait ~3 s).
DEFAULT_RETRY_MILLISECONDS = 3000
# A client gives up on a request whose response has not started by then (a browser waits longer;
# a test must not).
RESPONSE_TIMEOUT_SECONDS = 30.0
_WAIT_POLL_SECONDS = 0.05
_LINE_END = re.compile(r"\r\n|\r|\n")


class StreamRefused(Exception):
    """The response is not an event stream: EventSource fails the connection, for good."""


@dataclass(frozen=True)
class Event:
    id: str  # the client's last event id once this event was dispatched ("" if none yet)
    type: str
    data: str
    received: float  # time.monotonic()


@dataclass
class Connection:
    """One request of a client, and what its response brought, with times from time.monotonic()."""

    opened: float
    last_event_id: str  # sent as Last-Event-ID ("" when none was sent)
    status: int | None = None
    responded: float | None = None  # when the head of the response arrived
    ended: float | None = None  # when the response ended, or the connection broke
    error: str | None = None  # why it broke (None: the response ended, or is still open)
    retries: list[tuple[float, int]] = field(default_factory=list)
    comments: list[tuple[float, str]] = field(default_factory=list)
    events: int = 0

    @property
    def subscribed(self) -> bool:
        """The server wrote something: it writes nothing before the client is subscribed."""
        return bool(self.events or self.comments or self.retries)


class EventStreamParser:
    """The HTML standard's interpretation of an event stream, for one connection."""

    def __init__(self, client: "Client", connection: Connection) -> None:
        self._client = client
        self._connection = connection
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._pending = ""  # text after the last complete line
        self._at_start = True
        self._data: list[str] = []
        self._type = ""
        self._id = client.last_event_id

    def feed(self, chunk: bytes) -> None:
        text = self._pending + self._decoder.decode(chunk)
        if self._at_start and text:
            text = text.removeprefix("\ufeff")
            self._at_start = False
        now = time.monotonic()
        start = 0
        for end in _LINE_END.finditer(text):
            if end[0] == "\r" and end.end() == len(text):
                break  # a CR at the very end may be the first half of a CRLF
            self._line(text[start : end.start()], now)
            start = end.end()
        self._pending = text[start:]

    def _line(self, line: str, now: float) -> None:
        if not line:
            self._dispatch(now)
            return
        if line.startswith(":"):
            self._connection.comments.append((now, line[1:].removeprefix(" ")))
            return
        name, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\0" not in value:
            self._id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._client.retry_ms = int(value)
            self._connection.retries.append((now, int(value)))
        # Any other field, and an id with a NUL or a retry that is not a number, are ignored.

    def _dispatch(self, now: float) -> None:
        self._client.last_event_id = self._id
        data, event_type = self._data, self._type or "message"
        self._data, self._type = [], ""
        if not data:
            return
        self._connection.events += 1
        self._client.events.append(Event(self._id, event_type, "\n".join(data), now))


class Client:
    """One EventSource of ``http://host:port/path``; ``run()`` until cancelled or refused."""

    def __init__(self, host: str, port: int, path: str, headers: Mapping[str, str]) -> None:
        self._host = host
        self._port = port
        self._path = path
        self._headers = dict(headers)
        self.events: list[Event] = []
        self.connections: list[Connection] = []
        self.last_event_id = ""
        self.retry_ms = DEFAULT_RETRY_MILLISECONDS
        self.refused: str | None = None  # why it gave up for good

    @property
    def connection(self) -> Connection | None:
        return self.connections[-1] if self.connections else None

    async def run(self, start_delay: float = 0.0) -> None:
        await asyncio.sleep(start_delay)
        while True:
            connection = Connection(time.monotonic(), self.last_event_id)
            self.connections.append(connection)
            try:
                await self._request(connection)
            except StreamRefused as error:
                connection.ended, connection.error = time.monotonic(), str(error)
                self.refused = str(error)
                return
            except (OSError, TimeoutError, asyncio.IncompleteReadError, ValueError) as error:
                # A network error: EventSource reconnects, as when the stream ends.
                connection.ended, connection.error = time.monotonic(), repr(error)
            await asyncio.sleep(self.retry_ms / 1000)

    async def _request(self, connection: Connection) -> None:
        async with asyncio.timeout(RESPONSE_TIMEOUT_SECONDS):
            reader, writer = await asyncio.open_connection(self._host, self._port)
        try:
            headers = {
                "Host": f"{self._host}:{self._port}",
                "Accept": "text/event-stream",
                "Cache-Control": "no-cache",
                **self._headers,
            }
            if connection.last_event_id:
                headers["Last-Event-ID"] = connection.last_event_id
            head = "".join(f"{name}: {value}\r\n" for name, value in headers.items())
            writer.write(f"GET {self._path} HTTP/1.1\r\n{head}\r\n".encode())
            async with asyncio.timeout(RESPONSE_TIMEOUT_SECONDS):
                status, response_headers = await _read_head(reader)
            connection.status, connection.responded = status, time.monotonic()
            content_type = response_headers.get("content-type", "")
            if status != 200 or content_type.split(";")[0].strip() != "text/event-stream":
                raise StreamRefused(f"{status} {content_type!r}")
            parser = EventStreamParser(self, connection)
            await _read_body(reader, response_headers, parser.feed)
            connection.ended = time.monotonic()
        finally:
            writer.close()


async def _read_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    """The status and the headers (names in lower case) of an HTTP/1.1 response."""
    lines = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1").split("\r\n")
    version, status, *_ = lines[0].split(" ", 2)
    if not version.startswith("HTTP/1."):
        raise ValueError(f"not an HTTP/1.x response: {lines[0]!r}")
    headers = {}
    for line in filter(None, lines[1:]):
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return int(status), headers


async def _read_body(
    reader: asyncio.StreamReader, headers: Mapping[str, str], feed: Callable[[bytes], None]
) -> None:
    """Hand each piece of the body to ``feed`` as it arrives; return when the body ends."""
    if "chunked" in headers.get("transfer-encoding", "").lower():
        while True:
            size = int((await reader.readuntil(b"\r\n")).split(b";")[0].strip(), 16)
            if size == 0:
                while await reader.readuntil(b"\r\n") != b"\r\n":  # trailer fields
                    pass
                return
            feed(await reader.readexactly(size))
            if await reader.readexactly(2) != b"\r\n":
                raise ValueError("a chunk not followed by CRLF")
    elif "content-length" in headers:
        feed(await reader.readexactly(int(headers["content-length"])))
    else:
        while chunk := await reader.read(64 * 1024):
            feed(chunk)


class Crowd:
    """``size`` clients of one stream, started ``stagger_seconds`` apart (as users arrive, not
    in one burst of connections); ``async with`` runs them and closes them all when it ends."""

    def __init__(
        self,
        host: str,
        port: int,
        path: str,
        headers: Mapping[str, str],
        size: int,
        stagger_seconds: float = 0.0,
    ) -> None:
        self.clients = [Client(host, port, path, headers) for _ in range(size)]
        self._stagger = stagger_seconds
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> "Crowd":
        self._tasks = [
            asyncio.create_task(client.run(index * self._stagger))
            for index, client in enumerate(self.clients)
        ]
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_until(self, condition: Callable[[], bool], timeout: float, what: str) -> None:
        """Wait until ``condition()``; fail after ``timeout`` seconds, saying ``what`` it awaited,
        or as soon as a client gives up or crashes."""
        deadline = time.monotonic() + timeout
        while not condition():
            crashed = [
                error
                for task in self._tasks
                if task.done() and not task.cancelled() and (error := task.exception())
            ]
            if crashed:
                raise AssertionError(f"{len(crashed)} clients crashed") from crashed[0]
            refused = [client.refused for client in self.clients if client.refused]
            if refused:
                raise AssertionError(f"{len(refused)} clients gave up: {refused[:3]}")
            if time.monotonic() > deadline:
                raise AssertionError(f"not {what} after {timeout} s")
            await asyncio.sleep(_WAIT_POLL_SECONDS)
