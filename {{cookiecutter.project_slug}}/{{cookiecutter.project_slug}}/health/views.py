"""``/healthz``: the process answers. ``/readyz``: it can also reach what requests need.

Both are open to anyone (probes carry no credentials), so they say only ok or error; the reason for
a failure goes to the log.
"""

import logging
from collections.abc import Callable

from django.db import DatabaseError, connection
from django.http import HttpRequest, JsonResponse
from django.views.decorators.http import require_safe

from ..events.broker import get_broker
from ..events.delivery.shutdown import process_shutdown
from ..events.delivery.stats import feed_problems
from ..events.exceptions import BrokerUnavailable

logger = logging.getLogger(__name__)


def check_database() -> None:
    with connection.cursor() as cursor:
        cursor.execute("SELECT 1")


def check_broker() -> None:
    get_broker().check()


class NotReady(Exception):
    """A readiness check failed for a reason of this process's own."""


def check_feed() -> None:
    """This process's live subscription delivers (a process without streams has none yet)."""
    problems = feed_problems()
    if problems:
        raise NotReady("; ".join(problems))


def check_accepting() -> None:
    if process_shutdown().draining:
        raise NotReady("shutting down")


READINESS_CHECKS: dict[str, Callable[[], None]] = {
    "database": check_database,
    "broker": check_broker,
    "feed": check_feed,
    "accepting": check_accepting,
}


@require_safe
def healthz(request: HttpRequest) -> JsonResponse:
    # Checks nothing else on purpose: restarting this process would not cure a database outage.
    return JsonResponse({"status": "ok"})


@require_safe
def readyz(request: HttpRequest) -> JsonResponse:
    checks = {name: _outcome(name, check) for name, check in READINESS_CHECKS.items()}
    ready = all(outcome == "ok" for outcome in checks.values())
    return JsonResponse(
        {"status": "ok" if ready else "unavailable", "checks": checks},
        status=200 if ready else 503,
    )


def _outcome(name: str, check: Callable[[], None]) -> str:
    try:
        check()
    except (DatabaseError, BrokerUnavailable, NotReady):
        logger.warning("Readiness check %r failed", name, exc_info=True)
        return "error"
    return "ok"
