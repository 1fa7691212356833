"""``client_address``: X-Forwarded-For read from the right, believed only from trusted proxies."""

from ipaddress import ip_network

import pytest

from ..proxies import client_address


@pytest.mark.parametrize(
    ("peer", "forwarded_for", "client"),
    [
        ("127.0.0.3", "127.0.0.9", "127.0.0.3"),  # not a proxy of ours
        ("127.0.0.2", None, "127.0.0.2"),  # a proxy's own request
        ("127.0.0.2", "203.0.113.7", "203.0.113.7"),
        ("127.0.0.2", "127.0.0.9, 203.0.113.7", "203.0.113.7"),  # the client's claim, left
        ("127.0.0.2", "203.0.113.7, 10.1.2.3", "203.0.113.7"),  # two proxies of ours
        ("127.0.0.2", "203.0.113.7, 10.1.2.3, 127.0.0.2", "203.0.113.7"),
        ("127.0.0.2", "garbage, 10.1.2.3", "10.1.2.3"),  # the last address vouched for
        ("127.0.0.2", " 2001:db8::1 ", "2001:db8::1"),
        ("::1", "2001:db8::1", "2001:db8::1"),
    ],
)
def test_the_client_is_the_first_untrusted_address_from_the_right(
    peer: str, forwarded_for: str | None, client: str
) -> None:
    trusted = [ip_network("127.0.0.2/32"), ip_network("10.0.0.0/8"), ip_network("::1/128")]
    assert client_address(peer, forwarded_for, trusted) == client
