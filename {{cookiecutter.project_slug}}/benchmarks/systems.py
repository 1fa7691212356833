"""The systems under test: this project and the baselines it is compared with, in one run.

Each is served by its own Daphne process, one at a time, from the same database, Redis and
client; they differ in their ASGI application and settings.
"""

from __future__ import annotations

from dataclasses import dataclass

STREAM_PATH = "/api/events/stream/"


@dataclass(frozen=True)
class System:
    name: str
    application: str
    settings_module: str
    description: str
    # Token authentication on every stream, as the project's clients send it.
    authenticated: bool
    # Events reach it through the project's publish() (else: a plain PUBLISH on a channel).
    uses_project_broker: bool
    # Descriptors the server holds per open stream, and Redis connections: to tell in advance
    # whether a stream count fits in the open-file limit and in Redis's maxclients.
    server_fds_per_stream: int
    redis_connections_per_stream: int


SYSTEMS = {
    system.name: system
    for system in (
        System(
            name="project",
            application="config.asgi:application",
            settings_module="config.settings",
            description="this project: token auth, default settings but the limits lifted",
            authenticated=True,
            uses_project_broker=True,
            server_fds_per_stream=1,
            redis_connections_per_stream=0,
        ),
        System(
            name="article",
            application="benchmarks.stock_asgi:application",
            settings_module="benchmarks.article_settings",
            description="the article's design: a DRF view, one Redis Pub/Sub connection per "
            "client, Django's stock ASGI handler (benchmarks/article.py), no auth",
            authenticated=False,
            uses_project_broker=False,
            server_fds_per_stream=2,
            redis_connections_per_stream=1,
        ),
        System(
            name="bare",
            application="benchmarks.bare_asgi:application",
            settings_module="config.settings",
            description="a bare ASGI callable: one shared Redis subscription, direct sends "
            "(benchmarks/bare_asgi.py), no auth",
            authenticated=False,
            uses_project_broker=False,
            server_fds_per_stream=1,
            redis_connections_per_stream=0,
        ),
        System(
            name="stock",
            application="benchmarks.stock_asgi:application",
            settings_module="config.settings",
            description="this project's view under Django's stock ASGI handler: a thread and "
            "(per thread) a database connection per stream",
            authenticated=True,
            uses_project_broker=True,
            server_fds_per_stream=2,
            redis_connections_per_stream=0,
        ),
    )
}
DEFAULT_SYSTEMS = ("project", "article", "bare")
BASELINE = "project"  # ratios are read against it
