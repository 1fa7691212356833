"""What the engine tells its operators: Prometheus metrics, each stream's log lines, and the
count of unusable broker messages.

Imports nothing of the app: every layer above reports through it.
"""
