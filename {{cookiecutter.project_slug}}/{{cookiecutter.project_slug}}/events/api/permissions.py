from rest_framework.permissions import BasePermission
from rest_framework.request import Request
from rest_framework.views import APIView

PUBLISH_PERMISSION = "events.publish_event"


class CanPublishEvents(BasePermission):
    """Users granted "Can publish events" (in the admin, or superusers) may publish."""

    message = f"Publishing events requires the {PUBLISH_PERMISSION!r} permission."

    def has_permission(self, request: Request, view: APIView) -> bool:
        return request.user.has_perm(PUBLISH_PERMISSION)
