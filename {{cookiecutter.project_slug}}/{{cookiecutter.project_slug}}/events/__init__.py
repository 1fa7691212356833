"""The events app: Server-Sent Events from a broker (Redis, or one inside the process).

Its public API, for the project's own code::

    from <project>.events import publish, apublish, publish_on_commit, recheck_streams

Inside, folders by role, each importing only those below it (``pyproject.toml`` states it as
import-linter contracts; docs/events.md walks an event and a stream request through them):

- ``api``: the HTTP endpoints (Django REST Framework);
- ``delivery``: getting events to clients: the hub, one client's stream, the ASGI handler;
- ``publish`` (a module): the one path every event takes to the broker;
- ``access``: who may read what, and for how long;
- ``broker``: storing events with ids and carrying them to every process;
- ``core``: what an event is and how it is written;
- ``telemetry``: metrics and logs;
- ``conf`` and ``exceptions``: the settings and the errors, below everything.
"""

from .access.revocation import recheck_streams
from .publish import apublish, publish, publish_on_commit

__all__ = ["apublish", "publish", "publish_on_commit", "recheck_streams"]
