"""``REDIS_URL`` read: one Redis server, or the master that Redis Sentinel names.

One server: ``redis://``, ``rediss://`` (TLS) or ``unix://``, read by redis-py as it is. Sentinel::

    redis+sentinel://[[user]:password@]host[:port][,host[:port]...]/<service>[/<db>]

``rediss+sentinel://`` speaks TLS to the sentinels and to the master. The hosts are the sentinels
(port 26379 when left out), ``<service>`` the name they monitor the master by. The user and the
password are the master's (and its replicas'), as in a ``redis://`` URL; the sentinels are asked
without them. Parts of the URL may be percent-encoded, as in any URL.
"""

import re
from dataclasses import dataclass
from urllib.parse import unquote

from redis.connection import parse_url

SENTINEL_PORT = 26379
# Scheme: whether it uses TLS.
_SENTINEL_SCHEMES = {"redis+sentinel": False, "rediss+sentinel": True}
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


def is_sentinel_url(url: str) -> bool:
    return url.partition("://")[0] in _SENTINEL_SCHEMES


def parse_sentinel_url(url: str) -> SentinelUrl:
    """Raises ValueError saying what is wrong. Its message never quotes the URL, nor any part of
    it: a password that holds a reserved character unencoded would show up in it."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme not in _SENTINEL_SCHEMES:
        raise ValueError("a Sentinel URL starts with redis+sentinel:// or rediss+sentinel://")
    if "?" in rest or "#" in rest:
        raise ValueError("a Sentinel URL takes no query string or fragment")
    authority, _, path = rest.partition("/")
    userinfo, _, hosts = authority.rpartition("@")
    username, has_password, password = userinfo.partition(":")
    if not hosts:
        raise ValueError("no sentinel address before the service name")
    sentinels = tuple(_address(text, number) for number, text in enumerate(hosts.split(","), 1))
    service, _, db = path.partition("/")
    if not service:
        raise ValueError("no service name: end the URL with /<service> (or /<service>/<db>)")
    if db and not (db.isascii() and db.isdigit()):
        raise ValueError("the database after the service name is not a number")
    return SentinelUrl(
        sentinels=sentinels,
        service=unquote(service),
        db=int(db or 0),
        username=unquote(username) or None,
        password=unquote(password) if has_password else None,
        tls=_SENTINEL_SCHEMES[scheme],
    )


# redis-py's own refusals, which name no part of the URL. Python's (a port that is not a number)
# quote the part they could not read: with a reserved character left unencoded in the password,
# a piece of the password.
_UNQUOTING_REFUSALS = ("Redis URL must specify", "Invalid value for")


def check_redis_url(url: str) -> None:
    """Raises ValueError if ``url`` cannot be used: a Sentinel URL by the rules above, any other
    as redis-py reads it (which is what a first connection would do). No message quotes the
    URL."""
    if is_sentinel_url(url):
        parse_sentinel_url(url)
        return
    try:
        parse_url(url)  # type: ignore[no-untyped-call]
    except ValueError as error:
        if str(error).startswith(_UNQUOTING_REFUSALS):
            raise
        raise ValueError(
            "its port is not a number (percent-encode any reserved character of the password)"
        ) from None


def _address(text: str, number: int) -> tuple[str, int]:
    match = _ADDRESS.fullmatch(text)
    port = int(match["port"] or SENTINEL_PORT) if match else 0
    if match is None or not 0 < port < 65536:
        raise ValueError(f"sentinel address {number} is not host or host:port")
    return unquote(match["ipv6"] or match["host"]), port
