"""The generated nginx template: valid for nginx, and configured for Server-Sent Events."""

import http.client
import json
import os
import re
import socket
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import yaml

from .helpers import free_port, require_binary
from .nginx_config import (
    TEMPLATE,
    block,
    check_config,
    directives,
    nginx_command,
    nginx_config,
    render_template,
    template_variables,
)
from .topology.processes import Server

TOPOLOGIES = ["daphne", "daphne+gunicorn"]
# The defaults of the generated settings (.env.example).
HEARTBEAT_SECONDS = 15
MAX_PAYLOAD_BYTES = 65536


def nginx_size(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)([kKmM]?)", value).groups()
    return int(number) * {"": 1, "k": 1024, "m": 1024**2}[unit.lower()]


def nginx_seconds(value: str) -> int:
    number, unit = re.fullmatch(r"(\d+)(s|m|h)?", value).groups()
    return int(number) * {"s": 1, "m": 60, "h": 3600, None: 1}[unit]


def rendered_site(project: Path, topology: str) -> str:
    variables = {
        "NGINX_PORT": "8080",
        "NGINX_ASGI_UPSTREAM": "127.0.0.1:8000",
        "NGINX_STATIC_ROOT": "/srv/static",
        "NGINX_STREAMS_PER_IP": "100",
    }
    if topology == "daphne+gunicorn":
        variables["NGINX_WSGI_UPSTREAM"] = "127.0.0.1:8001"
    return render_template((project / TEMPLATE).read_text(), variables)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_rendered_config_passes_nginx_t(baked, topology, tmp_path):
    nginx = require_binary("nginx", "/usr/sbin")
    project = baked(http_topology=topology)
    config = nginx_config(
        project,
        tmp_path / "nginx",
        port=8080,
        asgi_upstreams=["127.0.0.1:8000", "127.0.0.1:8002"],
        wsgi_upstream="127.0.0.1:8001" if topology == "daphne+gunicorn" else None,
    )
    result = check_config(nginx, config)
    assert result.returncode == 0, result.stderr
    assert "test is successful" in result.stderr
    assert "${" not in (tmp_path / "nginx" / "site.conf").read_text()


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_compose_sets_every_variable_of_the_template(baked, topology):
    project = baked(http_topology=topology)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    nginx = compose["services"]["nginx"]
    assert template_variables(project) == set(nginx["environment"])
    # The template directory is mounted where the nginx image renders templates from, and the
    # static files volume where the config says.
    assert "./nginx/templates:/etc/nginx/templates:ro" in nginx["volumes"]
    assert f"static:{nginx['environment']['NGINX_STATIC_ROOT']}:ro" in nginx["volumes"]


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_stream_location_passes_events_through_at_once(baked, topology):
    site = rendered_site(baked(http_topology=topology), topology)
    stream = directives(block(site, "location /api/events/stream/"))

    for directive in (
        ["proxy_pass", "http://asgi"],
        ["proxy_buffering", "off"],
        ["proxy_cache", "off"],
        ["gzip", "off"],
        ["proxy_http_version", "1.1"],
        ["proxy_set_header", "Connection", ""],
        ["proxy_set_header", "Host", "$http_host"],
        ["proxy_set_header", "X-Forwarded-For", "$proxy_add_x_forwarded_for"],
        ["proxy_set_header", "X-Forwarded-Proto", "$scheme"],
        ["proxy_set_header", "X-Real-IP", "$remote_addr"],
    ):
        assert directive in stream
    (read_timeout,) = [d[1] for d in stream if d[0] == "proxy_read_timeout"]
    assert nginx_seconds(read_timeout) >= 10 * HEARTBEAT_SECONDS


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_other_requests_go_to_the_topologys_server(baked, topology):
    site = rendered_site(baked(http_topology=topology), topology)
    other = directives(block(site, "location /"))
    server = "wsgi" if topology == "daphne+gunicorn" else "asgi"
    assert ["proxy_pass", f"http://{server}"] in other
    for header in ("Host", "X-Forwarded-For", "X-Forwarded-Proto", "X-Real-IP"):
        assert any(d[:2] == ["proxy_set_header", header] for d in other)

    asgi = directives(block(site, "upstream asgi"))
    assert ["keepalive", "32"] in asgi
    # With keepalive, a balancing method other than round-robin must come first.
    assert asgi.index(["least_conn"]) < asgi.index(["keepalive", "32"])


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_request_body_limit_admits_the_largest_event(baked, topology):
    site = rendered_site(baked(http_topology=topology), topology)
    server = directives(block(site, "server"))
    (limit,) = [d[1] for d in server if d[0] == "client_max_body_size"]
    assert nginx_size(limit) >= MAX_PAYLOAD_BYTES + 1024
    static = directives(block(site, "location /static/"))
    assert ["alias", "/srv/static/"] in static


# --- The per-address limit of open streams, in a real nginx ----------------------------------

STREAM_PATH = "/api/events/stream/"
# What the stub upstream sends first on each stream: the client knows its stream is proxied once
# it has read this line.
STREAM_GREETING = b": proxied\n"
# Bounds every wait of these tests: a socket read, a stub's count reaching a value.
WAIT_SECONDS = 5.0


class StubUpstream:
    """A stand-in for Daphne on loopback: answers every stream request with an event stream it
    holds open until nginx closes the connection, and any other request with a short 200. It
    counts the streams open at the moment, so a test knows what nginx has passed on."""

    def __init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.2)
        self.port = self.listener.getsockname()[1]
        self.open_streams = 0
        self.changed = threading.Condition()
        self.stopping = threading.Event()
        self.threads = [threading.Thread(target=self._accept, daemon=True)]

    def _accept(self) -> None:
        while not self.stopping.is_set():
            try:
                connection, _ = self.listener.accept()
            except TimeoutError:
                continue
            thread = threading.Thread(target=self._serve, args=(connection,), daemon=True)
            self.threads.append(thread)
            thread.start()

    def _serve(self, connection: socket.socket) -> None:
        with connection:
            connection.settimeout(0.2)
            head = b""
            while b"\r\n\r\n" not in head and not self.stopping.is_set():
                try:
                    data = connection.recv(4096)
                except TimeoutError:
                    continue
                if not data:
                    return
                head += data
            if not head.split(b" ", 2)[1].startswith(STREAM_PATH.encode()):
                connection.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: 2\r\n"
                    b"Connection: close\r\n\r\nok"
                )
                return
            connection.sendall(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                b"Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n"
                + b"%x\r\n%s\r\n"
                % (len(STREAM_GREETING), STREAM_GREETING)
            )
            self._count(+1)
            try:
                # Held open until nginx closes it, which it does when its client has gone.
                while not self.stopping.is_set():
                    try:
                        if not connection.recv(4096):
                            break
                    except TimeoutError:
                        continue
            finally:
                self._count(-1)

    def _count(self, change: int) -> None:
        with self.changed:
            self.open_streams += change
            self.changed.notify_all()

    def wait_for_open_streams(self, count: int) -> None:
        with self.changed:
            reached = self.changed.wait_for(lambda: self.open_streams == count, WAIT_SECONDS)
        assert reached, f"{self.open_streams} streams open upstream, expected {count}"

    @contextmanager
    def running(self) -> Iterator["StubUpstream"]:
        self.threads[0].start()
        try:
            yield self
        finally:
            self.stopping.set()
            for thread in self.threads:
                thread.join(timeout=WAIT_SECONDS)
            self.listener.close()


def request(
    port: int, path: str, source: str = "127.0.0.1"
) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    """GET ``path`` from nginx, from the client address ``source`` (any of 127.0.0.0/8)."""
    connection = http.client.HTTPConnection(
        "127.0.0.1", port, timeout=WAIT_SECONDS, source_address=(source, 0)
    )
    connection.request("GET", path, headers={"Accept": "text/event-stream"})
    return connection, connection.getresponse()


@pytest.mark.timeout(60)
@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_streams_over_the_per_address_limit_get_429_as_json(baked, topology, tmp_path):
    """With NGINX_STREAMS_PER_IP=2, one address holds two streams at once, no more: the third is
    refused with 429 and a JSON error (not passed on), while another address and the rest of the
    site are still served; once one stream closes, a new one is accepted."""
    nginx = require_binary("nginx", "/usr/sbin")
    project = baked(http_topology=topology)
    with ExitStack() as running:
        upstream = running.enter_context(StubUpstream().running())
        port = free_port()
        config = nginx_config(
            project,
            tmp_path / "nginx",
            port=port,
            asgi_upstreams=[f"127.0.0.1:{upstream.port}"],
            wsgi_upstream=f"127.0.0.1:{upstream.port}" if topology == "daphne+gunicorn" else None,
            streams_per_ip=2,
        )
        command = nginx_command(nginx, config, "daemon off;")
        server = Server("nginx", command, port, tmp_path, dict(os.environ), tmp_path / "nginx.log")
        running.callback(server.stop)
        server.start()

        def open_stream(source: str = "127.0.0.1") -> Callable[[], None]:
            """A stream through nginx, read up to the stub's first line; returns its close()."""
            connection, response = request(port, STREAM_PATH, source)
            running.callback(connection.close)
            assert response.status == 200, response.read()
            assert response.getheader("Content-Type") == "text/event-stream"
            assert response.readline() == STREAM_GREETING
            return connection.close

        close_first = open_stream()
        open_stream()
        upstream.wait_for_open_streams(2)

        connection, refused = request(port, STREAM_PATH)
        running.callback(connection.close)
        # The status first: a stream passed on would hold read() until its timeout.
        assert refused.status == 429, refused.getheader("Content-Type")
        assert refused.getheader("Content-Type") == "application/json"
        assert set(json.loads(refused.read())) == {"detail"}
        # Refused by nginx itself: the application never saw it.
        upstream.wait_for_open_streams(2)

        # The limit is per address, and only on streams.
        open_stream(source="127.0.0.2")
        upstream.wait_for_open_streams(3)
        connection, other = request(port, "/healthz")
        running.callback(connection.close)
        assert (other.status, other.read()) == (200, b"ok")

        # nginx closes the upstream connection when it ends the request, which frees its place.
        close_first()
        upstream.wait_for_open_streams(2)
        open_stream()
        upstream.wait_for_open_streams(3)

        # Logged as a warning (nginx's default would be an error), so that an operator sees the
        # limit at work.
        log = (tmp_path / "nginx" / "error.log").read_text().splitlines()
        refusals = [line for line in log if "limiting connections by zone" in line]
        assert len(refusals) == 1, log
        assert "[warn]" in refusals[0]
