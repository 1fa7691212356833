"""ASGI entry point: ``daphne config.asgi:application``.

The event stream URL goes to a handler that holds no thread while it streams (see
``{{ cookiecutter.project_slug }}.events.delivery.handler``); every other request goes to Django as usual.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

# Django must be set up before anything imports models.
django_application = get_asgi_application()

from {{ cookiecutter.project_slug }}.events.delivery.daphne import (  # noqa: E402
    answer_overlong_request_lines,
    leave_request_bodies_to_django,
)
from {{ cookiecutter.project_slug }}.events.delivery.handler import EventStreamRouter  # noqa: E402

leave_request_bodies_to_django()
answer_overlong_request_lines()
application = EventStreamRouter(django_application)
