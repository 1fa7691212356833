"""The generated nginx template: valid for nginx, and configured for Server-Sent Events."""

import re
from pathlib import Path

import pytest
import yaml

from .helpers import require_binary
from .nginx_config import (
    TEMPLATE,
    block,
    check_config,
    directives,
    nginx_config,
    render_template,
    template_variables,
)

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
