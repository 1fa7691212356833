"""gunicorn settings, read from the working directory when gunicorn starts.

gunicorn serves every request except the event streams, which nginx sends to
Daphne: requests here are short, so plain sync workers fit. compose.yaml runs
``gunicorn config.wsgi:application --bind 0.0.0.0:8001``.
"""

import os

# gunicorn's advice is 2-4 workers per core. Set WEB_CONCURRENCY to size it to
# the container's share of the machine: os.cpu_count() sees the whole host.
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * (os.cpu_count() or 1) + 1))

# Only nginx can reach this port (it is not published), so trust the
# X-Forwarded-* headers it sets whatever its address on the network.
forwarded_allow_ips = "*"

# Access log to stdout, errors to stderr: the container runtime collects both.
accesslog = "-"
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# Worker heartbeats go to memory rather than to the container's overlay
# filesystem, where a slow write can make gunicorn kill a healthy worker.
worker_tmp_dir = "/dev/shm"

# The app user has no home directory for the runtime control socket; manage
# the workers with signals instead (HUP reloads, TTIN/TTOU add/remove one).
control_socket_disable = True
