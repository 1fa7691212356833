from rest_framework.renderers import BaseRenderer


class EventStreamRenderer(BaseRenderer):
    """Lets DRF's content negotiation accept EventSource's ``Accept: text/event-stream``.

    Without a renderer of this media type DRF answers EventSource with 406. It renders nothing:
    the stream itself is an ``EventStreamResponse``, and the stream view renders every other
    answer (its errors) as JSON, whatever the client accepts.
    """

    media_type = "text/event-stream"
    format = "event-stream"
    charset = "utf-8"
