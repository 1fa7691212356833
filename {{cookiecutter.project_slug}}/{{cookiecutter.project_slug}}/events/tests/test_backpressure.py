"""Flow control on servers whose ``send()`` waits (uvicorn, hypercorn): a send that takes too long
cuts the client off. Under Daphne it is tested against a real server (tests/test_resilience.py)."""

import asyncio
from typing import Any

import pytest

from ..backpressure import ClientTooSlow, StreamSend


def test_a_send_that_never_completes_cuts_the_client_off() -> None:
    async def blocked(message: dict[str, Any]) -> None:
        await asyncio.Event().wait()  # a client that reads nothing, on a server that waits

    async def scenario() -> None:
        send = StreamSend(blocked, max_backlog_bytes=1024, send_timeout=0.2)
        with pytest.raises(ClientTooSlow):
            await send({"type": "http.response.body", "body": b"x", "more_body": True})
        assert send.closed
        await send({"type": "http.response.body", "body": b"y"})  # goes nowhere, returns

    asyncio.run(scenario())


def test_sends_that_complete_pass_through_in_order() -> None:
    sent: list[dict[str, Any]] = []

    async def record(message: dict[str, Any]) -> None:
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
