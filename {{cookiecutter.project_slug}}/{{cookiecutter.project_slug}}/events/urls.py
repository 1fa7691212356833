from django.urls import path

from .views import EventStreamView, PublishEventView

app_name = "events"

urlpatterns = [
    path("", PublishEventView.as_view(), name="publish"),
    path("stream/", EventStreamView.as_view(), name="stream"),
]
