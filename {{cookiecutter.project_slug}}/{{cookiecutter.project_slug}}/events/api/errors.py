"""The API's one error shape, for every refusal: DRF's ``EXCEPTION_HANDLER``.

Every 4xx and 503 of the API is JSON of this shape, whichever step refused (the parser,
authentication, permissions, throttling, content negotiation, the view or the publish path)::

    {"detail": "<why, in a sentence>", "code": "<a stable name>", "errors": {"<field>": ["..."]}}

``errors`` is there only when fields are at fault (a 400 of validation): it maps each field to its
messages, nested fields by a dotted path (``topics.0``), errors of the body as a whole under
``non_field_errors``. ``code`` is DRF's (``not_authenticated``, ``throttled``, ``invalid``...) or
the events app's (``broker_unavailable``, ``idempotency_conflict``, ``too_large``).
"""

from typing import Any

from django.conf import settings
from django.core.exceptions import PermissionDenied, RequestDataTooBig
from django.http import Http404
from rest_framework import exceptions, status
from rest_framework.exceptions import APIException, ErrorDetail, ValidationError
from rest_framework.response import Response
from rest_framework.views import exception_handler

from ..exceptions import BrokerUnavailable, EventError, EventTooLarge, IdempotencyConflict


class RequestTooLarge(APIException):
    status_code = status.HTTP_413_REQUEST_ENTITY_TOO_LARGE
    default_code = "too_large"


class EventRefused(APIException):
    """An EventError of the publish path, with the status it answers."""

    def __init__(self, error: EventError) -> None:
        super().__init__(str(error), _CODES.get(type(error), "invalid"))
        self.status_code = _STATUSES.get(type(error), status.HTTP_400_BAD_REQUEST)


# What is not listed is a 400 "invalid" (a malformed event, or one only serializing shows bad).
_STATUSES = {
    EventTooLarge: status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
    IdempotencyConflict: status.HTTP_422_UNPROCESSABLE_ENTITY,
    BrokerUnavailable: status.HTTP_503_SERVICE_UNAVAILABLE,
}
_CODES = {
    EventTooLarge: "too_large",
    IdempotencyConflict: "idempotency_conflict",
    BrokerUnavailable: "broker_unavailable",
}


def as_api_exception(exc: Exception) -> Exception:
    """``exc`` as the APIException it answers as, when it is a refusal of Django's or the events
    app's; otherwise ``exc`` itself."""
    if isinstance(exc, Http404):
        return exceptions.NotFound(str(exc) or None)
    if isinstance(exc, PermissionDenied):
        return exceptions.PermissionDenied(str(exc) or None)
    if isinstance(exc, RequestDataTooBig):
        limit = settings.DATA_UPLOAD_MAX_MEMORY_SIZE
        return RequestTooLarge(f"Request body exceeds DATA_UPLOAD_MAX_MEMORY_SIZE ({limit} bytes).")
    if isinstance(exc, EventError):
        return EventRefused(exc)
    return exc


def api_exception_handler(exc: Exception, context: dict[str, Any]) -> Response | None:
    """DRF's handler (status, ``Retry-After``, ``WWW-Authenticate``), its body reshaped. None for
    an exception that is not a refusal: a bug, which Django answers 500 and logs."""
    exc = as_api_exception(exc)
    if not isinstance(exc, APIException):
        return None
    response = exception_handler(exc, context)
    if response is None:  # not for APIExceptions, but DRF's signature allows it
        return None
    response.data = error_body(exc, response.data)
    return response


def error_body(exc: APIException, data: Any) -> dict[str, Any]:
    """The error shape for ``exc``, whose body DRF made ``data``."""
    if isinstance(exc, ValidationError):
        errors = dict(_field_messages(data))
        detail = " ".join(
            message if field == _NON_FIELD else f"{field}: {message}"
            for field, messages in errors.items()
            for message in messages
        )
        return {"detail": detail or "Invalid input.", "code": "invalid", "errors": errors}
    given = data.get("detail") if isinstance(data, dict) else None
    if isinstance(given, str):
        detail = given
    else:  # raised with a list or dict, as validation errors are
        detail = " ".join(message for _, messages in _field_messages(data) for message in messages)
    code = given.code if isinstance(given, ErrorDetail) and given.code else exc.default_code
    return {"detail": str(detail), "code": str(code)}


_NON_FIELD = "non_field_errors"


def _field_messages(data: Any, path: str = "") -> list[tuple[str, list[str]]]:
    """``data`` (DRF's nest of dicts and lists of messages) as (dotted field path, messages)."""
    if isinstance(data, dict):
        return [
            pair
            for key, value in data.items()
            for pair in _field_messages(value, f"{path}.{key}" if path else str(key))
        ]
    if isinstance(data, list) and not all(isinstance(item, str) for item in data):
        return [
            pair
            for index, value in enumerate(data)
            for pair in _field_messages(value, f"{path}.{index}" if path else str(index))
        ]
    messages = data if isinstance(data, list) else [data]
    return [(path or _NON_FIELD, [str(message) for message in messages])]
