"""The client's address, from the proxies the deployment trusts and from no one else.

A proxy appends the address it received a request from to ``X-Forwarded-For`` (nginx:
``$proxy_add_x_forwarded_for``), after whatever the client itself wrote there. So the header is
read from the right: each hop added by a trusted proxy (``TRUSTED_PROXIES``) names the next
address to judge, and the first address that is not a trusted proxy is the client. What the
client wrote, to the left of it, is never believed. A request whose peer is not a trusted proxy
keeps the peer as its address, and its ``X-Forwarded-*`` headers are dropped: whoever can reach
the server directly cannot claim another address (the ``/metrics`` allow-list, rate limits per
address, logs) or https.

Daphne's ``--proxy-headers`` and gunicorn's ``forwarded_allow_ips="*"`` took the leftmost address
of any peer: ``X-Forwarded-For: 127.0.0.1`` passed the ``/metrics`` allow-list without a token.
"""

import ipaddress
from collections.abc import Callable, Sequence
from functools import lru_cache

from asgiref.sync import iscoroutinefunction, markcoroutinefunction
from django.conf import settings
from django.http import HttpRequest

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
Network = ipaddress.IPv4Network | ipaddress.IPv6Network

_FORWARDED_HEADERS = ("HTTP_X_FORWARDED_FOR", "HTTP_X_FORWARDED_PROTO", "HTTP_X_REAL_IP")


@lru_cache(maxsize=4)
def _networks(cidrs: tuple[str, ...]) -> tuple[Network, ...]:
    return tuple(ipaddress.ip_network(cidr, strict=False) for cidr in cidrs)


def _address(text: str) -> Address | None:
    try:
        return ipaddress.ip_address(text.strip())
    except ValueError:
        return None


def client_address(peer: str, forwarded_for: str | None, trusted: Sequence[Network]) -> str:
    """The client's address, given the connection's ``peer`` and the ``X-Forwarded-For`` it
    sent (see the module's docstring)."""
    current = _address(peer)
    if current is None:
        return peer
    for hop in reversed((forwarded_for or "").split(",")):
        if not any(current in network for network in trusted):
            break  # not a proxy of ours: what it says of others is not believed
        forwarded = _address(hop)
        if forwarded is None:
            break  # a malformed hop: the last address a trusted proxy vouched for stands
        current = forwarded
    return str(current)


class TrustedProxyMiddleware:
    """First in ``MIDDLEWARE``: sets ``REMOTE_ADDR`` to the client's address, and keeps the
    ``X-Forwarded-*`` headers only from a trusted proxy (Django's ``SECURE_PROXY_SSL_HEADER``
    believes ``X-Forwarded-Proto`` from whoever sends it). Sync and async, as the request comes:
    no thread hop for an async request."""

    sync_capable = True
    async_capable = True

    def __init__(self, get_response: Callable[[HttpRequest], object]) -> None:
        self.get_response = get_response
        if iscoroutinefunction(get_response):
            markcoroutinefunction(self)

    def __call__(self, request: HttpRequest) -> object:
        trusted = _networks(tuple(settings.TRUSTED_PROXIES))
        peer = request.META.get("REMOTE_ADDR", "")
        address = _address(peer)
        if address is not None and any(address in network for network in trusted):
            request.META["REMOTE_ADDR"] = client_address(
                peer, request.META.get("HTTP_X_FORWARDED_FOR"), trusted
            )
        else:
            for header in _FORWARDED_HEADERS:
                request.META.pop(header, None)
        return self.get_response(request)  # a coroutine, when called as one
