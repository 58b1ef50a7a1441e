"""Prometheus metrics that stay correct under several gunicorn workers.

``scas-server`` creates a fresh ``PROMETHEUS_MULTIPROC_DIR`` for each run
before anything imports prometheus_client; every worker then writes its
values to files there and ``/metrics`` sums them with a
``MultiProcessCollector``. The gunicorn ``child_exit`` hook marks dead
workers so their gauges disappear (counters keep their totals). Without
that variable (tests of the bare flask app) the ordinary in-process
registry is used.
"""

from __future__ import annotations

import os

from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    Counter,
    Gauge,
    Histogram,
    generate_latest,
    multiprocess,
)

__all__ = [
    "AUDIT_FAILURES",
    "CONFIG_LOADED",
    "CONTENT_TYPE_LATEST",
    "DECISIONS",
    "REFUSALS",
    "RELOADS",
    "REQUEST_SECONDS",
    "mark_dead",
    "render",
]

DECISIONS = Counter(
    "scas_decisions_total", "Authorization decisions returned", ["decision", "action"]
)
REFUSALS = Counter(
    "scas_http_refusals_total", "Requests refused before a decision", ["status", "reason"]
)
REQUEST_SECONDS = Histogram(
    "scas_decision_seconds",
    "Time to answer one authorization query",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0),
)
AUDIT_FAILURES = Counter(
    "scas_audit_write_failures_total",
    "Decisions answered Indeterminate because their audit line could not be written",
)
RELOADS = Counter("scas_config_reloads_total", "Configuration reloads (SIGHUP)", ["result"])
CONFIG_LOADED = Gauge(
    "scas_config_loaded_timestamp_seconds",
    "When the running configuration was loaded",
    multiprocess_mode="max",
)


def _multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR") or None


def render() -> bytes:
    """The Prometheus text exposition of all workers' metrics."""
    if _multiproc_dir() is None:
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    multiprocess.MultiProcessCollector(registry)
    return generate_latest(registry)


def mark_dead(pid: int) -> None:
    """gunicorn ``child_exit``: drop a dead worker's live gauges."""
    if _multiproc_dir() is not None:
        multiprocess.mark_process_dead(pid)
