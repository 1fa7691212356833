"""The credential a stream was opened with, and whether it still authenticates its user.

A stream is opened with a credential: a session, a token, or a stream ticket that one of those
issued. ``Credential.problem()`` asks the database (and the session store) whether it still
holds, and gives the reason a stream relying on it must end, or None (``recheck.py`` asks).

Credentials are named by a fingerprint, an HMAC keyed by ``SECRET_KEY``: it travels in control
messages and in tickets (which go in URLs) and reveals nothing of the secret.
"""

from dataclasses import dataclass
from importlib import import_module

from django.conf import settings
from django.contrib import auth
from django.contrib.auth.models import AbstractBaseUser
from django.utils.crypto import constant_time_compare, salted_hmac
from rest_framework.authentication import SessionAuthentication, TokenAuthentication
from rest_framework.authtoken.models import Token
from rest_framework.request import Request

from .revocation import revoked_credential_key
from .shared_cache import shared_cache

# Why a stream ended: the ``reason`` of its closing ``revoked`` event (see docs/events.md).
SESSION_ENDED = "session-ended"
TOKEN_DELETED = "token-deleted"
PASSWORD_CHANGED = "password-changed"
USER_INACTIVE = "user-inactive"
TOPIC_DENIED = "topic-denied"

SESSION = "session"
TOKEN = "token"


def fingerprint(secret: str) -> str:
    return salted_hmac("events.access.fingerprint", secret).hexdigest()[:32]


@dataclass(frozen=True, slots=True)
class Credential:
    """How a stream authenticated: ``kind`` is SESSION or TOKEN, ``fingerprint`` names it.

    ``secret`` (the session or token key) stays in this process's memory, and is None when the
    stream came with a ticket: only the fingerprint travels. ``session_hash`` is the user's
    session auth hash when a session issued it, which changes with the password.
    """

    kind: str
    fingerprint: str
    secret: str | None = None
    session_hash: str | None = None

    @classmethod
    def of_request(cls, request: Request) -> "Credential | None":
        """The credential a DRF request authenticated with (None for other authentications)."""
        authenticator = request.successful_authenticator
        if isinstance(authenticator, TokenAuthentication) and isinstance(request.auth, Token):
            return cls(TOKEN, fingerprint(request.auth.key), secret=request.auth.key)
        if isinstance(authenticator, SessionAuthentication):
            key = request.session.session_key
            if key:
                user = request.user
                assert isinstance(user, AbstractBaseUser)  # authenticated by the session
                return cls(SESSION, fingerprint(key), key, user.get_session_auth_hash())
        return None

    def problem(self, user: AbstractBaseUser) -> str | None:
        """Why this credential no longer authenticates ``user`` (fresh from the database)."""
        if not user.is_active:
            return USER_INACTIVE
        if self.kind == TOKEN:
            if self.secret is not None:
                exists = Token.objects.filter(key=self.secret, user_id=user.pk).exists()
            else:  # from a ticket: find the user's tokens by fingerprint
                keys = Token.objects.filter(user_id=user.pk).values_list("key", flat=True)
                exists = any(constant_time_compare(fingerprint(k), self.fingerprint) for k in keys)
            return None if exists else TOKEN_DELETED
        if self.secret is not None:
            return _session_problem(self.secret, user)
        # From a ticket: the session itself cannot be looked up, but its end was recorded.
        revoked = shared_cache().get(revoked_credential_key(self.fingerprint))
        if revoked:
            return str(revoked)
        if self.session_hash and not _session_hash_matches(user, self.session_hash):
            return PASSWORD_CHANGED
        return None


def _session_problem(session_key: str, user: AbstractBaseUser) -> str | None:
    # Django's checks (auth.get_user), read-only: get_user may flush the session or give it a
    # new key, which the browser, holding the old one in its cookie, would never learn.
    session = import_module(settings.SESSION_ENGINE).SessionStore(session_key)
    if str(session.get(auth.SESSION_KEY)) != str(user.pk):
        return SESSION_ENDED
    if not _session_hash_matches(user, session.get(auth.HASH_SESSION_KEY) or ""):
        return PASSWORD_CHANGED
    return None


def _session_hash_matches(user: AbstractBaseUser, session_hash: str) -> bool:
    hashes = [user.get_session_auth_hash(), *user.get_session_auth_fallback_hash()]
    return any(constant_time_compare(known, session_hash) for known in hashes)
