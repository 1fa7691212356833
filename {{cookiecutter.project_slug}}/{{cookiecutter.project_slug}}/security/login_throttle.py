"""Sign-in attempts per account (``LOGIN_RATE``) and per client address (``LOGIN_ADDRESS_RATE``),
counted exactly over every process: a password cannot be guessed faster than they allow.

Every ``authenticate()`` with a username (the sign-in page, the admin's) counts one attempt for
that username and one for the client's address (``proxies.py``: not one the client can choose),
right or wrong, in the events broker's rate limits (``events/broker/rates.py``: in Redis when
``REDIS_URL`` is set). Over a rate, the attempt is refused without checking the password, and the
page answers 429 with ``Retry-After``: the right password too is refused until then. Counting
attempts rather than failures is what makes the count exact: whether a password was wrong is
known only after the check, too late for a burst.

Per account, whoever makes the attempts, a guesser spread over many addresses is held too; the
price is that one can hold up another's sign-in for a window (no longer: nothing is locked for
good). Per address, one guesser cannot try many accounts; that rate is higher because many people
can share an address (an office behind NAT).
"""

import logging
from collections.abc import Awaitable, Callable
from typing import Any

from asgiref.sync import iscoroutinefunction, markcoroutinefunction, sync_to_async
from django.conf import settings
from django.contrib.auth.backends import ModelBackend
from django.contrib.auth.models import User
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase

from ..events.broker import get_broker
from ..events.broker.rates import Rate

logger = logging.getLogger(__name__)

# Set on a request whose sign-in was refused for its rate: the seconds until it may try again.
_REFUSED_FOR = "_login_refused_for"


class LoginRateBackend(ModelBackend):
    """Django's ``ModelBackend``, counting each attempt first: over a rate, the attempt is stopped
    (``PermissionDenied`` ends ``authenticate()``) before the password is checked."""

    def authenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if request is not None and username is not None:
            self._count_attempt(request, username)
        return super().authenticate(request, username, password, **kwargs)

    async def aauthenticate(
        self,
        request: HttpRequest | None,
        username: str | None = None,
        password: str | None = None,
        **kwargs: Any,
    ) -> User | None:
        if request is not None and username is not None:
            await sync_to_async(self._count_attempt)(request, username)
        return await super().aauthenticate(request, username, password, **kwargs)

    def _count_attempt(self, request: HttpRequest, username: str) -> None:
        address = request.META.get("REMOTE_ADDR", "")
        limits = get_broker().rate_limits
        wait = 0.0
        # Both rates are checked at startup (events.E001).
        for key, rate in (
            (f"login_account_{username.casefold()}", Rate.parse(settings.LOGIN_RATE)),
            (f"login_address_{address}", Rate.parse(settings.LOGIN_ADDRESS_RATE)),
        ):
            if rate is not None:
                wait = max(wait, limits.hit(key, rate))
        if wait:
            logger.warning(
                "Sign-in refused over the login rates for %r from %s; retry in %.0f s",
                username,
                address,
                wait,
            )
            setattr(request, _REFUSED_FOR, wait)
            raise PermissionDenied


class LoginRateMiddleware:
    """Turns the sign-in page's answer to a refused attempt into a 429 with ``Retry-After``. Sync
    and async, as the request comes: no thread hop for an async request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], object]) -> None:
        self.get_response = get_response
        self._async = iscoroutinefunction(get_response)
        if self._async:
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> HttpResponseBase | Awaitable[HttpResponseBase]:
        if self._async:
            return self._acall(request)
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        return _refused(request) or response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        response = await self.get_response(request)  # type: ignore[misc]
        assert isinstance(response, HttpResponseBase)
        return _refused(request) or response


def _refused(request: HttpRequest) -> HttpResponse | None:
    wait = getattr(request, _REFUSED_FOR, None)
    if wait is None:
        return None
    seconds = max(int(wait + 0.999), 1)
    refused = HttpResponse(
        f"Too many sign-in attempts. Try again in {seconds} s.\n",
        status=429,
        content_type="text/plain; charset=utf-8",
    )
    refused["Retry-After"] = str(seconds)
    return refused
