import hashlib
import logging
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.conf import settings as django_settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpRequest, HttpResponse, HttpResponseBase, StreamingHttpResponse
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import PermissionDenied, Throttled, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.views import APIView

from . import instruments
from .access import Credential, StreamAccess
from .authorization import denied_topics
from .broker import get_broker
from .broker.base import Once, Publication
from .channels import BROADCAST, topic_channel, user_channel, validate_topic
from .conf import EventSettings, event_settings
from .event import make_draft, parse_event_id
from .exceptions import (
    BrokerUnavailable,
    EventTooLarge,
    IdempotencyConflict,
    InvalidEvent,
    InvalidEventId,
)
from .limits import PublishRateThrottle, StreamRateThrottle
from .parsers import EventJSONParser
from .permissions import CanPublishEvents
from .renderers import EventStreamRenderer
from .schema import PUBLISH, STREAM, TICKET
from .serializers import PublishEventSerializer, StreamTicketSerializer
from .stream import event_stream
from .tickets import TICKET_PARAMETER, StreamTicket, StreamTicketAuthentication

logger = logging.getLogger(__name__)

# What an Idempotency-Key may be: the IETF draft's "any string", bounded and printable.
_IDEMPOTENCY_KEY = re.compile(r"[\x21-\x7e][\x20-\x7e]{0,254}")
# Told to a client over the open-streams limit: slots free up as soon as a stream closes.
_STREAM_LIMIT_RETRY_SECONDS = 10


class EventStreamView(APIView):
    """``GET``: the signed-in user's events as Server-Sent Events.

    A client receives broadcasts, its own private events and the topics it asks for with
    ``?topic=a&topic=b``. It resumes after ``Last-Event-ID`` (header, or ``?last_event_id=``).
    It authenticates like the rest of the API, or with a stream ticket (``?ticket=``), which then
    sets the topics. Errors are JSON with a real status (401, 403, 400, 429), never a stream that
    ends at once.
    """

    renderer_classes = [EventStreamRenderer, JSONRenderer]
    authentication_classes = [
        *api_settings.DEFAULT_AUTHENTICATION_CLASSES,  # type: ignore[list-item]  # classes by now
        StreamTicketAuthentication,
    ]
    permission_classes = [IsAuthenticated]
    throttle_classes = [StreamRateThrottle]

    @extend_schema(**STREAM)
    def get(self, request: Request) -> StreamingHttpResponse:
        settings = event_settings()
        ticket = request.auth if isinstance(request.auth, StreamTicket) else None
        topics = _readable_topics(request, settings.max_topics_per_stream, ticket)
        last_event_id = self._last_event_id(request)
        user_key = str(request.user.pk)
        channels = frozenset([BROADCAST, user_channel(user_key), *map(topic_channel, topics)])
        credential = ticket.credential if ticket else Credential.of_request(request)
        access = StreamAccess(user_key, credential, tuple(topics))
        stream = event_stream(
            channels, last_event_id, settings, access, _stream_slot(user_key, settings)
        )
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        # nginx buffers proxied responses unless told not to; the stream must flush every event.
        response["X-Accel-Buffering"] = "no"
        # The server closes a stream's connection when the stream ends (backpressure.py): a client
        # must not send its next request on it.
        response["Connection"] = "close"
        return response

    def _last_event_id(self, request: Request) -> str | None:
        last_event_id = request.headers.get("Last-Event-ID") or request.query_params.get(
            "last_event_id"
        )
        if not last_event_id:
            return None
        try:
            parse_event_id(last_event_id)
        except InvalidEventId as error:
            raise ValidationError({"last_event_id": [str(error)]}) from error
        return last_event_id

    # DRF finalizes every response, streaming ones too: its stubs say Response.
    def finalize_response(  # type: ignore[override]
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        if isinstance(response, Response):
            # An error: JSON whatever the client accepts, so that it can be read and logged.
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[arg-type]
        _allow_listed_origin(request, response)
        if response.status_code >= 400:
            instruments.count_refusal(response.status_code)
        return response


def _allow_listed_origin(request: Request, response: HttpResponseBase) -> bool:
    """Cross-origin requests (with credentials) for origins in EVENTS_CORS_ALLOWED_ORIGINS;
    returns whether the request's origin is one."""
    origin = request.headers.get("Origin")
    patch_vary_headers(response, ["Origin"])
    if not origin or origin not in event_settings().cors_allowed_origins:
        return False
    response["Access-Control-Allow-Origin"] = origin
    response["Access-Control-Allow-Credentials"] = "true"
    return True


def _readable_topics(request: Request, limit: int, ticket: StreamTicket | None) -> list[str]:
    topics = list(dict.fromkeys(request.query_params.getlist("topic")))
    if ticket is not None:  # the ticket's topics, or fewer
        outside = [topic for topic in topics if topic not in ticket.topics]
        if outside:
            raise PermissionDenied(f"This stream ticket is not for topic(s): {', '.join(outside)}.")
        topics = topics or list(ticket.topics)
    if len(topics) > limit:
        raise ValidationError({"topic": [f"At most {limit} topics per stream."]})
    try:
        topics = [validate_topic(topic) for topic in topics]
    except InvalidEvent as error:
        raise ValidationError({"topic": [str(error)]}) from error
    denied = denied_topics(request.user, topics)
    if denied:
        raise PermissionDenied(f"You may not read topic(s): {', '.join(denied)}.")
    return topics


def _stream_slot(user_key: str, settings: EventSettings) -> AbstractAsyncContextManager[Any]:
    """What the stream holds while it runs: one of its user's EVENTS_MAX_STREAMS_PER_USER."""
    limit = settings.max_streams_per_user
    if limit <= 0:
        return nullcontext()
    slots = get_broker().stream_slots
    slot = slots.acquire(user_key, limit)
    if slot is None:
        raise Throttled(
            wait=_STREAM_LIMIT_RETRY_SECONDS,
            detail=f"Too many open streams: at most {limit} per user. Close one first.",
        )
    return slots.hold(slot)


class StreamTicketView(APIView):
    """``POST {"topics": [...]}``: a ticket that opens streams of those topics for a short time.

    Answers 201 with ``ticket``, ``expires_in`` (seconds) and ``url`` (the stream URL with it).
    """

    throttle_classes = [StreamRateThrottle]

    # A page on an allowed origin asks first (a CORS preflight), without credentials.
    def get_permissions(self) -> Sequence[Any]:
        return [] if self.request.method == "OPTIONS" else super().get_permissions()

    def get_throttles(self) -> list[Any]:
        return [] if self.request.method == "OPTIONS" else super().get_throttles()

    @extend_schema(exclude=True)  # CORS preflight, not a call of the API
    def options(self, request: Any, *args: Any, **kwargs: Any) -> Response:
        return Response(status=status.HTTP_204_NO_CONTENT)

    # DRF finalizes every response, streaming ones too: its stubs say Response.
    def finalize_response(  # type: ignore[override]
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        response = super().finalize_response(request, response, *args, **kwargs)  # type: ignore[arg-type]
        if _allow_listed_origin(request, response) and request.method == "OPTIONS":
            response["Access-Control-Allow-Methods"] = "POST, OPTIONS"
            response["Access-Control-Allow-Headers"] = "Authorization, Content-Type, X-CSRFToken"
            response["Access-Control-Max-Age"] = "600"
        return response

    @extend_schema(**TICKET)
    def post(self, request: Request) -> Response:
        settings = event_settings()
        serializer = StreamTicketSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        requested = serializer.validated_data["topics"]
        if len(requested) > settings.max_topics_per_stream:
            limit = settings.max_topics_per_stream
            raise ValidationError({"topics": [f"At most {limit} topics per stream."]})
        denied = denied_topics(request.user, requested)
        if denied:
            raise PermissionDenied(f"You may not read topic(s): {', '.join(denied)}.")
        ticket = StreamTicket(
            str(request.user.pk), tuple(requested), Credential.of_request(request)
        )
        signed = ticket.sign()
        url = f"{reverse('events:stream')}?{urlencode({TICKET_PARAMETER: signed})}"
        body = {"ticket": signed, "expires_in": settings.ticket_seconds, "url": url}
        return Response(body, status=status.HTTP_201_CREATED)


class PublishEventView(APIView):
    """``POST``: publish an event; answers 201 with its id, or 4xx/503 with a reason.

    With an ``Idempotency-Key`` header, a retry with the same key (by the same user, within
    ``EVENTS_IDEMPOTENCY_SECONDS``) publishes nothing and answers 200 with the first event's id
    and ``Idempotent-Replayed: true``; the same key for another event is a 422.
    """

    permission_classes = [IsAuthenticated, CanPublishEvents]
    parser_classes = [EventJSONParser]
    throttle_classes = [PublishRateThrottle]

    # Every answer counts, refusals before post() too (authentication, permission, rate).
    def finalize_response(
        self, request: Request, response: Response, *args: Any, **kwargs: Any
    ) -> Response:
        response = super().finalize_response(request, response, *args, **kwargs)
        instruments.published.labels(_publish_outcome(response.status_code)).inc()
        return response

    @extend_schema(**PUBLISH)
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            return Response(
                {"detail": "Idempotency-Key must be 1 to 255 printable ASCII characters."},
                status=status.HTTP_400_BAD_REQUEST,
            )
        try:
            body = request.data
        except RequestDataTooBig:
            limit = django_settings.DATA_UPLOAD_MAX_MEMORY_SIZE
            return Response(
                {"detail": f"Request body exceeds DATA_UPLOAD_MAX_MEMORY_SIZE ({limit} bytes)."},
                status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE,
            )
        serializer = PublishEventSerializer(data=body)
        serializer.is_valid(raise_exception=True)
        fields = serializer.validated_data
        settings = event_settings()
        try:
            draft = make_draft(
                fields["type"],
                fields["data"],
                user=fields.get("user"),
                topic=fields.get("topic"),
                max_payload_bytes=settings.max_payload_bytes,
            )
            if key is None:
                publication = Publication(get_broker().publish(draft), replayed=False)
            else:  # keys are the user's own: two publishers never collide
                once = Once(f"{request.user.pk}:{key}", settings.idempotency_seconds)
                publication = get_broker().publish_once(draft, once)
        except EventTooLarge as error:
            return Response({"detail": str(error)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        except InvalidEvent as error:  # what only serializing reveals, e.g. a lone surrogate
            return Response({"detail": str(error)}, status=status.HTTP_400_BAD_REQUEST)
        except IdempotencyConflict as error:
            return Response({"detail": str(error)}, status=status.HTTP_422_UNPROCESSABLE_ENTITY)
        except BrokerUnavailable as error:
            return Response({"detail": str(error)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        body = {"id": publication.event.id}
        logger.info(
            "Published event %s (%s)",
            publication.event.id,
            draft.type,
            extra={"event_id": publication.event.id, "replayed": publication.replayed},
        )
        if publication.replayed:
            return Response(
                body, status=status.HTTP_200_OK, headers={"Idempotent-Replayed": "true"}
            )
        return Response(body, status=status.HTTP_201_CREATED)


def _publish_outcome(status_code: int) -> str:
    if status_code == status.HTTP_201_CREATED:
        return "ok"
    if status_code == status.HTTP_200_OK:
        return "duplicate"
    if status_code == status.HTTP_503_SERVICE_UNAVAILABLE:
        return "unavailable"
    return "refused"


def events_client(request: HttpRequest) -> HttpResponse:
    """``GET``: the browser client of the stream (``client/events-client.js``), an ES module.

    Served by the API itself (as socket.io serves its client): a page finds it wherever the API
    is, whatever serves the static files, and gets the version that matches the server.
    """
    source, version = _client_source()
    if request.headers.get("If-None-Match") == version:
        response = HttpResponse(status=status.HTTP_304_NOT_MODIFIED)
    else:
        response = HttpResponse(source, content_type="text/javascript; charset=utf-8")
    response["ETag"] = version
    response["Cache-Control"] = "public, max-age=300"
    return response


@cache
def _client_source() -> tuple[bytes, str]:
    source = (Path(__file__).parent / "client" / "events-client.js").read_bytes()
    return source, f'"{hashlib.sha256(source).hexdigest()[:16]}"'
