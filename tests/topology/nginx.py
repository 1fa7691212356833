"""The generated nginx template, rendered for servers on loopback and wrapped in a main config."""

import os
import re
from pathlib import Path

TEMPLATE = Path("nginx/templates/default.conf.template")


def nginx_config(
    project: Path,
    directory: Path,
    *,
    port: int,
    asgi_upstreams: list[str],
    wsgi_upstream: str | None,
) -> Path:
    """Write nginx.conf (and the rendered site) into ``directory``; returns its path.

    Variables are replaced as the nginx image's entrypoint does: ``${NAME}`` for each defined NAME,
    nginx's own ``$variables`` untouched. Several ASGI upstreams become several ``server`` lines.
    """
    variables = {
        "NGINX_PORT": f"127.0.0.1:{port}",
        "NGINX_ASGI_UPSTREAM": ";\n    server ".join(asgi_upstreams),
        "NGINX_STATIC_ROOT": str(project / "staticfiles"),
    }
    if wsgi_upstream is not None:
        variables["NGINX_WSGI_UPSTREAM"] = wsgi_upstream
    template = (project / TEMPLATE).read_text()
    site = re.sub(r"\$\{(\w+)\}", lambda match: variables.get(match[1], match[0]), template)

    directory.mkdir(parents=True, exist_ok=True)
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
    config = directory / "nginx.conf"
    config.write_text(
        f"""{user}worker_processes 1;
error_log {directory / "error.log"} warn;
events {{
    worker_connections 1024;
}}
http {{
    access_log {directory / "access.log"};
{temp_paths}
    include {directory / "site.conf"};
}}
"""
    )
    return config
