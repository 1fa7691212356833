"""The API's contract in OpenAPI 3 (drf-spectacular): what the views take and answer.

Kept apart from the views, which stay readable; ``GET /api/schema/`` serves the result, and
``/api/docs/`` a page to read it (when DEBUG is on, or for staff).
"""

from typing import Any

from django.conf import settings
from drf_spectacular.extensions import OpenApiAuthenticationExtension
from drf_spectacular.openapi import AutoSchema
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiExample, OpenApiParameter, OpenApiResponse
from drf_spectacular.views import SpectacularSwaggerSplitView
from rest_framework import serializers
from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

from ..access.tickets import StreamTicketAuthentication
from .serializers import NAME_SCHEMA, PublishEventSerializer, StreamTicketSerializer


class ErrorSerializer(serializers.Serializer[Any]):
    """Every refusal's body (errors.py)."""

    detail = serializers.CharField(help_text="Why, in a sentence a person can read.")
    code = serializers.CharField(
        help_text=(
            "A stable name for the refusal: `invalid`, `parse_error`, `not_authenticated`,"
            " `authentication_failed`, `permission_denied`, `not_acceptable`,"
            " `unsupported_media_type`, `too_large`, `throttled`, `idempotency_conflict`,"
            " `broker_unavailable`..."
        )
    )
    errors = serializers.DictField(  # type: ignore[assignment]  # a field, not .errors
        child=serializers.ListField(child=serializers.CharField()),
        required=False,
        help_text=(
            "Only when fields are at fault: each field's messages, a nested field by its dotted"
            " path (`topics.0`), the body as a whole under `non_field_errors`."
        ),
    )


class EventIdSerializer(serializers.Serializer[Any]):
    id = serializers.CharField(help_text='The event\'s id, "<milliseconds>-<sequence>".')


class TicketSerializer(serializers.Serializer[Any]):
    ticket = serializers.CharField(help_text="Pass it as ?ticket= to the stream.")
    expires_in = serializers.IntegerField(help_text="Seconds during which it opens streams.")
    url = serializers.CharField(help_text="The stream URL with the ticket.")


class MetricsSerializer(serializers.Serializer[Any]):
    streams = serializers.IntegerField()
    channels = serializers.IntegerField()
    tasks = serializers.IntegerField()
    threads = serializers.IntegerField()
    malformed = serializers.IntegerField()
    feed_problem = serializers.CharField(allow_null=True)


def _error(description: str) -> OpenApiResponse:
    return OpenApiResponse(ErrorSerializer, description=description)


# An id the server sent: an event's id with one partition, a position over several
# (core/positions.py). The server also takes 20-digit parts up to 2**64 - 1, which it never sends
# before the year 318 million: 19 digits say it without a bound to compute.
_ID = "[0-9]{1,19}-[0-9]{1,19}"
_POSITION = _ID + "|p[0-9]{1,4}(\\.[0-9]{1,4}_" + _ID + ")+"
_EVENT_ID_SCHEMA = {"type": "string", "pattern": "^(" + _POSITION + ")$", "maxLength": 2048}
# Where to resume: an id, or empty for "from now" (as if left out).
_RESUME_AFTER_SCHEMA = {"type": "string", "pattern": "^(" + _POSITION + ")?$", "maxLength": 2048}
_STREAM_EVENT_SCHEMA = {
    "type": "object",
    "properties": {
        "id": {**_EVENT_ID_SCHEMA, "description": "Where to resume after this event."},
        "event": {**NAME_SCHEMA, "description": "The event's type (`message` when absent)."},
        "data": {"type": "string", "description": "The event's data, as JSON text."},
        "retry": {"type": "integer", "description": "Milliseconds to wait before reconnecting."},
    },
    "required": ["id", "data"],
}
_TOO_MANY = _error("Over a per-user limit; Retry-After says when to try again.")
_UNAUTHENTICATED = _error("No or bad credentials.")
_NOT_ACCEPTABLE = _error("The Accept header (or ?format=) asks for a format this does not answer.")
# What Daphne answers before any view: a request line or a header line over 16 KiB.
_URI_TOO_LONG = _error("The request line (its URL) is over 16 KiB.")
_HEADER_TOO_LONG = _error("A header line is over 16 KiB.")
# What any operation that takes a JSON body may answer before reading it.
_BODY_REFUSALS = {
    413: _error("The body is larger than DATA_UPLOAD_MAX_MEMORY_SIZE."),
    415: _error("A body that is not application/json."),
}
RETRY_AFTER = OpenApiParameter(
    "Retry-After",
    OpenApiTypes.INT,
    OpenApiParameter.HEADER,
    response=[429],
    description="Seconds to wait before trying again.",
)

STREAM: dict[str, Any] = {
    "summary": "The signed-in user's events, as Server-Sent Events",
    "description": (
        "Broadcasts, the user's private events and the topics asked for, as `text/event-stream`"
        " (docs/events.md has the wire format). Each event has an `id:`; a client resumes after"
        " it with the `Last-Event-ID` header (browsers send it when they reconnect) or"
        " `?last_event_id=`. Besides the publishers' types, two are the server's own: `reset`"
        " (events were missed and history cannot replay them: reload your state; its id is a"
        " valid point to resume from) and `revoked` (access was taken away, with"
        ' `{"reason": ...}`; the reconnection is then refused). Comments (`: ping`) are'
        " heartbeats."
    ),
    "parameters": [
        OpenApiParameter(
            "topic",
            {
                "type": "array",
                "items": NAME_SCHEMA,
                "maxItems": settings.EVENTS_MAX_TOPICS_PER_STREAM,
            },
            explode=True,
            description="A topic to read; repeat it.",
        ),
        OpenApiParameter(
            "last_event_id",
            _RESUME_AFTER_SCHEMA,
            description="Resume after this id (first connection).",
        ),
        OpenApiParameter(
            "ticket", OpenApiTypes.STR, description="A stream ticket, instead of other credentials."
        ),
        OpenApiParameter(
            "Last-Event-ID",
            _RESUME_AFTER_SCHEMA,
            OpenApiParameter.HEADER,
            description="Resume after this id (sent by browsers when they reconnect).",
        ),
        RETRY_AFTER,
    ],
    "responses": {
        (200, "text/event-stream"): OpenApiResponse(
            _STREAM_EVENT_SCHEMA,
            description=(
                "The stream (it ends with the stream's lifetime): the schema is that of each"
                " event, as an EventSource reads it."
            ),
        ),
        # Errors are JSON whatever the client accepts (an EventSource asks for the stream).
        (400, "application/json"): _error(
            "A malformed topic, too many topics, or a malformed Last-Event-ID."
        ),
        (401, "application/json"): _UNAUTHENTICATED,
        (403, "application/json"): _error("A topic the user may not read, or not in the ticket."),
        (406, "application/json"): _NOT_ACCEPTABLE,
        (414, "application/json"): _URI_TOO_LONG,
        (431, "application/json"): _HEADER_TOO_LONG,
        (429, "application/json"): _error(
            "Over the user's open streams or its rate of new streams; Retry-After says when to"
            " try again."
        ),
    },
}

PUBLISH: dict[str, Any] = {
    "summary": "Publish an event",
    "request": PublishEventSerializer,
    "parameters": [
        OpenApiParameter(
            "Idempotency-Key",
            {"type": "string", "pattern": "^[\\x21-\\x7e][\\x20-\\x7e]{0,254}$"},
            OpenApiParameter.HEADER,
            description=(
                "1 to 255 printable ASCII characters: a retry with the same key publishes"
                " nothing and gets the first event's id."
            ),
        ),
        OpenApiParameter(
            "Idempotent-Replayed",
            {"type": "string", "enum": ["true"]},
            OpenApiParameter.HEADER,
            response=[200],
            description="The event was published before, under this Idempotency-Key.",
        ),
        RETRY_AFTER,
    ],
    "responses": {
        201: OpenApiResponse(EventIdSerializer, description="Published."),
        200: OpenApiResponse(
            EventIdSerializer,
            description="Published before under this Idempotency-Key; nothing published now.",
        ),
        400: _error("A body (not JSON, or not an event) or an Idempotency-Key it cannot accept."),
        401: _UNAUTHENTICATED,
        403: _error("Without the 'Can publish events' permission."),
        406: _NOT_ACCEPTABLE,
        **_BODY_REFUSALS,
        413: _error("`data` is over EVENTS_MAX_PAYLOAD_BYTES, or the body too large."),
        414: _URI_TOO_LONG,
        431: _HEADER_TOO_LONG,
        422: _error("The Idempotency-Key was used for another event."),
        429: _TOO_MANY,
        503: _error("Redis is unavailable: nothing was published (or, on a timeout, maybe)."),
    },
    "examples": [
        OpenApiExample(
            "To a topic",
            value={"type": "headline", "data": {"title": "Hello"}, "topic": "news"},
            request_only=True,
        )
    ],
}

TICKET: dict[str, Any] = {
    "summary": "A short-lived ticket that opens streams from a URL",
    "request": StreamTicketSerializer,
    "parameters": [RETRY_AFTER],
    "responses": {
        201: TicketSerializer,
        400: _error("A body that is not JSON, malformed topics, or too many."),
        401: _UNAUTHENTICATED,
        403: _error("A topic the user may not read."),
        406: _NOT_ACCEPTABLE,
        **_BODY_REFUSALS,
        414: _URI_TOO_LONG,
        431: _HEADER_TOO_LONG,
        429: _error("Over the user's rate of new streams, which tickets count toward."),
    },
}

METRICS: dict[str, Any] = {
    "summary": "This process's streaming state (staff)",
    "responses": {
        200: MetricsSerializer,
        401: _UNAUTHENTICATED,
        403: _error("Not staff."),
        406: _NOT_ACCEPTABLE,
        414: _URI_TOO_LONG,
        431: _HEADER_TOO_LONG,
    },
}


def link_tickets_to_the_stream(result: dict[str, Any], **kwargs: Any) -> dict[str, Any]:
    """A postprocessing hook (SPECTACULAR_SETTINGS): a ticket's 201 links to the stream it opens,
    as an OpenAPI link, which clients and tools (schemathesis's stateful runs) follow."""
    for operations in result["paths"].values():
        post = operations.get("post")
        if post and post["operationId"] == "events_tickets_create":
            post["responses"]["201"]["links"] = {
                "OpenTheStream": {
                    "operationId": "events_stream_retrieve",
                    "parameters": {"ticket": "$response.body#/ticket"},
                    "description": "The stream of the ticket's topics (its `url`, too).",
                }
            }
    return result


class StreamTicketScheme(OpenApiAuthenticationExtension):  # type: ignore[no-untyped-call]
    """Tells the schema how a stream ticket authenticates (registered by being defined)."""

    target_class = StreamTicketAuthentication
    name = "streamTicket"

    def get_security_definition(self, auto_schema: AutoSchema) -> dict[str, str]:
        return {"type": "apiKey", "in": "query", "name": "ticket"}


class DebugOrStaff(BasePermission):
    def has_permission(self, request: Request, view: APIView) -> bool:
        return bool(settings.DEBUG or request.user.is_staff)


class ApiDocsView(SpectacularSwaggerSplitView):
    """A page that reads the schema (Swagger UI, its files served by this site: the CSP holds)."""

    permission_classes = [DebugOrStaff]
