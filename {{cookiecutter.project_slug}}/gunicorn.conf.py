"""gunicorn settings, read from the working directory when gunicorn starts.

gunicorn serves every request except the event streams, which nginx sends to
Daphne: requests here are short, so plain sync workers fit. compose.yaml runs
``gunicorn config.wsgi:application --bind 0.0.0.0:8001``.
"""

import os
import tempfile
from typing import Any

# gunicorn's advice is 2-4 workers per core. Set WEB_CONCURRENCY to size it to
# the container's share of the machine: os.cpu_count() sees the whole host.
workers = int(os.environ.get("WEB_CONCURRENCY", 2 * (os.cpu_count() or 1) + 1))

# X-Forwarded-Proto (https) is believed only from the proxies the settings
# trust (TRUSTED_PROXIES, as in config/settings.py): whoever else reaches
# this port cannot claim https.
forwarded_allow_ips = os.environ.get("TRUSTED_PROXIES", "127.0.0.1/32,::1/128")

# No access log of gunicorn's own: it would write a stream ticket whole; the
# application logs every request itself (observability/access_log.py). Errors
# go to stderr, which the container runtime collects.
accesslog = None
loglevel = os.environ.get("LOG_LEVEL", "info").lower()

# Worker heartbeats go to memory rather than to the container's overlay
# filesystem, where a slow write can make gunicorn kill a healthy worker.
worker_tmp_dir = "/dev/shm"

# The app user has no home directory for the runtime control socket; manage
# the workers with signals instead (HUP reloads, TTIN/TTOU add/remove one).
control_socket_disable = True

# Metrics: a scrape of /metrics reaches any one worker, so each worker writes its counters to
# files in this directory (prometheus-client's multiprocess mode) and the one that answers sums
# them all. A fresh directory, so no stale counts. prometheus-client reads it when first
# imported: nothing here imports it before this line, and the workers inherit the master's.
if "PROMETHEUS_MULTIPROC_DIR" not in os.environ:
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="metrics-", dir="/dev/shm")


def child_exit(server: Any, worker: Any) -> None:
    """A worker that exits keeps its counts in the sum; its live gauges must go (gunicorn hook)."""
    from prometheus_client import multiprocess  # see PROMETHEUS_MULTIPROC_DIR above

    multiprocess.mark_process_dead(worker.pid)
