"""The generated nginx template: valid for nginx, and configured for Server-Sent Events."""

import http.client
import json
import os
import re
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

import pytest
import yaml

from .certificates import Certificate
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
        "NGINX_TLS_PORT": "8443",
        "NGINX_HTTPS_PUBLIC_PORT": "8443",
        "NGINX_TLS_CERTIFICATE": "/etc/nginx/certs/fullchain.pem",
        "NGINX_TLS_CERTIFICATE_KEY": "/etc/nginx/certs/privkey.pem",
        "NGINX_PLAIN_HTTP": "redirect",
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


def test_the_certificate_make_cert_writes_passes_nginx_t(baked, tmp_path):
    """The one-command certificate for local use (docs/deployment.md) is one nginx loads, where
    compose mounts it from."""
    nginx = require_binary("nginx", "/usr/sbin")
    project = Path(shutil.copytree(baked(), tmp_path / "project"))
    subprocess.run(
        [require_binary("make"), "cert"], cwd=project, check=True, capture_output=True, timeout=60
    )
    certs = project / "nginx" / "certs"
    config = nginx_config(
        project,
        tmp_path / "nginx",
        port=8080,
        asgi_upstreams=["127.0.0.1:8000"],
        certificate=Certificate(certs / "fullchain.pem", certs / "privkey.pem"),
    )
    result = check_config(nginx, config)
    assert result.returncode == 0, result.stderr
    # The private key stays out of git.
    subprocess.run(["git", "init", "--quiet"], cwd=project, check=True, timeout=30)
    ignored = subprocess.run(
        ["git", "check-ignore", "--quiet", "nginx/certs/privkey.pem"],
        cwd=project,
        capture_output=True,
        check=False,
    )
    assert ignored.returncode == 0, "nginx/certs/privkey.pem is not git-ignored"


def test_nginx_refuses_to_start_without_a_certificate_and_says_what_to_do(baked, tmp_path):
    """compose runs nginx/require-certificate.sh before nginx (the image runs the executable
    /docker-entrypoint.d/*.sh): without the certificate it fails, naming `make cert`."""
    project = baked()
    script = project / "nginx" / "require-certificate.sh"
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    mounts = compose["services"]["nginx"]["volumes"]
    assert any(
        re.fullmatch(r"\./nginx/require-certificate\.sh:/docker-entrypoint\.d/[\w-]+\.sh:ro", m)
        for m in mounts
    ), mounts
    assert os.access(script, os.X_OK), "the nginx image skips scripts that are not executable"

    certificate = Certificate(tmp_path / "fullchain.pem", tmp_path / "privkey.pem")
    env = {
        "NGINX_TLS_CERTIFICATE": str(certificate.certificate),
        "NGINX_TLS_CERTIFICATE_KEY": str(certificate.key),
    }
    missing = subprocess.run(
        [str(script)], env=env, capture_output=True, text=True, timeout=30, check=False
    )
    assert missing.returncode != 0
    assert "make cert" in missing.stderr
    assert str(certificate.certificate) in missing.stderr
    certificate.certificate.write_text("certificate")
    certificate.key.write_text("key")
    present = subprocess.run([str(script)], env=env, capture_output=True, timeout=30, check=False)
    assert present.returncode == 0, present.stderr


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_compose_sets_every_variable_of_the_template(baked, topology):
    project = baked(http_topology=topology)
    compose = yaml.safe_load((project / "compose.yaml").read_text())
    nginx = compose["services"]["nginx"]
    environment = nginx["environment"]
    assert template_variables(project) == set(environment)
    # The template directory is mounted where the nginx image renders templates from, the
    # static files volume where the config says, and the certificate's directory where the
    # certificate settings point.
    assert "./nginx/templates:/etc/nginx/templates:ro" in nginx["volumes"]
    assert f"static:{environment['NGINX_STATIC_ROOT']}:ro" in nginx["volumes"]
    assert "./nginx/certs:/etc/nginx/certs:ro" in nginx["volumes"]
    for setting in ("NGINX_TLS_CERTIFICATE", "NGINX_TLS_CERTIFICATE_KEY"):
        assert environment[setting].startswith("/etc/nginx/certs/"), setting
    # Both ports published; plain http redirects to the published https port by default.
    ports = [str(port) for port in nginx["ports"]]
    assert any(port.endswith(f":{environment['NGINX_PORT']}") for port in ports), ports
    assert any(port.endswith(f":{environment['NGINX_TLS_PORT']}") for port in ports), ports
    assert environment["NGINX_PLAIN_HTTP"] == "${NGINX_PLAIN_HTTP:-redirect}"
    assert environment["NGINX_HTTPS_PUBLIC_PORT"] == "${HTTPS_PORT:-8443}"


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_tls_server_speaks_http2_with_modern_settings(baked, topology):
    site = rendered_site(baked(http_topology=topology), topology)
    server = directives(block(site, "server"))
    listens = [d[1:] for d in server if d[0] == "listen"]
    assert ["8080", "default_server"] in listens
    # The form nginx 1.22 and 1.25.1+ both accept (`http2 on;` is unknown to 1.22).
    assert ["8443", "ssl", "http2", "default_server"] in listens
    assert ["ssl_certificate", "/etc/nginx/certs/fullchain.pem"] in server
    assert ["ssl_certificate_key", "/etc/nginx/certs/privkey.pem"] in server
    assert ["ssl_protocols", "TLSv1.2", "TLSv1.3"] in server
    (ciphers,) = [d[1] for d in server if d[0] == "ssl_ciphers"]
    for cipher in ciphers.split(":"):
        assert cipher.startswith("ECDHE-"), cipher
        assert "GCM" in cipher or "CHACHA20" in cipher, cipher
    # HSTS is Django's (SECURE_HSTS_*): nginx adding its own would send the header twice.
    assert not re.search(r"^\s*add_header\s+Strict-Transport-Security", site, re.M | re.I)


@pytest.mark.parametrize("topology", TOPOLOGIES)
def test_metrics_are_not_served_to_the_public(baked, topology):
    """/metrics (the application's Prometheus endpoint) is answered 404 by nginx on every server,
    never proxied."""
    site = rendered_site(baked(http_topology=topology), topology)
    starts = [match.start() for match in re.finditer(r"^server\s*\{", site, flags=re.MULTILINE)]
    assert starts
    for start in starts:
        server = block(site[start:], "server")
        assert directives(block(server, "location = /metrics")) == [["return", "404"]]


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
    # least_conn's counts shared by nginx's workers (the test of balancing below runs several).
    assert any(d[0] == "zone" for d in asgi)


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
        assert refused.getheader("Retry-After") == "10"
        assert json.loads(refused.read())["code"] == "throttled"
        # Refused by nginx itself: the application never saw it.
        upstream.wait_for_open_streams(2)

        # The limit is per address, and only on streams.
        open_stream(source="127.0.0.2")
        upstream.wait_for_open_streams(3)
        connection, other = request(port, "/healthz")
        running.callback(connection.close)
        assert (other.status, other.read()) == (200, b"ok")
        # A body over client_max_body_size is refused as JSON too, before the application.
        connection = http.client.HTTPConnection("127.0.0.1", port, timeout=WAIT_SECONDS)
        running.callback(connection.close)
        connection.request("POST", "/api/events/", body=b"x" * 200_000)
        too_large = connection.getresponse()
        assert too_large.status == 413
        assert too_large.getheader("Content-Type") == "application/json"
        assert json.loads(too_large.read())["code"] == "too_large"

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


@pytest.mark.timeout(60)
def test_the_access_log_hides_stream_tickets(baked, tmp_path):
    """A stream ticket opens streams until it expires: the access log writes the request line
    with its value hidden, and the rest of the line as before."""
    nginx = require_binary("nginx", "/usr/sbin")
    project = baked()
    ticket = "gAAAAABsecret-ticket_value="
    with ExitStack() as running:
        upstream = running.enter_context(StubUpstream().running())
        port = free_port()
        config = nginx_config(
            project, tmp_path / "nginx", port=port, asgi_upstreams=[f"127.0.0.1:{upstream.port}"]
        )
        command = nginx_command(nginx, config, "daemon off;")
        server = Server("nginx", command, port, tmp_path, dict(os.environ), tmp_path / "nginx.log")
        running.callback(server.stop)
        server.start()
        for query in (f"ticket={ticket}", f"topic=news&ticket={ticket}&x=1"):
            connection, response = request(port, f"{STREAM_PATH}?{query}")
            assert response.status == 200
            assert response.readline() == STREAM_GREETING
            connection.close()
        upstream.wait_for_open_streams(0)
    log = (tmp_path / "nginx" / "access.log").read_text()
    assert "ticket" in log  # the lines are there,
    assert "secret" not in log  # without the ticket
    assert f"GET {STREAM_PATH}?ticket=[hidden] HTTP/1.1" in log
    assert f"GET {STREAM_PATH}?topic=news&ticket=[hidden]&x=1 HTTP/1.1" in log


# --- Balancing streams over replicas, in a real nginx with several workers -------------------

BALANCED_STREAMS = 8


@pytest.mark.timeout(60)
def test_streams_are_balanced_over_replicas_whichever_worker_accepts_them(baked, tmp_path):
    """nginx runs a worker per core, and the kernel hands each new connection to any of them.
    least_conn must count the streams of all workers together: then streams opened one after
    the other alternate between two replicas, however the workers shared them."""
    nginx = require_binary("nginx", "/usr/sbin")
    project = baked()
    with ExitStack() as running:
        replicas = [running.enter_context(StubUpstream().running()) for _ in range(2)]
        port = free_port()
        config = nginx_config(
            project,
            tmp_path / "nginx",
            port=port,
            asgi_upstreams=[f"127.0.0.1:{replica.port}" for replica in replicas],
            workers=4,
        )
        command = nginx_command(nginx, config, "daemon off;")
        server = Server("nginx", command, port, tmp_path, dict(os.environ), tmp_path / "nginx.log")
        running.callback(server.stop)
        server.start()

        for _ in range(BALANCED_STREAMS):
            connection, response = request(port, STREAM_PATH)
            running.callback(connection.close)
            assert response.status == 200
            assert response.readline() == STREAM_GREETING
        for replica in replicas:
            replica.wait_for_open_streams(BALANCED_STREAMS // 2)


# --- https, HTTP/2 and the redirect from plain http, in a real nginx --------------------------


def tls_get(port: int, path: str, trusted: Path) -> tuple[str | None, int, bytes]:
    """GET ``path`` over https, trusting the certificate ``trusted``, offering h2 and HTTP/1.1 by
    ALPN and speaking HTTP/1.1 whatever nginx chose: the protocol nginx chose, and the response's
    status and body."""
    context = ssl.create_default_context(cafile=trusted)
    context.set_alpn_protocols(["h2", "http/1.1"])
    raw = socket.create_connection(("127.0.0.1", port), timeout=WAIT_SECONDS)
    with context.wrap_socket(raw, server_hostname="localhost") as tls:
        chosen = tls.selected_alpn_protocol()
    connection = http.client.HTTPSConnection(
        "localhost", port, timeout=WAIT_SECONDS, context=ssl.create_default_context(cafile=trusted)
    )
    try:
        connection.request("GET", path)
        response = connection.getresponse()
        return chosen, response.status, response.read()
    finally:
        connection.close()


@pytest.mark.timeout(60)
def test_plain_http_redirects_to_https_but_for_the_probes_and_metrics_get_404(baked, tmp_path):
    """As compose runs it (NGINX_PLAIN_HTTP=redirect): plain http is sent to the https port, the
    probes excepted; https offers HTTP/2 and serves the site; /metrics is 404 on both."""
    nginx = require_binary("nginx", "/usr/sbin")
    project = baked()
    with ExitStack() as running:
        upstream = running.enter_context(StubUpstream().running())
        port, tls_port = free_port(), free_port()
        config = nginx_config(
            project,
            tmp_path / "nginx",
            port=port,
            tls_port=tls_port,
            asgi_upstreams=[f"127.0.0.1:{upstream.port}"],
            plain_http="redirect",
        )
        command = nginx_command(nginx, config, "daemon off;")
        server = Server("nginx", command, port, tmp_path, dict(os.environ), tmp_path / "nginx.log")
        running.callback(server.stop)
        server.start()

        for path in ("/", "/api/events/stream/", "/static/app.css", "/admin/?next=/x"):
            connection, response = request(port, path)
            running.callback(connection.close)
            assert response.status == 301, (path, response.status)
            assert response.getheader("Location") == f"https://127.0.0.1:{tls_port}{path}"
        for probe in ("/healthz", "/readyz"):
            connection, response = request(port, probe)
            running.callback(connection.close)
            assert (response.status, response.read()) == (200, b"ok"), probe
        connection, response = request(port, "/metrics")
        running.callback(connection.close)
        assert response.status == 404

        trusted = tmp_path / "nginx" / "certs" / "fullchain.pem"
        assert tls_get(tls_port, "/", trusted) == ("h2", 200, b"ok")
        assert tls_get(tls_port, "/metrics", trusted)[1] == 404
