"""``REDIS_URL`` read: one Redis server, the master that Redis Sentinel names, or a Redis Cluster.

One server: ``redis://``, ``rediss://`` (TLS) or ``unix://``, read by redis-py as it is. Sentinel::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/<db>]

``rediss+sentinel://`` speaks TLS to the sentinels and to the master. The hosts are the sentinels
(port 26379 when left out), ``<service>`` the name they monitor the master by. The user and the
password are the master's (and its replicas'), as in a ``redis://`` URL; the sentinels are asked
without them. Cluster::

    redis+cluster://[[user]:password@]host[:port][,host[:port]...][/[0]]

``rediss+cluster://`` speaks TLS to every node. The hosts are startup nodes, any of the cluster's
(port 6379 when left out, as in ``redis://``): the client asks them for the others and for who
serves which slot. Redis Cluster has database 0 only: the URL ends with the hosts, ``/`` or
``/0``. The user and the password are every node's.

Parts of the URL may be percent-encoded, as in any URL.
"""

import re
from dataclasses import dataclass
from typing import NamedTuple
from urllib.parse import unquote

from redis.connection import parse_url

SENTINEL_PORT = 26379
REDIS_PORT = 6379
# Scheme: whether it uses TLS.
_SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
_CLUSTER_SCHEMES = {"redis+cluster": False, "rediss+cluster": True}
# host, [IPv6 host] or either with :port. The host part is checked for its shape only: a name
# that does not resolve fails when the first connection is made, as with redis://.
_ADDRESS = re.compile(
    r"(?:\[(?P<ipv6>[0-9A-Fa-f:.]+)\]|(?P<host>[^:\[\]@/]+))(?::(?P<port>[0-9]+))?"
)


@dataclass(frozen=True, slots=True)
class SentinelUrl:
    sentinels: tuple[tuple[str, int], ...]
    service: str
    db: int = 0
    username: str | None = None
    password: str | None = None
    tls: bool = False


@dataclass(frozen=True, slots=True)
class ClusterUrl:
    nodes: tuple[tuple[str, int], ...]
    username: str | None = None
    password: str | None = None
    tls: bool = False


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0] in _SENTINEL_SCHEMES


def is_cluster_url(url: str) -> bool:
    return url.partition("://")[0] in _CLUSTER_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Raises ValueError saying what is wrong. Its message never quotes the URL, nor any part of
    it: a password that holds a reserved character unencoded would show up in it."""
    parts = _split(url, _SENTINEL_SCHEMES, "Sentinel")
    if not parts.hosts:
        raise ValueError("no sentinel address before the service name")
    sentinels = _addresses(parts.hosts, "sentinel", SENTINEL_PORT)
    service, _, db = parts.path.partition("/")
    if not service:
        raise ValueError("no service name: end the URL with /<service> (or /<service>/<db>)")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError("the database after the service name is not a number")
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(service),
        db=int(db or 0),
        username=parts.username,
        password=parts.password,
        tls=parts.tls,
    )


def parse_cluster_url(url: str) -> ClusterUrl:
    """Raises ValueError saying what is wrong, never quoting the URL (as ``parse_sentinel_url``
    does not)."""
    parts = _split(url, _CLUSTER_SCHEMES, "Cluster")
    if not parts.hosts:
        raise ValueError("no node address")
    nodes = _addresses(parts.hosts, "node", REDIS_PORT)
    # Refused rather than ignored: data written to "database 2" would land in database 0, shared
    # with whatever else uses the cluster.
    if parts.path not in ("", "0"):
        raise ValueError("Redis Cluster has database 0 only: end the URL with the hosts, / or /0")
    return ClusterUrl(nodes=nodes, username=parts.username, password=parts.password, tls=parts.tls)


# redis-py's own refusals, which name no part of the URL. Python's (a port that is not a number)
# quote the part they could not read: with a reserved character left unencoded in the password,
# a piece of the password.
_UNQUOTING_REFUSALS = ("Redis URL must specify", "Invalid value for")


def check_redis_url(url: str) -> None:
    """Raises ValueError if ``url`` cannot be used: a Sentinel or Cluster URL by the rules above,
    any other as redis-py reads it (which is what a first connection would do). No message quotes
    the URL."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return
    if is_cluster_url(url):
        parse_cluster_url(url)
        return
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as error:
        if str(error).startswith(_UNQUOTING_REFUSALS):
            raise
        raise ValueError(
            "its port is not a number (percent-encode any reserved character of the password)"
        ) from None


class _Parts(NamedTuple):
    """A Sentinel or Cluster URL split, its credentials decoded; the rest still encoded."""

    tls: bool
    username: str | None
    password: str | None
    hosts: str
    path: str


def _split(url: str, schemes: dict[str, bool], kind: str) -> _Parts:
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in schemes:
        starts = " or ".join(f"{name}://" for name in schemes)
        raise ValueError(f"a {kind} URL starts with {starts}")
    if "?" in rest or "#" in rest:
        raise ValueError(f"a {kind} URL takes no query string or fragment")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    username, has_password, password = userinfo.partition(":")
    return _Parts(
        tls=schemes[scheme],
        username=unquote(username) or None,
        password=unquote(password) if has_password else None,
        hosts=hosts,
        path=path,
    )


def _addresses(hosts: str, role: str, default_port: int) -> tuple[tuple[str, int], ...]:
    """``hosts``, comma-separated, read as addresses; ``role`` names them in a refusal, by their
    place (``sentinel address 2``, ``node address 1``), never by what they hold."""
    return tuple(
        _address(text, f"{role} address {number}", default_port)
        for number, text in enumerate(hosts.split(","), 1)
    )


def _address(text: str, name: str, default_port: int) -> tuple[str, int]:
    match = _ADDRESS.fullmatch(text)
    port = int(match["port"] or default_port) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(f"{name} is not host or host:port")
    return unquote(match["ipv6"] or match["host"]), port
