"""REDIS_URL: a Sentinel or Cluster URL read into its parts, a malformed one refused at startup
(without its password in the message), and Django's cache given a Sentinel URL whole."""

import pytest
from django.test import override_settings

from ..broker.redis.cache import RedisCache
from ..broker.redis.urls import ClusterUrl, SentinelUrl, parse_cluster_url, parse_sentinel_url
from ..checks import check_event_settings


def test_a_sentinel_url_names_the_sentinels_the_service_the_database_and_the_credentials() -> None:
    url = "redis+sentinel://app:p%40ss%2Fword@s1:26380,[::1],s3/main%20cache/2"
    assert parse_sentinel_url(url) == SentinelUrl(
        sentinels=(("s1", 26380), ("::1", 26379), ("s3", 26379)),
        service="main cache",
        db=2,
        username="app",
        password="p@ss/word",
        tls=False,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+sentinel://s1/main", SentinelUrl((("s1", 26379),), "main")),
        (
            "redis+sentinel://:secret@s1:1/main/",
            SentinelUrl((("s1", 1),), "main", password="secret"),
        ),
        ("rediss+sentinel://s1:26379/main/0", SentinelUrl((("s1", 26379),), "main", tls=True)),
    ],
)
def test_what_a_sentinel_url_may_leave_out(url: str, expected: SentinelUrl) -> None:
    assert parse_sentinel_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://:secret@s1:26379", "no service name"),
        ("redis+sentinel://:secret@s1:26379/", "no service name"),
        ("redis+sentinel://:secret@/main", "no sentinel address"),
        ("redis+sentinel://:secret@s1:port/main", "sentinel address 1 is not host"),
        ("redis+sentinel://:secret@s1:0/main", "sentinel address 1 is not host"),
        ("redis+sentinel://:secret@s1:65536/main", "sentinel address 1 is not host"),
        # A digit to Python (int() reads it), not in a port.
        ("redis+sentinel://:secret@s1:\u0663/main", "sentinel address 1 is not host"),
        ("redis+sentinel://:secret@s1,,s3/main", "sentinel address 2 is not host"),
        ("redis+sentinel://:secret@::1/main", "sentinel address 1 is not host"),
        ("redis+sentinel://:secret@s1/main/zero", "database after the service name"),
        ("redis+sentinel://:secret@s1/main/0/1", "database after the service name"),
        ("redis+sentinel://:secret@s1/main?db=1", "no query string"),
        # A reserved character left unencoded in the password: the rest is read as the host.
        ("redis+sentinel://:sec/ret@s1/main", "sentinel address 1 is not host"),
    ],
)
def test_a_malformed_sentinel_url_is_refused_without_quoting_it(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        parse_sentinel_url(url)
    assert "sec" not in str(raised.value)


def test_a_cluster_url_names_the_startup_nodes_and_the_credentials() -> None:
    url = "redis+cluster://app:p%40ss%2Fword@n1:7000,[::1],[2001:db8::7]:7002,n%2D4:7003/"
    assert parse_cluster_url(url) == ClusterUrl(
        nodes=(("n1", 7000), ("::1", 6379), ("2001:db8::7", 7002), ("n-4", 7003)),
        username="app",
        password="p@ss/word",
        tls=False,
    )


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("redis+cluster://n1", ClusterUrl((("n1", 6379),))),
        ("redis+cluster://n1:7000/", ClusterUrl((("n1", 7000),))),
        ("redis+cluster://:secret@n1/0", ClusterUrl((("n1", 6379),), password="secret")),
        ("redis+cluster://app:@n1", ClusterUrl((("n1", 6379),), username="app", password="")),
        ("rediss+cluster://n1:7000,n2:7001", ClusterUrl((("n1", 7000), ("n2", 7001)), tls=True)),
    ],
)
def test_what_a_cluster_url_may_leave_out(url: str, expected: ClusterUrl) -> None:
    assert parse_cluster_url(url) == expected


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis://:secret@n1:7000", "starts with redis\\+cluster:// or rediss\\+cluster://"),
        ("redis+cluster://:secret@", "no node address"),
        ("redis+cluster://:secret@/", "no node address"),
        ("redis+cluster://:secret@n1:port", "node address 1 is not host"),
        ("redis+cluster://:secret@n1:0", "node address 1 is not host"),
        ("redis+cluster://:secret@n1:65536", "node address 1 is not host"),
        ("redis+cluster://:secret@n1:7000,n2:\u0663", "node address 2 is not host"),
        ("redis+cluster://:secret@n1,,n3", "node address 2 is not host"),
        ("redis+cluster://:secret@n1,::1", "node address 2 is not host"),
        ("redis+cluster://:secret@n1/1", "database 0 only"),
        ("redis+cluster://:secret@n1/00", "database 0 only"),
        ("redis+cluster://:secret@n1/0/", "database 0 only"),
        ("redis+cluster://:secret@n1/main", "database 0 only"),
        ("redis+cluster://:secret@n1?db=0", "no query string"),
        ("redis+cluster://:secret@n1/#0", "no query string or fragment"),
        # A reserved character left unencoded in the password: the rest is read as the path.
        ("redis+cluster://:sec/ret@n1", "node address 1 is not host"),
    ],
)
def test_a_malformed_cluster_url_is_refused_without_quoting_it(url: str, reason: str) -> None:
    with pytest.raises(ValueError, match=reason) as raised:
        parse_cluster_url(url)
    assert "sec" not in str(raised.value)
    assert "ret" not in str(raised.value)


@pytest.mark.parametrize(
    ("url", "reason"),
    [
        ("redis+sentinel://:secret@s1:26379", "no service name"),
        ("redis+sentinal://s1:26379/main", "must specify one of the following schemes"),
        ("redis+cluster://:secret@n1:7000/2", "database 0 only"),
        ("redis://127.0.0.1:6379/0?db=first", "Invalid value for 'db'"),
        # A reserved character left unencoded in the password: Python's own message would quote
        # the "port" it read, a piece of the password.
        ("redis://:secret/part@127.0.0.1:6379/0", "its port is not a number"),
    ],
)
def test_manage_py_check_refuses_a_redis_url_that_cannot_work(url: str, reason: str) -> None:
    with override_settings(REDIS_URL=url):
        errors = check_event_settings()
    assert [error.id for error in errors] == ["events.E003"]
    assert reason in errors[0].msg
    assert "secret" not in errors[0].msg


@pytest.mark.parametrize(
    "url",
    [
        "",
        "redis://:secret@127.0.0.1:6379/0",
        "redis+sentinel://s1,s2:26380/main/1",
        "redis+cluster://:secret@n1:7000,n2:7001/",
        "rediss+cluster://app:secret@[::1]:7000",
    ],
)
def test_manage_py_check_accepts_a_usable_redis_url(url: str) -> None:
    with override_settings(REDIS_URL=url):
        assert check_event_settings() == []


def test_the_cache_keeps_a_sentinel_or_cluster_url_whole() -> None:
    """Django splits LOCATION at its commas (several servers); in a Sentinel URL they separate
    the sentinels of one deployment, in a Cluster URL the nodes of one cluster."""
    url = "redis+sentinel://s1:26379,s2:26379/main/0"
    assert RedisCache(url, {})._servers == [url]
    url = "redis+cluster://n1:7000,n2:7001/"
    assert RedisCache(url, {})._servers == [url]
    assert RedisCache("redis://a:6379/0,redis://b:6379/0", {})._servers == [
        "redis://a:6379/0",
        "redis://b:6379/0",
    ]
