from django.db import models


class EventPublishing(models.Model):  # noqa: DJ008 (never instantiated)
    """Has no table: it only holds the "Can publish events" permission for the admin to grant."""

    class Meta:
        managed = False
        default_permissions = ()
        permissions = [("publish_event", "Can publish events")]
