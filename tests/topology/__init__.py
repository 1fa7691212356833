"""Support for tests/test_topology.py: a generated project's servers behind nginx on loopback."""
