"""Which Pub/Sub messages carry an id from history: those whose id the publish script signed.

Anyone who may PUBLISH to Redis (say, another service with a PUBLISH-only ACL, as docs/events.md
invites) could otherwise send ``<huge id>\\n<envelope>`` in the script's framing: clients would
store that id as their ``Last-Event-ID`` and the feed would take it for the newest event. So the
script, which alone knows the id ``XADD`` returned, publishes ``<id> <signature>\\n<envelope>``,
the signature being ``SHA1(key + id)`` in hex, computed in Redis's Lua (which offers SHA1 only).
The key is derived from Django's ``SECRET_KEY`` (and ``SECRET_KEY_FALLBACKS``, so that a key
rotation loses nothing) and never leaves the project's processes and Redis. A message whose id is
not signed with one of them is skipped as malformed. Only ids are signed: a signed id replayed with
other data is older than what the feed has seen, so it is dropped as already delivered.
"""

import hashlib
import hmac

from ...exceptions import InvalidEventId


def signing_keys(secret_key: str, fallbacks: list[str] | tuple[str, ...]) -> tuple[str, ...]:
    """Keys for the current ``SECRET_KEY`` first (used to sign), then for its fallbacks."""
    return tuple(
        hashlib.sha256(f"events.history-id:{secret}".encode()).hexdigest()
        for secret in (secret_key, *fallbacks)
    )


def signature(key: str, event_id: str) -> str:
    """What the publish script computes: ``redis.sha1hex(key .. id)``."""
    return hashlib.sha1(f"{key}{event_id}".encode()).hexdigest()


def verified_id(head: bytes, keys: tuple[str, ...]) -> str:
    """The id of an ``<id> <signature>`` head; raises InvalidEventId unless a key signed it."""
    event_id, _, given = head.decode(errors="replace").partition(" ")
    if not any(hmac.compare_digest(signature(key, event_id), given) for key in keys):
        raise InvalidEventId(f"Event id {event_id[:64]!r} is not signed by the publish script.")
    return event_id
