"""Liveness and readiness probes for load balancers, compose and orchestrators."""
