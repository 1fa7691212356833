"""What an open stream was granted, and the recheck that ends it once that no longer holds.

When a user's access may have changed (``revocation.py``), every process rechecks that user's
open streams: ``StreamAccess.check()`` asks the database whether the stream's credential still
authenticates the user and whether the topic rule still lets them read each topic, and gives the
reason the stream must end, or None. ``recheck()`` runs those checks for the streams of a process
(``delivery/hub.py`` calls it) and revokes those whose access is gone.
"""

import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Protocol

from asgiref.sync import sync_to_async
from django.contrib import auth
from django.db import close_old_connections

from ..broker.base import AccessChange
from .credentials import SESSION_ENDED, TOPIC_DENIED, USER_INACTIVE, Credential
from .topics import denied_topics

logger = logging.getLogger(__name__)


@dataclass(frozen=True, slots=True)
class StreamAccess:
    """What one open stream was granted: to whom, with which credential, for which topics."""

    user_pk: str
    credential: Credential | None
    topics: tuple[str, ...]

    def ended_by(self, credential: str | None, reason: str | None) -> str | None:
        """The reason to end at once if ``credential`` (a control message's) is this stream's."""
        if credential and self.credential and self.credential.fingerprint == credential:
            return reason or SESSION_ENDED
        return None

    def check_in_worker_thread(self) -> str | None:
        """``check()`` from a thread outside any request: Django closes a request's database
        connections when it ends; here nothing would, so this does."""
        close_old_connections()
        try:
            return self.check()
        finally:
            close_old_connections()

    def check(self) -> str | None:
        """Why this stream must end now, or None if its access holds. Queries the database."""
        user_model = auth.get_user_model()
        user = user_model._default_manager.filter(pk=self.user_pk).first()
        if user is None:
            return USER_INACTIVE
        if self.credential is not None:
            problem = self.credential.problem(user)
            if problem:
                return problem
        if denied_topics(user, self.topics):
            return TOPIC_DENIED
        return None


class Revocable(Protocol):
    """An open stream as the recheck sees it (``delivery.hub.Subscriber``)."""

    @property
    def access(self) -> StreamAccess | None: ...

    @property
    def ended(self) -> bool: ...

    def revoke(self, reason: str) -> None: ...


async def recheck(streams: Iterable[Revocable], change: AccessChange | None) -> None:
    """Revoke the streams whose access ``change`` ended (None: whatever changed, unknown).

    One stream at a time: after a lost connection, all of a process's streams may be rechecked,
    and the database should see one query at a time from it, not thousands at once."""
    for stream in streams:
        access = stream.access
        if access is None or stream.ended:  # ended while the streams before it were rechecked
            continue
        reason = None if change is None else access.ended_by(change.credential, change.reason)
        if reason is None:
            try:
                # Not thread-sensitive: the stream's own request no longer holds a thread.
                reason = await sync_to_async(
                    access.check_in_worker_thread, thread_sensitive=False
                )()
            except Exception:
                # Unknown is not revoked: the stream stays, and its reconnects are checked.
                logger.exception(
                    "Could not recheck the access of a stream of user %s", access.user_pk
                )
                continue
        if reason is not None:
            logger.info("Ending a stream of user %s: %s", access.user_pk, reason)
            stream.revoke(reason)
