"""WSGI entry point: ``gunicorn config.wsgi:application``.

Serves every request except event streams, which need the ASGI server (``config.asgi``).
"""

import os

from django.core.wsgi import get_wsgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_wsgi_application()
