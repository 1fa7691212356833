"""Who a log line is about: the request id and the user id, added to every record.

``RequestContextMiddleware`` remembers the request for as long as it is handled (a stream's
request: as long as the stream lasts), and takes the request id from nginx's ``X-Request-ID``
header, or makes one; it writes each request's access line too (``access_log.py``).
``RequestContextFilter`` adds ``request_id`` and ``user_id`` to the records logged meanwhile;
lines about a stream or an event add ``stream_id`` and ``event_id`` themselves. The JSON formatter
(``LOG_FORMAT=json``) writes them as fields.
"""

import logging
import re
import secrets
from collections.abc import Awaitable, Callable
from contextvars import ContextVar

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.core.signals import request_finished
from django.dispatch import receiver
from django.http import HttpRequest, HttpResponseBase
from django.utils.functional import SimpleLazyObject, empty

from .access_log import log_request

REQUEST_ID_HEADER = "X-Request-ID"
# A request id from the proxy is kept only if it looks like one: it ends up in every log line.
_REQUEST_ID = re.compile(r"[A-Za-z0-9._:-]{1,64}")

_current_request: ContextVar[HttpRequest | None] = ContextVar("current_request", default=None)
_current_request_id: ContextVar[str | None] = ContextVar("current_request_id", default=None)


class RequestContextMiddleware:
    """Sync and async: Django's ASGI handler calls it as a coroutine; gunicorn, and the stream's
    handler (``events/asgi.py``), as a function."""

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
        request_id = self._begin(request)
        response = self.get_response(request)
        assert isinstance(response, HttpResponseBase)
        response[REQUEST_ID_HEADER] = request_id
        log_request(request, response)
        return response

    async def _acall(self, request: HttpRequest) -> HttpResponseBase:
        request_id = self._begin(request)
        response = await self.get_response(request)  # type: ignore[misc]
        assert isinstance(response, HttpResponseBase)
        response[REQUEST_ID_HEADER] = request_id
        log_request(request, response)
        return response

    def _begin(self, request: HttpRequest) -> str:
        offered = request.headers.get(REQUEST_ID_HEADER, "")
        request_id = offered if _REQUEST_ID.fullmatch(offered) else secrets.token_hex(16)
        _current_request.set(request)
        _current_request_id.set(request_id)
        return request_id


@receiver(request_finished)
def _forget_request(**kwargs: object) -> None:
    """A WSGI thread serves its next request next: its lines must not carry this one's ids.
    (Not at the end of the middleware: a streaming response is sent after it, and its lines
    carry the ids too.)"""
    _current_request.set(None)
    _current_request_id.set(None)


class RequestContextFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "request_id"):
            record.request_id = _current_request_id.get()
        if not hasattr(record, "user_id"):
            record.user_id = _user_id(_current_request.get())
        return True


def _user_id(request: HttpRequest | None) -> str | None:
    user = getattr(request, "user", None)
    if user is None:
        return None
    # Never evaluate the lazy session user here: that queries the database, possibly from the
    # event loop; DRF replaces it with the authenticated user once it has one.
    if isinstance(user, SimpleLazyObject) and user._wrapped is empty:
        return None
    return str(user.pk) if user.is_authenticated else None
