"""Client addresses come from the proxies the deployment trusts (``TRUSTED_PROXIES``), never from
a header whoever reaches the server can write.

Loopback has many addresses: here the trusted proxy connects from 127.0.0.2, a client that reaches
Daphne directly from 127.0.0.3, and 127.0.0.9 is an address allowed to read /metrics.
"""

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

from .services import Daphne, LiveProject, daphne_server

PROXY, DIRECT, ALLOWED = "127.0.0.2", "127.0.0.3", "127.0.0.9"


@contextmanager
def connecting_from(server: Daphne, address: str) -> Iterator[httpx.Client]:
    transport = httpx.HTTPTransport(local_address=address)
    with httpx.Client(base_url=server.url, transport=transport, timeout=10) as client:
        yield client


def test_a_forged_x_forwarded_for_changes_nothing_unless_a_trusted_proxy_sent_it(
    live_project: LiveProject, tmp_path: Path
) -> None:
    settings = {
        "TRUSTED_PROXIES": f"{PROXY}/32",
        "METRICS_TOKEN": "",
        "METRICS_ALLOWED_NETWORKS": f"{ALLOWED}/32",
        "LOGIN_ADDRESS_RATE": "3/min",
        # Plain http on loopback: cookies marked Secure would not be sent back.
        "SESSION_COOKIE_SECURE": "false",
        "CSRF_COOKIE_SECURE": "false",
    }
    with (
        daphne_server(live_project, tmp_path, **settings) as daphne,
        connecting_from(daphne, DIRECT) as direct,
        connecting_from(daphne, PROXY) as proxy,
    ):
        # Straight to Daphne: the header is not believed.
        assert direct.get("/metrics", headers={"X-Forwarded-For": ALLOWED}).status_code == 403
        # Through the proxy, which appends the address it saw: the client's own claim, to the
        # left of it, is not believed either.
        forged_chain = {"X-Forwarded-For": f"{ALLOWED}, {DIRECT}"}
        assert proxy.get("/metrics", headers=forged_chain).status_code == 403
        # The proxy vouching for a client at an allowed address: as it always worked.
        assert proxy.get("/metrics", headers={"X-Forwarded-For": ALLOWED}).status_code == 200

        # A limit per address holds, whatever address each request claims.
        direct.get("/accounts/login/").raise_for_status()
        statuses = []
        for n in range(5):
            response = direct.post(
                "/accounts/login/",
                data={
                    "username": f"nobody-{n}",
                    "password": "guess",
                    "csrfmiddlewaretoken": direct.cookies["csrftoken"],
                },
                headers={"X-Forwarded-For": f"10.0.0.{n}"},
            )
            statuses.append(response.status_code)
        log = daphne.log()
    assert statuses == [200, 200, 200, 429, 429]
    # Logs name the real peer.
    assert f'{DIRECT} "GET /metrics" 403' in log
    assert "10.0.0." not in log
    assert f"from {DIRECT}" in log  # the refused sign-ins
