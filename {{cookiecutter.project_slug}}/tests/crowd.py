"""A crowd of Server-Sent Events clients on raw sockets, for the load and fault proofs.

Each ``StreamClient`` is one asyncio task holding one stream, as a browser's EventSource does: it
parses the body (chunked transfer-encoding decoded) into events, ``retry:`` fields and comments
(https://html.spec.whatwg.org/multipage/server-sent-events.html#event-stream-interpretation), and
when the server ends the stream or the connection drops, it waits the last ``retry:`` it was
sent and reconnects with its ``Last-Event-ID``. A status other than 200 ends it for good, as it
ends an EventSource. No HTTP library sits between the test and the bytes, so hundreds of clients
fit in one thread, and a client can stop reading to let the server's buffers fill.
"""

import asyncio
import contextlib
import re
import resource
import socket
import time
from collections.abc import AsyncIterator, Callable, Iterable
from dataclasses import dataclass, field
from types import TracebackType
from urllib.parse import urlencode

STREAM_PATH = "/api/events/stream/"
# EventSource's reconnection time before the server sends one (browsers use about 3 s).
DEFAULT_RETRY_MILLISECONDS = 3000
_LINE_BREAK = re.compile(rb"\r\n|\r|\n")
_CONNECT_TIMEOUT_SECONDS = 20.0
# What a stream that could not be subscribed says before it ends (delivery/stream.py).
NOT_SUBSCRIBED = "broker unavailable, reconnect later"


@dataclass
class Message:
    """A dispatched event (``id`` is the client's last event id after it), or a comment."""

    event: str = "message"
    data: str = ""
    id: str | None = None
    comment: str | None = None
    received_at: float = 0.0  # time.monotonic() when the client parsed it


class EventParser:
    """The event-stream interpretation of the spec, fed any slices of the decoded body.

    One parser reads one response. It starts from the id the client resumed with, as browsers
    do: an id lasts until an ``id:`` field changes it, across events and reconnections.
    """

    def __init__(self, last_event_id: str | None = None) -> None:
        self.last_event_id = last_event_id
        self.retry: int | None = None  # the newest valid retry: field, in milliseconds
        self._pending = b""
        self._started = False
        self._event = ""
        self._data: list[str] = []
        self._id_buffer = last_event_id

    def feed(self, body: bytes) -> list[Message]:
        """The messages completed by ``body``; an incomplete line waits for the next slice."""
        buffer = self._pending + body
        # A CR at the end may be the first half of a CRLF: keep it until the next slice.
        held = b"\r" if buffer.endswith(b"\r") else b""
        lines = _LINE_BREAK.split(buffer[: len(buffer) - len(held)])
        self._pending = lines.pop() + held
        messages: list[Message] = []
        for raw in lines:
            line = raw.decode("utf-8", errors="replace")
            if not self._started:
                self._started = True
                line = line.removeprefix("\ufeff")
            message = self._line(line)
            if message is not None:
                messages.append(message)
        return messages

    def _line(self, line: str) -> Message | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return Message(event="", comment=line[1:].removeprefix(" "))
        name, colon, value = line.partition(":")
        value = value.removeprefix(" ") if colon else ""
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._id_buffer = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self.retry = int(value)
        return None

    def _dispatch(self) -> Message | None:
        # The id applies at the blank line, even to an event without data.
        self.last_event_id = self._id_buffer
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return Message(event=event or "message", data="\n".join(data), id=self.last_event_id)


@dataclass
class Connection:
    """One HTTP request of a client: what it resumed from and how it ended."""

    last_event_id: str | None
    opened_at: float
    events: int = 0
    # "" while open (or when the client was stopped), "server" once the response ended, or the
    # error that broke the connection.
    ended: str = ""


@dataclass
class StreamClient:
    """One EventSource-like client (see the module's docstring)."""

    port: int
    token: str
    topics: tuple[str, ...] = ()
    last_event_id: str | None = None
    reconnect: bool = True
    # Events keep their data only if asked: a big replay to many clients would fill the test's
    # memory; ``sizes`` keeps the length of each event's data either way.
    keep_data: bool = True
    # Read nothing for this long after sending the first request: the server's buffers fill.
    pause_seconds: float = 0.0
    retry_milliseconds: int = DEFAULT_RETRY_MILLISECONDS
    events: list[Message] = field(default_factory=list)
    sizes: list[int] = field(default_factory=list)
    comments: list[Message] = field(default_factory=list)
    connections: list[Connection] = field(default_factory=list)
    failure: str | None = None  # why the client gave up for good (a status other than 200)
    # Set once a response says its stream is subscribed (anything but NOT_SUBSCRIBED: `: connected`,
    # a replay, `: up to date`): from then on nothing is missed. Not when the response starts: a
    # stream that Redis could not subscribe starts a response all the same, to end it at once.
    opened: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def resets(self) -> list[Message]:
        return [message for message in self.events if message.event == "reset"]

    @property
    def bytes_received(self) -> int:
        return sum(self.sizes)

    async def run(self, gate: asyncio.Semaphore | None = None) -> None:
        """Hold the stream until cancelled, or until it ends with ``reconnect`` off or a failure.

        ``gate`` bounds how many clients connect at once (the server's listen backlog is short).
        """
        while True:
            connection = Connection(self.last_event_id, time.monotonic())
            self.connections.append(connection)
            try:
                await self._connect_and_read(connection, gate)
                connection.ended = "server"
            except (OSError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as error:
                connection.ended = f"{type(error).__name__}: {error}"
            if self.failure is not None or not self.reconnect:
                return
            await asyncio.sleep(self.retry_milliseconds / 1000)

    async def _connect_and_read(
        self, connection: Connection, gate: asyncio.Semaphore | None
    ) -> None:
        pause = self.pause_seconds if len(self.connections) == 1 else 0.0
        writer: asyncio.StreamWriter | None = None
        try:
            # The gate is held until the server has answered, unless the client pauses first.
            async with gate or contextlib.nullcontext(), asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
                reader, writer = await asyncio.open_connection("127.0.0.1", self.port)
                writer.write(self._request())
                head = None if pause else await _response_head(reader)
            if head is None:
                await asyncio.sleep(pause)
                head = await _response_head(reader)
            status, headers = head
            if status != 200 or not headers.get("content-type", "").startswith("text/event-stream"):
                self.failure = f"{status} {headers.get('content-type')}"
                return
            parser = EventParser(self.last_event_id)
            async for body in _body(reader, headers):
                for message in parser.feed(body):
                    self._record(connection, message)
                    if message.comment != NOT_SUBSCRIBED:
                        self.opened.set()
                if parser.retry is not None:
                    self.retry_milliseconds = parser.retry
                # An empty id (a reset with no history) means: resume without Last-Event-ID.
                self.last_event_id = parser.last_event_id or None
        finally:
            if writer is not None:
                writer.close()

    def _record(self, connection: Connection, message: Message) -> None:
        message.received_at = time.monotonic()
        if message.comment is not None:
            self.comments.append(message)
            return
        connection.events += 1
        self.sizes.append(len(message.data))
        if not self.keep_data:
            message.data = ""
        self.events.append(message)

    def _request(self) -> bytes:
        query = urlencode([("topic", topic) for topic in self.topics])
        lines = [
            f"GET {STREAM_PATH}{'?' + query if query else ''} HTTP/1.1",
            f"Host: 127.0.0.1:{self.port}",
            "Accept: text/event-stream",
            "Cache-Control: no-cache",
            f"Authorization: Token {self.token}",
        ]
        if self.last_event_id:
            lines.append(f"Last-Event-ID: {self.last_event_id}")
        return ("\r\n".join(lines) + "\r\n\r\n").encode()


async def _response_head(reader: asyncio.StreamReader) -> tuple[int, dict[str, str]]:
    head = (await reader.readuntil(b"\r\n\r\n")).decode("latin-1")
    status_line, *header_lines = head.rstrip("\r\n").split("\r\n")
    status = int(status_line.split()[1])
    headers = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        headers[name.strip().lower()] = value.strip()
    return status, headers


async def _body(reader: asyncio.StreamReader, headers: dict[str, str]) -> AsyncIterator[bytes]:
    """The response body as it arrives, chunked transfer-encoding decoded."""
    if "chunked" not in headers.get("transfer-encoding", "").lower():
        while data := await reader.read(1 << 16):
            yield data
        return
    while True:
        size_line = await reader.readuntil(b"\r\n")
        size = int(size_line.split(b";")[0].strip(), 16)
        if size == 0:  # the last chunk; then trailers up to an empty line
            while await reader.readuntil(b"\r\n") != b"\r\n":
                pass
            return
        chunk = await reader.readexactly(size + 2)
        if chunk[-2:] != b"\r\n":
            raise OSError("malformed chunk: no CRLF after its data")
        yield chunk[:-2]


class Crowd:
    """Runs clients as tasks (``async with``); leaving the block closes every connection."""

    def __init__(self, clients: Iterable[StreamClient], *, connecting_at_once: int = 50) -> None:
        self.clients = list(clients)
        self._gate = asyncio.Semaphore(connecting_at_once)
        self._tasks: list[asyncio.Task[None]] = []

    async def __aenter__(self) -> "Crowd":
        self._tasks = [asyncio.create_task(client.run(self._gate)) for client in self.clients]
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def wait_opened(self, within: float) -> None:
        """Until every client's first response has started, at most ``within`` seconds (a
        client that failed raises)."""
        async with asyncio.timeout(within):
            for client, task in zip(self.clients, self._tasks, strict=True):
                opened = asyncio.ensure_future(client.opened.wait())
                await asyncio.wait({opened, task}, return_when=asyncio.FIRST_COMPLETED)
                opened.cancel()
                if not client.opened.is_set():
                    raise AssertionError(f"a client never opened its stream: {client.failure}")

    def running(self) -> int:
        """How many clients still hold or retry their stream."""
        return sum(not task.done() for task in self._tasks)


def allow_open_files(count: int) -> None:
    """Raise this process's open-files limit to ``count`` (one per client, and the servers the
    test starts inherit it)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < count:
        assert hard >= count, f"open files are limited to {hard}; {count} are needed"
        resource.setrlimit(resource.RLIMIT_NOFILE, (count, hard))


async def wait_for(
    condition: Callable[[], object], within: float, *, blocking: bool = False
) -> bool:
    """Poll ``condition()`` every 0.1 s (in a thread if it blocks, e.g. on HTTP); whether it
    came true within ``within`` seconds."""
    deadline = time.monotonic() + within
    while not (await asyncio.to_thread(condition) if blocking else condition()):
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.1)
    return True


async def open_and_close(port: int, token: str, topics: Iterable[str]) -> None:
    """One churn cycle: open a stream, wait until the server says it is connected, hang up."""
    query = urlencode([("topic", topic) for topic in topics])
    request = (
        f"GET {STREAM_PATH}?{query} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
        f"Accept: text/event-stream\r\nAuthorization: Token {token}\r\n\r\n"
    ).encode()
    async with asyncio.timeout(_CONNECT_TIMEOUT_SECONDS):
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            if not head.startswith(b"HTTP/1.1 200"):
                raise AssertionError(head.decode("latin-1"))
            await reader.readuntil(b": connected")
        finally:
            writer.close()


def stalled_socket(port: int, token: str, receive_buffer: int = 4096) -> socket.socket:
    """A stream whose client reads its response head and ``: connected``, then nothing more."""
    sock = socket.socket()
    try:
        # Set before connecting: the window the client advertises stays this small.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        sock.settimeout(10)
        sock.connect(("127.0.0.1", port))
        sock.sendall(
            f"GET {STREAM_PATH} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Accept: text/event-stream\r\nAuthorization: Token {token}\r\n\r\n".encode()
        )
        received = b""
        while b": connected" not in received:
            chunk = sock.recv(1024)
            if not chunk:
                raise AssertionError(f"the stream ended at once: {received!r}")
            received += chunk
    except BaseException:
        sock.close()
        raise
    return sock


# Linux's TCP states (include/net/tcp_states.h), as TCP_INFO reports them.
TCP_ESTABLISHED = 1


def tcp_state(sock: socket.socket) -> int:
    """The socket's TCP state, read without reading its data (ESTABLISHED until the peer hangs
    up: a FIN makes it CLOSE_WAIT, a reset CLOSE)."""
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
