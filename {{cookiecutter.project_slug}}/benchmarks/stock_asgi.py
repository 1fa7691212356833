"""Django's stock ASGI application, without the event stream's thread-free route.

The baseline of ``benchmarks/streams.py``: served by a second Daphne process, the same stream view
runs inside the ``ThreadSensitiveContext`` that Django's ``ASGIHandler`` gives every request, so
each open stream holds one OS thread. Never used to serve the project.
"""

import os

from django.core.asgi import get_asgi_application

os.environ.setdefault("DJANGO_SETTINGS_MODULE", "config.settings")

application = get_asgi_application()
