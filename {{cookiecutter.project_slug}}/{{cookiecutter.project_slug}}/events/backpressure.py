"""Disconnects clients that stop reading, on servers whose ``send()`` never waits.

Daphne accepts every chunk at once and buffers whatever the socket does not take, so a client that
stops reading would make the server's memory grow without bound. This module finds the Twisted
transport behind Daphne's ``send`` and aborts the connection once its unsent data passes a limit.
The client reconnects and resumes from its ``Last-Event-ID``.

It leans on server internals, so it is kept to this module and tested against a real Daphne. On
other servers (uvicorn, hypercorn) ``send()`` waits while the client does not read; the hub's
bounded per-client buffer then disconnects the client instead.
"""

import functools
import logging
from collections.abc import Awaitable, Callable
from typing import Any

logger = logging.getLogger(__name__)

Send = Callable[[dict[str, Any]], Awaitable[None]]


class TwistedTransport:
    """The unsent bytes of a Twisted TCP transport (its ``FileDescriptor`` write buffer)."""

    def __init__(self, transport: Any) -> None:
        self._transport = transport

    def unsent_bytes(self) -> int:
        transport = self._transport
        return len(transport.dataBuffer) - transport.offset + transport._tempDataLen

    def abort(self) -> None:
        self._transport.abortConnection()


def daphne_transport(send: Send) -> TwistedTransport | None:
    """The transport of a Daphne connection, or None when ``send`` does not come from Daphne."""
    # Daphne 4 hands applications functools.partial(server.handle_reply, protocol); the protocol
    # is Twisted's HTTP request, whose channel owns the TCP transport.
    if not isinstance(send, functools.partial) or not send.args:
        return None
    transport = getattr(getattr(send.args[0], "channel", None), "transport", None)
    required = ("dataBuffer", "offset", "_tempDataLen", "abortConnection")
    if transport is None or not all(hasattr(transport, name) for name in required):
        return None
    return TwistedTransport(transport)


def guard_slow_client(send: Send, max_unsent_bytes: int) -> Send:
    """Wrap ``send`` so that a response body it cannot deliver fast enough is cut off."""
    transport = daphne_transport(send)
    if transport is None or max_unsent_bytes <= 0:
        return send

    aborted = False

    async def guarded_send(message: dict[str, Any]) -> None:
        nonlocal aborted
        await send(message)
        if message["type"] != "http.response.body" or aborted:
            return
        unsent = transport.unsent_bytes()
        if unsent > max_unsent_bytes:
            logger.info("Disconnected a client that stopped reading (%d bytes unsent)", unsent)
            # Daphne then reports http.disconnect, which ends the stream and frees its state.
            transport.abort()
            aborted = True

    return guarded_send
