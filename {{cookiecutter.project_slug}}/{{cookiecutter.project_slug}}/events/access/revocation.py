"""Taking access away ends the streams that relied on it, on every process.

``recheck_streams(user)`` sends a control message (``broker.base.AccessChange``) to every process;
as soon as a process's feed receives it, the process rechecks the open streams of that user
(``recheck.py``: one database check per stream, one at a time) and ends, with a ``revoked`` event
naming the reason, those whose access is gone. The client's reconnection is then refused with 401
(or 403 for a topic), which makes an EventSource stop instead of looping.

``signals.py`` calls it for what Django itself knows of: a logout, a deleted token, a password
change, a deactivated or deleted user, changed permissions or groups. A project whose topic rule
reads its own data calls it when that data changes. A process whose Redis feed was reconnecting
when a control message was sent reads it when it is back (the Redis broker keeps the latest ones,
``broker/redis/history.py``); if it was gone too long for that, it rechecks every open stream.
Every reconnection of a client is checked in full.

Imports no model (the app's public API re-exports ``recheck_streams`` before models load).
"""

import logging

from ..broker import get_broker
from ..broker.base import AccessChange
from ..conf import event_settings
from ..exceptions import BrokerUnavailable
from .shared_cache import shared_cache

logger = logging.getLogger(__name__)


def revoked_credential_key(credential: str) -> str:
    """Cache key under which a revoked credential's reason is kept (read by stream tickets)."""
    return f"events:revoked-credential:{credential}"


def recheck_streams(
    user: object, *, credential: str | None = None, reason: str | None = None
) -> None:
    """Make every process recheck the open streams of ``user`` (a user or a primary key).

    ``credential`` (``credentials.fingerprint`` of a session or token key) names a credential that no
    longer holds: its streams end at once for ``reason``, and tickets it issued are refused.
    """
    user_key = str(getattr(user, "pk", user))
    if credential is not None:
        # Tickets carry only the fingerprint of a session: this is how they learn that it ended.
        try:
            shared_cache().set(
                revoked_credential_key(credential), reason, event_settings().ticket_seconds
            )
        except Exception:
            logger.exception("Could not record a revoked credential of user %s", user_key)
    try:
        get_broker().signal_access_change(AccessChange(user_key, credential, reason))
    except BrokerUnavailable as error:
        logger.error("Open streams of user %s were not rechecked: %s", user_key, error)
