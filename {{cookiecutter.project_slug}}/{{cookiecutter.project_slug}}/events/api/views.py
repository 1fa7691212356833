"""The API's endpoints: the stream, its tickets, publishing, the process's statistics, and the
browser client."""

import hashlib
import logging
import re
from collections.abc import Sequence
from contextlib import AbstractAsyncContextManager, nullcontext
from functools import cache
from pathlib import Path
from typing import Any
from urllib.parse import urlencode

from django.http import HttpRequest, HttpResponse, HttpResponseBase
from django.urls import reverse
from django.utils.cache import patch_vary_headers
from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.exceptions import (
    APIException,
    ParseError,
    PermissionDenied,
    Throttled,
    ValidationError,
)
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.settings import api_settings
from rest_framework.throttling import BaseThrottle
from rest_framework.views import APIView

from ..access.credentials import Credential
from ..access.recheck import StreamAccess
from ..access.tickets import TICKET_PARAMETER, StreamTicket, StreamTicketAuthentication
from ..broker import get_broker
from ..broker.rates import OverRate
from ..conf import EventSettings, event_settings
from ..core.channels import BROADCAST, topic_channel, user_channel
from ..core.positions import Position
from ..delivery import stats
from ..delivery.stream import EventStream, EventStreamResponse
from ..exceptions import EventError, InvalidEventId
from ..publish import count_refused, publish_with_outcome
from ..telemetry import metrics
from .errors import as_api_exception
from .permissions import CanPublishEvents
from .renderers import EventStreamRenderer
from .schema import METRICS, PUBLISH, STREAM, TICKET
from .serializers import PublishEventSerializer, StreamTicketSerializer
from .throttles import PublishRateThrottle, StreamRateThrottle
from .topic_policy import readable_topics

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
    # EVENTS_STREAM_RATE is counted in get(), with the stream's slot: one call to Redis for both.
    throttle_classes: list[type[BaseThrottle]] = []

    @extend_schema(**STREAM)
    def get(self, request: Request) -> EventStreamResponse:
        settings = event_settings()
        ticket = request.auth if isinstance(request.auth, StreamTicket) else None
        topics = _stream_topics(request, ticket)
        last_event_id = self._last_event_id(request)
        user_key = str(request.user.pk)
        channels = frozenset([BROADCAST, user_channel(user_key), *map(topic_channel, topics)])
        credential = ticket.credential if ticket else Credential.of_request(request)
        access = StreamAccess(user_key, credential, tuple(topics))
        slot = self._admit(request, user_key, settings)
        return EventStreamResponse(EventStream(channels, last_event_id, settings, access, slot))

    def _admit(
        self, request: Request, user_key: str, settings: EventSettings
    ) -> AbstractAsyncContextManager[Any]:
        """What the stream holds while it runs: one of its user's EVENTS_MAX_STREAMS_PER_USER,
        taken in one step with the count of its user's new streams (EVENTS_STREAM_RATE, which
        tickets count toward too)."""
        rate = StreamRateThrottle().rate_check(request, self)
        limit = settings.max_streams_per_user
        broker = get_broker()
        if limit <= 0:
            if rate is not None and (wait := broker.rate_limits.hit(rate.key, rate.rate)):
                raise Throttled(wait=wait)
            return nullcontext()
        try:
            slot = broker.stream_slots.acquire(user_key, limit, rate)
        except OverRate as over:
            raise Throttled(wait=over.wait_seconds) from None
        if slot is None:
            raise Throttled(
                wait=_STREAM_LIMIT_RETRY_SECONDS,
                detail=f"Too many open streams: at most {limit} per user. Close one first.",
            )
        return broker.stream_slots.hold(slot)

    def _last_event_id(self, request: Request) -> str | None:
        """The header's id, else the query's; either, when given, must be an id (an empty one
        is none)."""
        given = {
            "Last-Event-ID": request.headers.get("Last-Event-ID"),
            "last_event_id": request.query_params.get("last_event_id"),
        }
        partitions = get_broker().partitions
        for name, last_event_id in given.items():
            if last_event_id:
                try:
                    Position.parse(last_event_id, partitions)
                except InvalidEventId as error:
                    raise ValidationError({name: [str(error)]}) from error
        return given["Last-Event-ID"] or given["last_event_id"] or None

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
            metrics.count_refusal(response.status_code)
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


def _stream_topics(request: Request, ticket: StreamTicket | None) -> list[str]:
    """The topics of ``?topic=``: with a ticket, the ticket's (or fewer)."""
    topics = request.query_params.getlist("topic")
    if ticket is not None:
        outside = [topic for topic in dict.fromkeys(topics) if topic not in ticket.topics]
        if outside:
            raise PermissionDenied(f"This stream ticket is not for topic(s): {', '.join(outside)}.")
        topics = topics or list(ticket.topics)
    return readable_topics(request.user, topics, field="topic")


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
        serializer = StreamTicketSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        topics = readable_topics(request.user, serializer.validated_data["topics"], field="topics")
        ticket = StreamTicket(str(request.user.pk), tuple(topics), Credential.of_request(request))
        sealed = ticket.seal()
        url = f"{reverse('events:stream')}?{urlencode({TICKET_PARAMETER: sealed})}"
        body = {"ticket": sealed, "expires_in": event_settings().ticket_seconds, "url": url}
        return Response(body, status=status.HTTP_201_CREATED)


class PublishEventView(APIView):
    """``POST``: publish an event; answers 201 with its id, or 4xx/503 with a reason.

    With an ``Idempotency-Key`` header, a retry with the same key (by the same user, within
    ``EVENTS_IDEMPOTENCY_SECONDS``) publishes nothing and answers 200 with the first event's id
    and ``Idempotent-Replayed: true``; the same key for another event is a 422.
    """

    permission_classes = [IsAuthenticated, CanPublishEvents]
    throttle_classes = [PublishRateThrottle]

    def handle_exception(self, exc: Exception) -> Response:
        # Refused before the publish path (authentication, permission, rate, body): counted
        # here; what the publish path refuses (an EventError), it counts itself.
        if isinstance(as_api_exception(exc), APIException) and not isinstance(exc, EventError):
            count_refused()
        return super().handle_exception(exc)

    @extend_schema(**PUBLISH)
    def post(self, request: Request) -> Response:
        key = request.headers.get("Idempotency-Key")
        if key is not None and not _IDEMPOTENCY_KEY.fullmatch(key):
            raise ParseError("Idempotency-Key must be 1 to 255 printable ASCII characters.")
        serializer = PublishEventSerializer(data=request.data)
        serializer.is_valid(raise_exception=True)
        fields = serializer.validated_data
        # An EventError (too large, key reused, Redis unavailable) answers as errors.py says.
        publication = publish_with_outcome(
            fields["type"],
            fields["data"],
            user=fields.get("user"),
            topic=fields.get("topic"),
            # Keys are the user's own: two publishers never collide.
            key=None if key is None else f"{request.user.pk}:{key}",
        )
        event = publication.event
        logger.info(
            "Published event %s (%s)",
            event.id,
            event.type,
            extra={"event_id": event.id, "replayed": publication.replayed},
        )
        if publication.replayed:
            return Response(
                {"id": event.id}, status=status.HTTP_200_OK, headers={"Idempotent-Replayed": "true"}
            )
        return Response({"id": event.id}, status=status.HTTP_201_CREATED)


class StreamMetricsView(APIView):
    """``GET`` (staff): this process's streaming state (``delivery.stats.snapshot``).

    Each server process has its own hub: behind a load balancer, each request may reach a
    different replica. The view runs in a worker thread and only reads counters of the hubs.
    """

    permission_classes = [IsAdminUser]

    @extend_schema(**METRICS)
    def get(self, request: Request) -> Response:
        return Response(stats.snapshot())


def events_client(request: HttpRequest) -> HttpResponse:
    """``GET``: the browser client of the stream (``events/client/events-client.js``), an ES
    module.

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
    source = (Path(__file__).parent.parent / "client" / "events-client.js").read_bytes()
    return source, f'"{hashlib.sha256(source).hexdigest()[:16]}"'
