from django.apps import AppConfig


class DemoConfig(AppConfig):
    """A page that shows the event stream live; delete this app and its settings/urls lines."""

    name = __package__
    label = "demo"
    verbose_name = "Live events demo"
