"""A snapshot of this process's streaming state, for monitoring and for the test suite."""

import asyncio
import threading

from drf_spectacular.utils import extend_schema
from rest_framework.permissions import IsAdminUser
from rest_framework.request import Request
from rest_framework.response import Response
from rest_framework.views import APIView

from .hub import running_hubs
from .malformed import malformed_total
from .schema import METRICS


class StreamMetricsView(APIView):
    """``GET`` (staff): open streams, subscribed channels, asyncio tasks, OS threads, malformed
    broker messages skipped since the process started, and what keeps its feed down (or null).

    Each server process has its own hub: behind a load balancer, each request may reach a
    different replica. The view runs in a worker thread and only reads counters of the hubs.
    """

    permission_classes = [IsAdminUser]

    @extend_schema(**METRICS)
    def get(self, request: Request) -> Response:
        hubs = running_hubs()
        return Response(
            {
                "streams": sum(hub.subscriber_count for _, hub in hubs),
                "channels": sum(hub.channel_count for _, hub in hubs),
                "tasks": sum(len(asyncio.all_tasks(loop)) for loop, _ in hubs),
                "threads": threading.active_count(),
                "malformed": malformed_total(),
                "feed_problem": "; ".join(filter(None, (hub.problem() for _, hub in hubs))) or None,
            }
        )
