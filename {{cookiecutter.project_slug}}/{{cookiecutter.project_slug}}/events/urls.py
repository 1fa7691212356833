from django.urls import path

from .api.views import (
    EventStreamView,
    PublishEventView,
    StreamMetricsView,
    StreamTicketView,
    events_client,
)

app_name = "events"

urlpatterns = [
    path("", PublishEventView.as_view(), name="publish"),
    path("stream/", EventStreamView.as_view(), name="stream"),
    path("tickets/", StreamTicketView.as_view(), name="tickets"),
    path("client.js", events_client, name="client"),
    path("metrics/", StreamMetricsView.as_view(), name="metrics"),
]
