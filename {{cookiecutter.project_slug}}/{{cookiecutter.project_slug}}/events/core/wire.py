"""The Server-Sent Events wire format (https://html.spec.whatwg.org/#server-sent-events).

Every function returns complete, ready-to-send bytes. Fields are built so that no value can inject
another field: ``data`` is split into one ``data:`` line per line, and ``id``/``event`` never
contain CR, LF or NUL (callers validate them; this module refuses them as a last line of defence).
"""

import re

_LINE_BREAK = re.compile(r"\r\n|\r|\n")
_FORBIDDEN_IN_FIELD = re.compile(r"[\r\n\x00]")


def _field_value(name: str, value: str) -> str:
    if _FORBIDDEN_IN_FIELD.search(value):
        raise ValueError(f"SSE {name} must not contain CR, LF or NUL: {value!r}")
    return value


def encode_event(data: str, *, event_type: str | None = None, event_id: str | None = None) -> bytes:
    lines = []
    if event_id is not None:
        lines.append(f"id: {_field_value('id', event_id)}")
    if event_type is not None:
        lines.append(f"event: {_field_value('event', event_type)}")
    lines.extend(f"data: {line}" for line in _LINE_BREAK.split(data))
    return ("\n".join(lines) + "\n\n").encode()


def encode_comment(text: str) -> bytes:
    """A comment line: kept alive by proxies, never delivered to ``onmessage``."""
    return "".join(f": {line}\n" for line in _LINE_BREAK.split(text)).encode() + b"\n"


def encode_retry(milliseconds: int) -> bytes:
    """Tells the browser how long to wait before it reconnects."""
    return f"retry: {int(milliseconds)}\n\n".encode()


HEARTBEAT = encode_comment("ping")
