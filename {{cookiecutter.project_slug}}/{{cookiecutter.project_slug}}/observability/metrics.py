"""``GET /metrics``: this process's metrics in the Prometheus text format, for a scraper only.

Each process answers for itself (Prometheus scrapes every replica). Under gunicorn, whose workers
are separate processes behind one port, ``gunicorn.conf.py`` sets ``PROMETHEUS_MULTIPROC_DIR``
and any worker answers for all of them (prometheus-client's multiprocess mode).

Allowed when the request carries ``Authorization: Bearer <METRICS_TOKEN>``, or comes from an
address in ``METRICS_ALLOWED_NETWORKS``; refused with a 403 otherwise. The public nginx server
does not proxy it at all.
"""

import hmac
import ipaddress
import os
from functools import cache

from django.conf import settings
from django.http import HttpRequest, HttpResponse, JsonResponse
from django.views.decorators.cache import never_cache
from django.views.decorators.http import require_GET
from prometheus_client import REGISTRY, CollectorRegistry, multiprocess
from prometheus_client.exposition import choose_encoder

# The engine's metrics register themselves on import; /metrics must expose them even in a
# process that has not served a stream yet.
from ..events.delivery.stats import HUB_STATE

IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network


@require_GET
@never_cache
def metrics(request: HttpRequest) -> HttpResponse:
    if not _allowed(request):
        return JsonResponse(
            {"detail": "Metrics are for the scraper: a METRICS_TOKEN or an allowed network."},
            status=403,
        )
    # The format the scraper asks for (Prometheus's text format, or OpenMetrics).
    encode, content_type = choose_encoder(request.headers.get("Accept", ""))
    return HttpResponse(encode(_registry()), content_type=content_type)


def _allowed(request: HttpRequest) -> bool:
    token: str = settings.METRICS_TOKEN
    if token:
        scheme, _, offered = request.headers.get("Authorization", "").partition(" ")
        if scheme.lower() == "bearer" and hmac.compare_digest(offered.encode(), token.encode()):
            return True
    try:
        address = ipaddress.ip_address(request.META.get("REMOTE_ADDR", ""))
    except ValueError:
        return False
    return any(address in network for network in _allowed_networks())


@cache
def _allowed_networks() -> tuple[IPNetwork, ...]:
    return tuple(ipaddress.ip_network(cidr) for cidr in settings.METRICS_ALLOWED_NETWORKS)


def _registry() -> CollectorRegistry:
    if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
        return REGISTRY
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
    registry.register(HUB_STATE)  # live state is this process's own, not summed over files
    return registry
