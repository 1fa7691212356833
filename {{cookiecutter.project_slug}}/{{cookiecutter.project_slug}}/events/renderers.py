from collections.abc import Mapping
from typing import Any

from rest_framework.renderers import BaseRenderer, JSONRenderer

from .wire import encode_event


class EventStreamRenderer(BaseRenderer):
    """Lets DRF's content negotiation accept EventSource's ``Accept: text/event-stream``.

    Without a renderer of this media type DRF answers EventSource with 406. The stream itself is a
    ``StreamingHttpResponse``; a plain DRF ``Response`` rendered here becomes a single event.
    """

    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"

    def render(
        self,
        data: Any,
        accepted_media_type: str | None = None,
        renderer_context: Mapping[str, Any] | None = None,
    ) -> bytes:
        return encode_event(JSONRenderer().render(data).decode())
