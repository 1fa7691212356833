"""The project's ASGI application, counting how often the server encodes each event.

For tests only (``tests/test_encoding.py``): it wraps the SSE encoder wherever the events app
bound it, and answers ``GET /test/encodes/`` with the number of encodings per event type, so a
test can tell from outside the process how many times one published event was encoded.
"""

import json
import sys
from collections import Counter
from typing import Any

from django.apps import apps

from config.asgi import application as project_application

COUNTS_PATH = "/test/encodes/"
encodes: Counter[str] = Counter()


def _counting(encode: Any) -> Any:
    def counted(data: str, *, event_type: str | None = None, event_id: str | None = None) -> bytes:
        encodes[event_type or "message"] += 1
        return encode(data, event_type=event_type, event_id=event_id)

    return counted


def _wrap_encoders() -> None:
    package = apps.get_app_config("events").name
    original = sys.modules[package + ".core.wire"].encode_event
    counted = _counting(original)
    for name, module in list(sys.modules.items()):
        if name.startswith(package) and getattr(module, "encode_event", None) is original:
            module.encode_event = counted  # type: ignore[attr-defined]


_wrap_encoders()


async def application(scope: dict[str, Any], receive: Any, send: Any) -> None:
    if scope["type"] == "http" and scope["path"] == COUNTS_PATH:
        body = json.dumps(encodes).encode()
        await send(
            {
                "type": "http.response.start",
                "status": 200,
                "headers": [(b"content-type", b"application/json")],
            }
        )
        await send({"type": "http.response.body", "body": body})
        return
    await project_application(scope, receive, send)
