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
from .serializers import PublishEventSerializer, StreamTicketSerializer


class ErrorSerializer(serializers.Serializer[Any]):
    detail = serializers.CharField(help_text="Why, in a sentence a person can read.")


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


_TOO_MANY = _error("Over a per-user limit; Retry-After says when to try again.")
_UNAUTHENTICATED = _error("No or bad credentials.")

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
            "topic", OpenApiTypes.STR, many=True, description="A topic to read; repeat it."
        ),
        OpenApiParameter(
            "last_event_id",
            OpenApiTypes.STR,
            description="Resume after this id (first connection).",
        ),
        OpenApiParameter(
            "ticket", OpenApiTypes.STR, description="A stream ticket, instead of other credentials."
        ),
        OpenApiParameter(
            "Last-Event-ID",
            OpenApiTypes.STR,
            OpenApiParameter.HEADER,
            description="Resume after this id (sent by browsers when they reconnect).",
        ),
    ],
    "responses": {
        (200, "text/event-stream"): OpenApiResponse(
            OpenApiTypes.STR, description="The stream (it ends with the stream's lifetime)."
        ),
        # Errors are JSON whatever the client accepts (an EventSource asks for the stream).
        (400, "application/json"): _error(
            "A malformed topic, too many topics, or a malformed Last-Event-ID."
        ),
        (401, "application/json"): _UNAUTHENTICATED,
        (403, "application/json"): _error("A topic the user may not read, or not in the ticket."),
        (429, "application/json"): _TOO_MANY,
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
        )
    ],
    "responses": {
        201: OpenApiResponse(EventIdSerializer, description="Published."),
        200: OpenApiResponse(
            EventIdSerializer,
            description="Published before under this Idempotency-Key; nothing published now.",
        ),
        400: _error("A body or an Idempotency-Key it cannot accept."),
        401: _UNAUTHENTICATED,
        403: _error("Without the 'Can publish events' permission."),
        413: _error("`data` (or the body) is too large."),
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
    "responses": {
        201: TicketSerializer,
        400: _error("Malformed topics, or too many."),
        401: _UNAUTHENTICATED,
        403: _error("A topic the user may not read."),
        429: _TOO_MANY,
    },
}

METRICS: dict[str, Any] = {
    "summary": "This process's streaming state (staff)",
    "responses": {200: MetricsSerializer, 401: _UNAUTHENTICATED, 403: _error("Not staff.")},
}


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
