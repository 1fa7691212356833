"""Stream tickets: open a stream from a URL without putting a long-lived secret in it.

An ``EventSource`` cannot send headers: a page on another origin can only authenticate it with a
cookie or with something in the URL, where URLs end up in access logs and browser history. A
ticket (``POST /api/events/tickets/``) is what goes in the URL instead: signed with Django's
signing (``SECRET_KEY``), bound to one user and the topics it was asked for, and valid for
``EVENTS_TICKET_SECONDS`` only. It can be used several times within that time (the browser
reconnects to the same URL), and never after the credential that asked for it stops holding (a
logout, a deleted token, a password change, a deactivated user). It names that credential by
fingerprint only.
"""

from dataclasses import dataclass

from django.contrib.auth import get_user_model
from django.contrib.auth.models import AbstractBaseUser
from django.core import signing
from rest_framework.authentication import BaseAuthentication
from rest_framework.exceptions import AuthenticationFailed
from rest_framework.request import Request

from ..conf import event_settings
from .credentials import Credential

_SALT = "events.stream-ticket"
TICKET_PARAMETER = "ticket"


@dataclass(frozen=True, slots=True)
class StreamTicket:
    user_pk: str
    topics: tuple[str, ...]
    credential: Credential | None  # None: issued under an authentication that has no credential

    def sign(self) -> str:
        credential = self.credential
        fields: list[object] = [self.user_pk, list(self.topics)]
        if credential is not None:
            fields += [credential.kind, credential.fingerprint, credential.session_hash]
        return signing.dumps(fields, salt=_SALT, compress=True)

    @classmethod
    def read(cls, value: str, max_age: int) -> "StreamTicket":
        """Raises signing.BadSignature (or SignatureExpired) unless ``value`` is a valid ticket."""
        fields = signing.loads(value, salt=_SALT, max_age=max_age)
        user_pk, topics, *credential = fields
        return cls(
            str(user_pk),
            tuple(topics),
            Credential(credential[0], credential[1], session_hash=credential[2])
            if credential
            else None,
        )


class StreamTicketAuthentication(BaseAuthentication):
    """Authenticates a stream request by its ``?ticket=``; other requests are left to others."""

    def authenticate(self, request: Request) -> tuple[AbstractBaseUser, StreamTicket] | None:
        value = request.query_params.get(TICKET_PARAMETER)
        if not value:
            return None
        try:
            ticket = StreamTicket.read(value, max_age=event_settings().ticket_seconds)
        except signing.SignatureExpired:
            raise AuthenticationFailed(
                "This stream ticket has expired: ask for a new one."
            ) from None
        except (signing.BadSignature, ValueError, TypeError, IndexError):
            raise AuthenticationFailed("Invalid stream ticket.") from None
        user = get_user_model()._default_manager.filter(pk=ticket.user_pk).first()
        if user is None or not user.is_active:
            raise AuthenticationFailed("This stream ticket's user is inactive or deleted.")
        problem = ticket.credential.problem(user) if ticket.credential else None
        if problem:
            raise AuthenticationFailed(f"This stream ticket was revoked ({problem}).")
        return user, ticket
