"""A snapshot of this process's streaming state, for monitoring and for the test suite."""

import asyncio
import threading

from django.contrib.admin.views.decorators import staff_member_required
from django.http import HttpRequest, JsonResponse

from .hub import get_hub


@staff_member_required
async def stream_metrics(request: HttpRequest) -> JsonResponse:
    """Open streams, channels subscribed, asyncio tasks and OS threads of this process.

    Async so that it runs on the event loop that owns this process's hub. Each server process has
    its own hub: behind a load balancer, every request may see a different replica.
    """
    hub = get_hub()
    return JsonResponse(
        {
            "streams": hub.subscriber_count,
            "channels": hub.channel_count,
            "tasks": len(asyncio.all_tasks()),
            "threads": threading.active_count(),
        }
    )
