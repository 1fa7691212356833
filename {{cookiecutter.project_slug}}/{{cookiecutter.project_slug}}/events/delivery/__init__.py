"""Getting events to clients: the per-process hub and its fan-out, one client's stream (replay,
live events, heartbeats, its end), the ASGI handler that serves streams without a thread each,
Daphne's connection (flow control, direct writes), graceful shutdown and the process's stream
statistics.

Imports ``access`` (a stream's grant, and its recheck), ``broker``, ``core``, ``telemetry`` and
``conf``.
"""
