"""Flow control on servers whose ``send()`` waits (uvicorn, hypercorn): a send that takes too long
cuts the client off; and the edge cases of the socket-first write. Under Daphne, both are tested
against a real server (every stream test goes through them; tests/test_resilience.py)."""

import asyncio
import contextlib
import socket
from collections.abc import Mapping
from typing import Any

import pytest

from ..delivery.daphne import ClientTooSlow, StreamSend, TwistedTransport


def test_a_send_that_never_completes_cuts_the_client_off() -> None:
    async def blocked(message: Mapping[str, Any]) -> None:
        await asyncio.Event().wait()  # a client that reads nothing, on a server that waits

    async def scenario() -> None:
        send = StreamSend(blocked, max_backlog_bytes=1024, send_timeout=0.2)
        with pytest.raises(ClientTooSlow):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        assert send.closed
        await send({"type": "http.response.body", "body": b"y"})  # goes nowhere, returns

    asyncio.run(scenario())


def test_sends_that_complete_pass_through_in_order() -> None:
    sent: list[Mapping[str, Any]] = []

    async def record(message: Mapping[str, Any]) -> None:
        await asyncio.sleep(0.01)
        sent.append(message)

    async def scenario() -> StreamSend:
        send = StreamSend(record, max_backlog_bytes=1024, send_timeout=1)
        await send({"type": "http.response.start", "status": 200, "headers": []})
        await send({"type": "http.response.body", "body": b"a", "more_body": True})
        return send

    send = asyncio.run(scenario())
    assert [message["type"] for message in sent] == ["http.response.start", "http.response.body"]
    assert send.response_started
    assert not send.closed
    assert not send.finish_now(b"bye")  # not Daphne: nothing to end from synchronous code


class _TwistedLikeTransport:
    """The parts of Twisted's TCP transport that send_first reads, around a real socket; its
    own (buffering) write records what it is given."""

    def __init__(self, sock: socket.socket) -> None:
        self.socket = sock
        self.connected = True
        self.disconnecting = False
        self._writeDisconnected = False
        self.dataBuffer = b""
        self.offset = 0
        self._tempDataLen = 0

    def write(self, data: bytes) -> None:
        self.dataBuffer += data


def test_writes_go_to_the_socket_first_and_to_the_buffer_only_when_it_is_full_or_in_use() -> None:
    """Twisted's path is taken for what the kernel does not take, and for everything after it
    (or bytes would overtake each other); the reader receives every byte, in order."""
    reader, writer = socket.socketpair()
    with reader, writer:
        writer.setblocking(False)
        writer.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
        transport = _TwistedLikeTransport(writer)
        TwistedTransport(transport).send_first()

        transport.write(b"first ")
        assert transport.dataBuffer == b""  # sent at once, nothing buffered
        assert reader.recv(100) == b"first "

        big = bytes(range(256)) * 4096  # 1 MiB: more than the kernel takes at once
        transport.write(big)
        transport.write(b" last")
        assert transport.dataBuffer.endswith(b" last")  # queued behind the remainder
        assert 0 < len(transport.dataBuffer) < len(big)  # the kernel took a part
        reader.settimeout(0.2)
        received = b""
        with contextlib.suppress(TimeoutError):
            while chunk := reader.recv(65536):
                received += chunk
        # Then what Twisted sends on its next turns: nothing lost, nothing overtaken.
        assert received + transport.dataBuffer == big + b" last"
