"""What operators see of a running process: Prometheus metrics at ``/metrics`` and log context."""
