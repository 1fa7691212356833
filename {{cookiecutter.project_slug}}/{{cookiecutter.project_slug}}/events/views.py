from typing import Any

from django.conf import settings as django_settings
from django.core.exceptions import RequestDataTooBig
from django.http import HttpResponseBase, StreamingHttpResponse
from django.utils.cache import patch_vary_headers
from rest_framework import status
from rest_framework.exceptions import PermissionDenied, ValidationError
from rest_framework.permissions import IsAuthenticated
from rest_framework.renderers import JSONRenderer
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .authorization import topic_authorizer
from .channels import BROADCAST, topic_channel, user_channel, validate_topic
from .conf import event_settings
from .event import parse_event_id
from .exceptions import BrokerUnavailable, EventTooLarge, InvalidEvent, InvalidEventId
from .parsers import EventJSONParser
from .permissions import CanPublishEvents
from .publish import publish
from .renderers import EventStreamRenderer
from .serializers import PublishEventSerializer
from .stream import event_stream


class EventStreamView(APIView):
    """``GET``: the signed-in user's events as Server-Sent Events.

    A client receives broadcasts, its own private events and the topics it asks for with
    ``?topic=a&topic=b``. It resumes after ``Last-Event-ID`` (header, or ``?last_event_id=``).
    Errors are JSON with a real status (401, 403, 400), never a stream that ends at once.
    """

    renderer_classes = [EventStreamRenderer, JSONRenderer]
    permission_classes = [IsAuthenticated]

    def get(self, request: Request) -> StreamingHttpResponse:
        settings = event_settings()
        topics = self._readable_topics(request, settings.max_topics_per_stream)
        last_event_id = self._last_event_id(request)
        channels = frozenset(
            [BROADCAST, user_channel(request.user.pk), *map(topic_channel, topics)]
        )
        stream = event_stream(channels, last_event_id, settings)
        response = StreamingHttpResponse(stream, content_type="text/event-stream")
        response["Cache-Control"] = "no-cache"
        # nginx buffers proxied responses unless told not to; the stream must flush every event.
        response["X-Accel-Buffering"] = "no"
        return response

    def _readable_topics(self, request: Request, limit: int) -> list[str]:
        topics = list(dict.fromkeys(request.query_params.getlist("topic")))
        if len(topics) > limit:
            raise ValidationError({"topic": [f"At most {limit} topics per stream."]})
        try:
            topics = [validate_topic(topic) for topic in topics]
        except InvalidEvent as error:
            raise ValidationError({"topic": [str(error)]}) from error
        may_read = topic_authorizer()
        denied = [topic for topic in topics if not may_read(request.user, topic)]
        if denied:
            raise PermissionDenied(f"You may not read topic(s): {', '.join(denied)}.")
        return topics

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

    def finalize_response(
        self, request: Request, response: HttpResponseBase, *args: Any, **kwargs: Any
    ) -> HttpResponseBase:
        if isinstance(response, Response):
            # An error: JSON whatever the client accepts, so that it can be read and logged.
            request.accepted_renderer = JSONRenderer()
            request.accepted_media_type = JSONRenderer.media_type
        response = super().finalize_response(request, response, *args, **kwargs)
        _allow_listed_origin(request, response)
        return response


def _allow_listed_origin(request: Request, response: HttpResponseBase) -> None:
    """Cross-origin EventSource (``withCredentials``) for origins in EVENTS_CORS_ALLOWED_ORIGINS."""
    origin = request.headers.get("Origin")
    if origin and origin in event_settings().cors_allowed_origins:
        response["Access-Control-Allow-Origin"] = origin
        response["Access-Control-Allow-Credentials"] = "true"
    patch_vary_headers(response, ["Origin"])


class PublishEventView(APIView):
    """``POST``: publish an event; answers 201 with its id, or 4xx/503 with a reason."""

    permission_classes = [IsAuthenticated, CanPublishEvents]
    parser_classes = [EventJSONParser]

    def post(self, request: Request) -> Response:
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
        try:
            event = publish(
                fields["type"], fields["data"], user=fields.get("user"), topic=fields.get("topic")
            )
        except EventTooLarge as error:
            return Response({"detail": str(error)}, status=status.HTTP_413_REQUEST_ENTITY_TOO_LARGE)
        except InvalidEvent as error:  # what only serializing reveals, e.g. a lone surrogate
            return Response({"detail": str(error)}, status=status.HTTP_400_BAD_REQUEST)
        except BrokerUnavailable as error:
            return Response({"detail": str(error)}, status=status.HTTP_503_SERVICE_UNAVAILABLE)
        return Response({"id": event.id}, status=status.HTTP_201_CREATED)
