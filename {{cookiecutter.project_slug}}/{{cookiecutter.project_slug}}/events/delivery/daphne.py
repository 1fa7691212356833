"""A stream's connection, under Daphne and elsewhere: flow control (wait while the client drains,
cut it off when it does not), and under Daphne, events written to the socket at once (and request
bodies left unparsed, overlong request lines answered: ``leave_request_bodies_to_django``,
``answer_overlong_request_lines``).

Daphne accepts every chunk at once (``send()`` never waits) and buffers what the socket does not
take, so without this a client that stopped reading would make the server's memory grow without
bound. After each chunk, ``StreamSend`` reads the unsent bytes of the Twisted transport behind
Daphne's ``send``: above ``max_backlog_bytes`` the stream waits (producing nothing more) until the
client has taken enough; if that takes longer than ``send_timeout`` seconds, the connection is
aborted. Unsent bytes read right after a send say nothing, since Twisted writes on a later turn of
the event loop; waiting over time is what tells a slow client from a burst. A client at network
speed therefore receives any burst or replay, however large, while one that stopped reading
costs at most ``max_backlog_bytes`` (plus one chunk and the kernel's socket buffers) and is cut
off ``send_timeout`` seconds after its backlog passed the limit.

Under Daphne, a stream's connection also writes to its socket at once when nothing is waiting
(``TwistedTransport.send_first``), instead of Twisted's buffer-then-register path.

On servers whose ``send()`` waits while the client does not read (uvicorn, hypercorn), the same
``send_timeout`` bounds each send instead.

It leans on Daphne and Twisted internals, so they are kept to this module and tested against a
real Daphne.
"""

import asyncio
import functools
import json
import logging
from collections.abc import Awaitable, Callable, Iterable, Mapping
from typing import Any

from daphne import http_protocol
from twisted.web import http

from ..telemetry.metrics import EndReason

logger = logging.getLogger(__name__)

Send = Callable[[Mapping[str, Any]], Awaitable[None]]

_DRAIN_POLL_SECONDS = 0.05


class ClientTooSlow(Exception):
    """The client took nothing for too long; its connection was (or must be) closed."""


class TwistedTransport:
    """The unsent bytes of a Twisted TCP transport (its ``FileDescriptor`` write buffer)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def unsent_bytes(self) -> int:
        transport = self._transport
        return int(len(transport.dataBuffer) - transport.offset + transport._tempDataLen)

    def abort(self) -> None:
        self._transport.abortConnection()

    def close(self) -> None:
        """Close once everything written has been sent."""
        self._transport.loseConnection()

    def abort_if_open(self) -> None:
        if self._transport.connected:
            logger.info("Disconnected a client that did not read the end of its stream")
            self._transport.abortConnection()

    @property
    def connected(self) -> bool:
        return bool(self._transport.connected)

    def send_first(self) -> None:
        """From now on, write to the socket at once when nothing is waiting to be sent, as
        asyncio's own transports do, and buffer only what the kernel does not take.

        Twisted buffers every write and registers the socket with the selector to send it on the
        next turn of the loop: one ``epoll_ctl`` per write, a quarter of a busy server's CPU.
        Bytes and order are unchanged: the buffer is used as soon as it holds anything.
        """
        transport = self._transport
        sock = getattr(transport, "socket", None)
        if sock is None or getattr(transport, "TLS", False):
            return  # not a plain TCP connection: Twisted's own path
        write = _SocketFirstWrite(self, sock, transport.write)
        transport.write = write
        transport.writeSequence = write.sequence


class _SocketFirstWrite:
    """``TwistedTransport.send_first``'s write (a class with slots: a stream holds it all its
    life, and closures cost several times more memory)."""

    __slots__ = ("_buffered_write", "_socket", "_transport")

    def __init__(
        self, transport: TwistedTransport, sock: Any, buffered_write: Callable[[bytes], None]
    ) -> None:
        self._transport = transport
        self._socket = sock
        self._buffered_write = buffered_write

    def __call__(self, data: bytes) -> None:
        transport = self._transport
        twisted = transport._transport
        if (
            data
            and twisted.connected
            and not twisted.disconnecting
            and not twisted._writeDisconnected
            and transport.unsent_bytes() == 0
        ):
            try:
                sent = self._socket.send(data)
            except OSError:  # full (BlockingIOError), or broken: Twisted's path handles it
                sent = 0
            if sent == len(data):
                return
            data = data[sent:]
        self._buffered_write(data)

    def sequence(self, chunks: Iterable[bytes]) -> None:
        self(b"".join(chunks))


def leave_request_bodies_to_django() -> None:
    """Under Daphne, request bodies reach the application unread.

    Twisted parses the form and multipart bodies of every POST into ``request.args``, which
    Daphne never reads: memory and CPU spent for nothing, and a multipart body it cannot parse it
    answers itself, 400 without a body, before the API can say what is wrong (a 415: the API
    takes JSON). Daphne makes its requests from the ``WebRequest`` of its module, looked up for
    each connection, so this replaces it for the process.
    """
    if getattr(http_protocol.WebRequest, "leaves_bodies_unread", False):
        return

    class WebRequest(http_protocol.WebRequest):  # type: ignore[misc]  # Daphne is untyped
        leaves_bodies_unread = True

        def __init__(self, *args: Any, **kwargs: Any) -> None:
            super().__init__(*args, parsePOSTFormSubmission=False, **kwargs)

    http_protocol.WebRequest = WebRequest


def answer_overlong_request_lines() -> None:
    """Under Daphne, what Twisted refuses before any view is answered in the API's error shape.

    A request line (its URL) or a header line longer than Twisted reads (16 KiB) gets 414 or 431,
    instead of the connection closed without a word (``LineReceiver.lineLengthExceeded``), which
    a client cannot tell from a crash; a request Twisted cannot parse (headers over 16 KiB in
    all, a malformed line) gets its 400 with a JSON body rather than none. nginx, in front,
    answers 414 itself past 8 KiB.
    """
    channel = http.HTTPChannel
    if getattr(channel, "answers_in_the_error_shape", False):
        return

    def line_length_exceeded(self: Any, line: bytes) -> None:
        if getattr(self, "_HTTPChannel__first_line", 1):  # Twisted's own flag: no line read yet
            detail = f"The request line (its URL) is over {self.MAX_LENGTH} bytes."
            _refuse(self, b"414 URI Too Long", detail, "too_large")
        else:
            detail = f"A header line is over {self.MAX_LENGTH} bytes."
            _refuse(self, b"431 Request Header Fields Too Large", detail, "too_large")

    def bad_request(self: Any) -> None:
        detail = (
            "A request that is not HTTP this server can read (malformed, or headers too large)."
        )
        _refuse(self, b"400 Bad Request", detail, "parse_error")

    channel.lineLengthExceeded = line_length_exceeded  # type: ignore[method-assign]
    channel._respondToBadRequestAndDisconnect = bad_request  # type: ignore[method-assign]
    channel.answers_in_the_error_shape = True  # type: ignore[attr-defined]


def _refuse(channel: Any, status: bytes, detail: str, code: str) -> None:
    body = json.dumps({"detail": detail, "code": code}).encode()
    channel.transport.write(
        b"HTTP/1.1 " + status + b"\r\nContent-Type: application/json\r\n"
        b"Content-Length: " + str(len(body)).encode() + b"\r\nConnection: close\r\n\r\n" + body
    )
    channel.loseConnection()


def daphne_connection(send: Send) -> tuple[Any, TwistedTransport] | None:
    """Daphne's protocol and transport behind ``send``, or None when it does not come from Daphne."""
    # Daphne 4 hands applications functools.partial(server.handle_reply, protocol); the protocol
    # is Twisted's HTTP request, whose channel owns the TCP transport.
    if not isinstance(send, functools.partial) or not send.args:
        return None
    protocol = send.args[0]
    transport = getattr(getattr(protocol, "channel", None), "transport", None)
    required = (
        "dataBuffer",
        "offset",
        "_tempDataLen",
        "_writeDisconnected",
        "disconnecting",
        "abortConnection",
        "loseConnection",
    )
    if transport is None or not all(hasattr(transport, name) for name in required):
        return None
    if not hasattr(protocol, "handle_reply"):
        return None
    return protocol, TwistedTransport(transport)


class StreamSend:
    """The ``send`` a stream's response goes through (see the module's docstring). The stream
    handler makes one per stream request, and binds it to the stream its view returns."""

    def __init__(self, send: Send, *, max_backlog_bytes: int, send_timeout: float) -> None:
        self._send = send
        self._max_backlog_bytes = max_backlog_bytes
        self._send_timeout = send_timeout
        daphne = daphne_connection(send)
        self._protocol: Any = daphne[0] if daphne else None
        self.transport: TwistedTransport | None = daphne[1] if daphne else None
        if self.transport is not None:
            self.transport.send_first()
        self.response_started = False
        self._is_stream = False  # a 200: an event stream, not an error answered as JSON
        self.closed = False
        self.ended_by: EndReason | None = None  # when the server ended it: SLOW, SHUTDOWN

    async def __call__(self, message: Mapping[str, Any]) -> None:
        if self.closed:
            return  # ended by the server (shutdown, slow client): the rest goes nowhere
        if message["type"] == "http.response.start":
            self.response_started = True
            self._is_stream = message.get("status") == 200
        if self.transport is None:
            try:
                async with asyncio.timeout(self._send_timeout or None):
                    await self._send(message)
            except TimeoutError:
                self.closed = True
                self.ended_by = EndReason.SLOW
                raise ClientTooSlow(f"a send took over {self._send_timeout}s") from None
            return
        await self._send(message)
        if message["type"] != "http.response.body":
            return
        if not message.get("more_body", False):
            if self._is_stream:  # an error answer leaves the connection to Daphne's keep-alive
                self._close_when_sent(self.transport)
        elif self._max_backlog_bytes > 0:
            await self._wait_for_drain(self.transport)

    async def _wait_for_drain(self, transport: TwistedTransport) -> None:
        if transport.unsent_bytes() <= self._max_backlog_bytes:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self._send_timeout
        while (unsent := transport.unsent_bytes()) > self._max_backlog_bytes:
            if loop.time() >= deadline:
                logger.info(
                    "Disconnected a client that stopped reading (%d bytes unsent after %.0fs)",
                    unsent,
                    self._send_timeout,
                )
                # Daphne then reports http.disconnect, which ends the stream and frees its state;
                # until then, sends go nowhere.
                transport.abort()
                self.closed = True
                self.ended_by = EndReason.SLOW
                return
            await asyncio.sleep(_DRAIN_POLL_SECONDS)

    def _close_when_sent(self, transport: TwistedTransport) -> None:
        """The stream is over: close its connection once the client has everything, and within
        the send timeout in any case, so that a client that stopped reading keeps neither a
        connection nor unsent bytes. (Timers, not a wait: once the response is complete, Daphne
        reports a disconnect and the request's coroutine is cancelled.)"""
        transport.close()
        asyncio.get_running_loop().call_later(self._send_timeout, transport.abort_if_open)

    @property
    def writes_directly(self) -> bool:
        """Whether ``write_now`` works here (Daphne): the hub may then write events itself."""
        return self._protocol is not None and self.transport is not None

    def write_now(self, body: bytes) -> bool:
        """Write ``body`` to the client now, from synchronous code (Daphne only); returns whether
        the caller may go on writing this way. False when, after this write, the client's unsent
        bytes pass ``max_backlog_bytes`` (the caller then goes back to ``__call__``, which waits
        for it or cuts it off), or when the stream is over (nothing is written).
        """
        transport = self.transport
        if self.closed or not self.response_started or transport is None:
            return False
        if not transport.connected:
            return False
        protocol = self._protocol
        assert protocol is not None  # set together with the transport
        if (
            protocol.chunked
            and protocol.startedWriting
            and not protocol.finished
            and not protocol._disconnected
            and protocol.channel is not None
        ):
            # What Daphne's handle_reply and then Twisted's Request.write do with a chunk of an
            # open chunked response, without their checks of the message and of the response's
            # state (settled by the first chunk) and the pieces they join: one chunk, one write.
            protocol.sentLength += len(body)
            protocol.channel.transport.write(b"%x\r\n%b\r\n" % (len(body), body))
        else:
            protocol.handle_reply({"type": "http.response.body", "body": body, "more_body": True})
        return self.keeping_up()

    def keeping_up(self) -> bool:
        """Whether the client's unsent bytes are within ``max_backlog_bytes`` (Daphne only)."""
        transport = self.transport
        if transport is None or self._max_backlog_bytes <= 0:
            return transport is not None
        return transport.unsent_bytes() <= self._max_backlog_bytes

    def finish_now(self, body: bytes) -> bool:
        """End the response with ``body`` and close the connection at once, from synchronous code
        (a shutdown hook). Daphne only; returns whether it was done."""
        if self._protocol is None or self.transport is None or self.closed:
            return False
        if not self.response_started or not self.transport.connected:
            return False
        self.closed = True
        self.ended_by = EndReason.SHUTDOWN
        self._protocol.handle_reply(
            {"type": "http.response.body", "body": body, "more_body": False}
        )
        self.transport.close()
        return True
