"""The generated nginx template, rendered outside a container and wrapped in a main config.

In the containers, the nginx image renders nginx/templates/*.template with envsubst at start
(compose.yaml sets the variables). Here the same substitution targets servers on loopback, so
Debian's nginx can check the result (`nginx -t`) or run it in front of local processes.
"""

import os
import re
import shlex
import subprocess
from pathlib import Path

from .certificates import Certificate, self_signed_certificate
from .helpers import free_port

TEMPLATE = Path("nginx/templates/default.conf.template")
VARIABLE = re.compile(r"\$\{(\w+)\}")


def render_template(text: str, variables: dict[str, str]) -> str:
    """`${NAME}` replaced for each defined NAME, as the image's envsubst does; nginx's own
    `$variables` untouched."""
    return VARIABLE.sub(lambda match: variables.get(match[1], match[0]), text)


def template_variables(project: Path) -> set[str]:
    """Names the template expects from the environment."""
    return set(VARIABLE.findall((project / TEMPLATE).read_text()))


def nginx_config(
    project: Path,
    directory: Path,
    *,
    port: int,
    asgi_upstreams: list[str],
    wsgi_upstream: str | None = None,
    static_root: Path | None = None,
    worker_connections: int = 1024,
    streams_per_ip: int | None = None,
    tls_port: int | None = None,
    certificate: Certificate | None = None,
    plain_http: str = "serve",
    workers: int = 1,
) -> Path:
    """Write nginx.conf (and the rendered site) into ``directory``; returns its path.

    nginx listens on 127.0.0.1:``port`` for plain http and on 127.0.0.1:``tls_port`` (default:
    a free port) for https and HTTP/2, with ``certificate`` (default: a self-signed one written
    into ``directory``). Plain http is served (``plain_http="serve"``, as the tests that speak
    plain http need) or redirected to the https port (``"redirect"``, compose's default).
    Several ASGI upstreams become several ``server`` lines. Static files come from
    ``static_root`` (default: the project's staticfiles/). It runs ``workers`` worker processes
    (default one; the nginx image runs one per core), each holding ``worker_connections``
    connections (default 1024, as in the nginx image's nginx.conf); each stream proxied takes two
    over HTTP/1.1, the client's and the upstream's.
    ``streams_per_ip`` is the template's limit of open streams per client address; by default it
    is ``worker_connections``, a limit the worker reaches first: every client of a test comes from
    127.0.0.1, and hundreds of them must not be refused as one address.
    Run it with ``nginx -p <directory> -c <config> -g "daemon off; pid <directory>/nginx.pid;"``.
    """
    directory.mkdir(parents=True, exist_ok=True)
    certificate = certificate or self_signed_certificate(directory / "certs")
    tls_port = tls_port or free_port()
    variables = {
        "NGINX_PORT": f"127.0.0.1:{port}",
        "NGINX_TLS_PORT": f"127.0.0.1:{tls_port}",
        "NGINX_HTTPS_PUBLIC_PORT": str(tls_port),
        "NGINX_TLS_CERTIFICATE": str(certificate.certificate),
        "NGINX_TLS_CERTIFICATE_KEY": str(certificate.key),
        "NGINX_PLAIN_HTTP": plain_http,
        "NGINX_ASGI_UPSTREAM": ";\n    server ".join(asgi_upstreams),
        "NGINX_STATIC_ROOT": str(static_root or project / "staticfiles"),
        "NGINX_ACCESS_LOG": str(directory / "access.log"),
        "NGINX_STREAMS_PER_IP": str(
            worker_connections if streams_per_ip is None else streams_per_ip
        ),
    }
    if wsgi_upstream is not None:
        variables["NGINX_WSGI_UPSTREAM"] = wsgi_upstream
    site = render_template((project / TEMPLATE).read_text(), variables)

    (directory / "site.conf").write_text(site)
    temp = directory / "temp"
    temp.mkdir(exist_ok=True)
    temp_paths = "\n".join(
        f"    {kind}_temp_path {temp / kind};"
        for kind in ("client_body", "proxy", "fastcgi", "uwsgi", "scgi")
    )
    # As root, nginx's workers would switch to `nobody`, who cannot enter pytest's private
    # temporary directories.
    user = "user root;\n" if os.geteuid() == 0 else ""
    mime_types = Path("/etc/nginx/mime.types")
    include_mime_types = f"    include {mime_types};\n" if mime_types.exists() else ""
    config = directory / "nginx.conf"
    config.write_text(
        f"""{user}worker_processes {workers};
# Room for every connection, whatever limit nginx was started with (it may raise its own up to
# the hard limit).
worker_rlimit_nofile {worker_connections + 64};
error_log {directory / "error.log"} warn;
events {{
    worker_connections {worker_connections};
}}
http {{
{include_mime_types}    access_log {directory / "access.log"};
{temp_paths}
    include {directory / "site.conf"};
}}
"""
    )
    return config


def nginx_command(nginx: str, config: Path, *directives: str) -> list[str]:
    """The command running nginx on a config written by nginx_config(), as any user, with its
    pid file and logs beside the config; ``directives`` are extra global ones (``-g``)."""
    return [
        nginx,
        "-p",
        str(config.parent),
        "-c",
        str(config),
        # Before it reads the config nginx opens its default error log, which only root may.
        "-e",
        str(config.parent / "error.log"),
        "-g",
        " ".join([*directives, f"pid {config.parent / 'nginx.pid'};"]),
    ]


def check_config(nginx: str, config: Path) -> subprocess.CompletedProcess[str]:
    """`nginx -t` on a config written by nginx_config()."""
    return subprocess.run(
        [*nginx_command(nginx, config), "-t"],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


def block(text: str, header: str) -> str:
    """The body of the first block opened by ``header {`` (blocks nested inside it included)."""
    start = re.search(re.escape(header) + r"\s*\{", text)
    assert start, f"no block {header!r}"
    depth, position = 1, start.end()
    for position in range(start.end(), len(text)):
        depth += {"{": 1, "}": -1}.get(text[position], 0)
        if depth == 0:
            break
    return text[start.end() : position]


def directives(body: str) -> list[list[str]]:
    """The simple directives of a block body (not those of blocks nested in it), split into
    words with quotes removed: ``proxy_set_header Connection "";`` -> [..., "Connection", ""]."""
    text = "\n".join(line.split("#", 1)[0] for line in body.splitlines())
    # Drop nested blocks.
    while "{" in text:
        text = re.sub(r"[^;{}]*\{[^{}]*\}", "", text)
    return [shlex.split(statement) for statement in text.split(";") if statement.strip()]
