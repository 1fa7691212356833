from django.conf import settings
from django.contrib.auth.decorators import login_required
from django.http import HttpRequest, HttpResponse
from django.shortcuts import render
from django.urls import reverse
from django.views.decorators.csrf import ensure_csrf_cookie

from ..events.api.permissions import PUBLISH_PERMISSION

# Streams read by the page, besides the user's private events and broadcasts.
DEMO_TOPIC = "demo"
# EventSource hands named events only to listeners registered for that name: the page listens
# for these from the start, and for any other type the moment it publishes one.
EVENT_TYPES = ("message", "notice", "alert")


@login_required
@ensure_csrf_cookie  # the publish form sends the cookie's token in the X-CSRFToken header
def demo_page(request: HttpRequest) -> HttpResponse:
    can_publish = request.user.has_perm(PUBLISH_PERMISSION)
    config = {
        "streamUrl": f"{reverse('events:stream')}?topic={DEMO_TOPIC}",
        "publishUrl": reverse("events:publish"),
        "topic": DEMO_TOPIC,
        "userId": request.user.pk,
        "eventTypes": EVENT_TYPES,
        "csrfCookieName": settings.CSRF_COOKIE_NAME,
    }
    context = {
        "can_publish": can_publish,
        "config": config,
        "event_types": EVENT_TYPES,
        "topic": DEMO_TOPIC,
    }
    return render(request, "demo/index.html", context)
