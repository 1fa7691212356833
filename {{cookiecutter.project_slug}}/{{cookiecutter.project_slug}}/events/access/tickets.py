"""Stream tickets: open a stream from a URL without putting a long-lived secret in it.

An ``EventSource`` cannot send headers: a page on another origin can only authenticate it with a
cookie or with something in the URL, where URLs end up in access logs and browser history. A
ticket (``POST /api/events/tickets/``) is what goes in the URL instead: bound to one user and the
topics it was asked for, and valid for ``EVENTS_TICKET_SECONDS`` only. It can be used several times
within that time (the browser reconnects to the same URL), and never after the credential that
asked for it stops holding (a logout, a deleted token, a password change, a deactivated user). It
names that credential by fingerprint only.

A ticket is sealed, not just signed: encrypted and authenticated (Fernet: AES-128-CBC and
HMAC-SHA256, from ``cryptography``) with a key derived from ``SECRET_KEY``, older tickets opening
with ``SECRET_KEY_FALLBACKS``. Whoever sees one (a log, a screenshot, a proxy) learns nothing from
it: not the user, the topics, nor the fingerprint. It still opens streams until it expires, which
is why no log the project configures writes it (``observability/access_log.py``, the nginx
templates).
"""

import base64
import json
import time
from dataclasses import dataclass
from functools import lru_cache

from cryptography.fernet import Fernet, InvalidToken, MultiFernet
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.kdf.hkdf import HKDF
from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from ..conf import event_settings
from .credentials import Credential

_KEY_INFO = b"events.stream-ticket"
TICKET_PARAMETER = "ticket"


class InvalidTicket(Exception):
    """Not a ticket sealed with this deployment's keys (edited, forged, or of another site)."""


class ExpiredTicket(InvalidTicket):
    pass


@lru_cache(maxsize=4)
def _sealer(secrets: tuple[str, ...]) -> MultiFernet:
    # One key per secret, derived for this use only: the first seals, every one opens.
    return MultiFernet([Fernet(_derive_key(secret)) for secret in secrets])


def _derive_key(secret: str) -> bytes:
    key = HKDF(algorithm=hashes.SHA256(), length=32, salt=None, info=_KEY_INFO).derive(
        secret.encode()
    )
    return base64.urlsafe_b64encode(key)


def _current_sealer() -> MultiFernet:
    return _sealer((settings.SECRET_KEY, *settings.SECRET_KEY_FALLBACKS))


@dataclass(frozen=True, slots=True)
class StreamTicket:
    user_pk: str
    topics: tuple[str, ...]
    credential: Credential | None  # None: issued under an authentication that has no credential

    def seal(self) -> str:
        credential = self.credential
        fields: list[object] = [self.user_pk, list(self.topics)]
        if credential is not None:
            fields += [credential.kind, credential.fingerprint, credential.session_hash]
        plain = json.dumps(fields, separators=(",", ":")).encode()
        return _current_sealer().encrypt(plain).decode("ascii")

    @classmethod
    def open(cls, value: str, max_age: int) -> "StreamTicket":
        """Raises InvalidTicket (ExpiredTicket after ``max_age`` seconds) unless ``value`` is a
        ticket sealed here."""
        sealer = _current_sealer()
        try:
            token = value.encode("ascii")
            fields = json.loads(sealer.decrypt(token))
            sealed_at = sealer.extract_timestamp(token)
            user_pk, topics, *credential = fields
            ticket = cls(
                str(user_pk),
                tuple(str(topic) for topic in topics),
                Credential(credential[0], credential[1], session_hash=credential[2])
                if credential
                else None,
            )
        except (InvalidToken, UnicodeError, ValueError, TypeError, IndexError):
            raise InvalidTicket from None
        if time.time() - sealed_at > max_age:
            raise ExpiredTicket
        return ticket


class StreamTicketAuthentication(BaseAuthentication):
    """Authenticates a stream request by its ``?ticket=``; other requests are left to others."""

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, StreamTicket] | None:
        value = request.query_params.get(TICKET_PARAMETER)
        if not value:
            return None
        try:
            ticket = StreamTicket.open(value, max_age=event_settings().ticket_seconds)
        except ExpiredTicket:
            raise AuthenticationFailed(
                "This stream ticket has expired: ask for a new one."
            ) from None
        except InvalidTicket:
            raise AuthenticationFailed("Invalid stream ticket.") from None
        user = get_user_model()._default_manager.filter(pk=ticket.user_pk).first()
        if user is None or not user.is_active:
            raise AuthenticationFailed("This stream ticket's user is inactive or deleted.")
        problem = ticket.credential.problem(user) if ticket.credential else None
        if problem:
            raise AuthenticationFailed(f"This stream ticket was revoked ({problem}).")
        return user, ticket
