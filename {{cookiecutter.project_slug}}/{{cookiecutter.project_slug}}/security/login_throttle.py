"""Sign-in attempts per account and per client address, counted exactly over every process: a
password cannot be guessed faster than ``LOGIN_RATE`` allows.

Every ``authenticate()`` with a username (the sign-in page, the admin's) counts one attempt for
that username and one for the client's address, right or wrong, in the events broker's rate limits
(``events/broker/rates.py``: Redis when ``REDIS_URL`` is set). Over the rate, the attempt is
refused without checking the password, and the page answers 429 with ``Retry-After``: the right
password too is refused until then. Counting attempts rather than failures is what makes the
count exact: whether a password was wrong is known only after the check, too late for a burst.
Per account, whoever makes the attempts, a guesser spread over many addresses is held too; the
price is that one can hold up another's sign-in for a window (no longer: nothing is locked for
good).
"""

import logging

from django.conf import settings
from django.contrib.auth.backends import BaseBackend
from django.core.exceptions import PermissionDenied
from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.utils.deprecation import MiddlewareMixin

from ..events.broker import get_broker
from ..events.broker.rates import Rate

logger = logging.getLogger(__name__)

# Set on a request whose sign-in was refused for its rate: the seconds until it may try again.
_REFUSED_FOR = "_login_refused_for"


class LoginRateBackend(BaseBackend):
    """First in ``AUTHENTICATION_BACKENDS``: counts the attempt, and stops it over the rate
    (``PermissionDenied`` ends ``authenticate()``); never signs anyone in itself."""

    def authenticate(
        self, request: HttpRequest | None, username: str | None = None, **credentials: object
    ) -> None:
        rate = Rate.parse(settings.LOGIN_RATE)  # checked at startup (events.E001)
        if request is None or username is None or rate is None:
            return None
        address = request.META.get("REMOTE_ADDR", "")
        limits = get_broker().rate_limits
        wait = max(
            limits.hit(f"login_account_{username.casefold()}", rate),
            limits.hit(f"login_address_{address}", rate),
        )
        if wait:
            logger.warning(
                "Sign-in refused over LOGIN_RATE for %r from %s; retry in %.0f s",
                username,
                address,
                wait,
            )
            setattr(request, _REFUSED_FOR, wait)
            raise PermissionDenied
        return None


class LoginRateMiddleware(MiddlewareMixin):
    """Turns the sign-in page's answer to a refused attempt into a 429 with ``Retry-After``."""

    def process_response(
        self, request: HttpRequest, response: HttpResponseBase
    ) -> HttpResponseBase:
        wait = getattr(request, _REFUSED_FOR, None)
        if wait is None:
            return response
        seconds = max(int(wait + 0.999), 1)
        refused = HttpResponse(
            f"Too many sign-in attempts. Try again in {seconds} s.\n",
            status=429,
            content_type="text/plain; charset=utf-8",
        )
        refused["Retry-After"] = str(seconds)
        return refused
