"""Django's stock ASGI application, without the event stream's thread-free route.

Serves two systems of ``benchmarks/streams.py`` (see ``benchmarks/systems.py``): "article", with
``DJANGO_SETTINGS_MODULE=benchmarks.article_settings``, and "stock", the project's own stream
view with ``config.settings``. Every request runs inside the ``ThreadSensitiveContext`` that
Django's ``ASGIHandler`` gives it, so each open stream holds one OS thread. Never used to serve
the project."""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_asgi_application()
