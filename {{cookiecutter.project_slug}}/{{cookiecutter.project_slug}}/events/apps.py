from django.apps import AppConfig


class EventsConfig(AppConfig):
    name = __package__  # "<project>.events"
    label = "events"
    verbose_name = "Events"
    default_auto_field = "django.db.models.BigAutoField"

    def ready(self) -> None:
        from . import checks  # noqa: F401 (registers the settings checks)
        from .access.signals import connect_signals

        connect_signals()
