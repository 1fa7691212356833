#!/usr/bin/env python
"""How many event streams one Daphne process holds, and what they cost: this project against two
baselines, measured in one run on loopback. See docs/benchmark.md.

Run from the project directory, in its virtualenv::

    python benchmarks/streams.py            # 1,000 streams: project, article's design, bare ASGI
    python benchmarks/streams.py --sweep    # 1,000, 2,000, 5,000 and 10,000 streams
    python benchmarks/streams.py --quick    # 100 streams, 50 + 50 events: a smoke check
    python benchmarks/streams.py --redis-cluster 3   # the project on a 3-master Redis Cluster
    python benchmarks/streams.py --help

The modules of the ``benchmarks`` package, one job each: ``cli`` (options, the run),
``scenario`` (one system at one stream count), ``client`` (the load client's worker processes),
``launcher`` (redis-server and Daphne), ``cluster`` (``--redis-cluster``: a Redis Cluster
started here, and its publishing phase), ``procfs`` (the server's CPU, memory, threads,
descriptors and connections), ``project`` (database, tokens, publishing), ``systems`` with
``article``, ``bare_asgi`` and ``stock_asgi`` (what is measured), ``report`` (the tables).
"""

import sys
from pathlib import Path

if __name__ == "__main__":
    # Run as a script: the project directory holds the benchmarks package and the project.
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
    from benchmarks.cli import main

    try:
        sys.exit(main())
    except KeyboardInterrupt:
        # Every process started here has been stopped by then (finally blocks, context managers).
        print("Interrupted.", file=sys.stderr)
        sys.exit(130)
