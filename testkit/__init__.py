"""Test tooling, never installed: a throw-away PKI and the demo site built on it.

Nothing in a library package imports this. The tests, ``tests/demo`` and ``stress/`` do.
The keys it makes are for loopback tests only.
"""
