"""Running the SCAS app under gunicorn, configured from the server's YAML.

The gunicorn master owns the policy: it validates the whole configuration
(YAML, TLS files, lcas.db, lcmaps.db, ticket key) and builds the decision
pipeline; workers are forked from it and inherit that pipeline. On SIGHUP
gunicorn calls :meth:`ScasApplication.load_config` again in the master:
a new configuration replaces the old one only when all of it is valid;
otherwise the error (file:line) is logged and the new workers gunicorn
starts for the reload are forked with the previous, still valid pipeline.
So an invalid file can never take the service down, however many workers.

With a pidfile, every load (first and reload) also writes ``<pidfile>.status``
atomically (JSON: pid, generation, attempt, loaded_at, last), so ``scas-admin``
can tell that its SIGHUP was handled and whether the new policy was applied or
rejected, and why, without scraping the log.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import ssl
import tempfile
import time
from typing import Any

from gunicorn.app.base import BaseApplication

from scas_server.config import ConfigError, ServerConfig, load_config

__all__ = ["ScasApplication", "build_all", "gunicorn_settings", "status_path",
           "write_status"]

log = logging.getLogger("gunicorn.error")


def gunicorn_settings(cfg: ServerConfig) -> dict[str, Any]:
    """gunicorn settings for one validated configuration (the stress bare endpoint reuses them)."""
    from scas_server import metrics, tls

    settings: dict[str, Any] = {
        "bind": [cfg.listen],
        "workers": cfg.workers,
        "worker_class": cfg.worker_class,
        "threads": cfg.threads,
        "keepalive": cfg.keepalive,
        "pidfile": cfg.pidfile,
        "worker_connections": cfg.worker_connections,
        "timeout": cfg.timeout,
        "graceful_timeout": min(cfg.timeout, 10),
        "proc_name": "scas-server",
        "loglevel": cfg.log_level,
        "errorlog": "-",
        "child_exit": lambda server, worker: metrics.mark_dead(worker.pid),
        # SIGUSR1 (logrotate) reopens gunicorn's logs and the audit log, in every worker
        "logger_class": "scas_server.audit.ReopeningLogger",
        # request line and header bounds: a SOAP query needs little of either
        "limit_request_line": 8190,
        "limit_request_fields": 100,
        "limit_request_field_size": 8190,
        # gunicorn >= 25 opens a management socket under ~/.gunicorn by default: not here
        "control_socket_disable": True,
    }
    if cfg.unix_socket is not None:
        settings["umask"] = 0o777 & ~cfg.socket_mode
    else:
        settings.update(
            certfile=cfg.tls_cert,
            keyfile=cfg.tls_key,
            cert_reqs=ssl.CERT_REQUIRED,
            do_handshake_on_connect=True,
            ssl_context=lambda conf, default: tls.cached_context(cfg),
        )
    return settings


def build_all(path: str) -> tuple[ServerConfig, Any]:
    """Validate everything the server loads and build the pipeline, or raise ConfigError."""
    from scas_server import tls
    from scas_server.decision import build_pipeline

    cfg = load_config(path)
    if cfg.unix_socket is None:
        try:
            tls.server_context(cfg)
        except tls.TLSSetupError as exc:
            raise ConfigError([str(exc)]) from None
    return cfg, build_pipeline(cfg)


def prime_lease_stores(pipeline: Any) -> None:
    """Read each gridmapdir once in the master, before the workers fork: their first lookup
    of a held lease and their first lease then need no directory scan (a scan of 100,000
    entries takes about 0.3 s). A store that cannot be read is left to /health to report."""
    from leases.store import GridmapDirError

    for store in pipeline.engines.lease_stores():
        started = time.perf_counter()
        try:
            count = store.prime()
        except GridmapDirError as exc:
            log.warning("lease store %s not primed: %s", store.location, exc)
            continue
        if count:
            log.info("lease store %s: %d entries read in %.0f ms", store.location, count,
                     (time.perf_counter() - started) * 1000)  # fmt: skip


def status_path(pidfile: str) -> str:
    """Where the master reports its loads: beside the pidfile (``scas-admin`` reads it)."""
    return pidfile + ".status"


def write_status(path: str, status: dict[str, Any]) -> None:
    """Replace ``path`` atomically (a reader never sees half a document); never raise."""
    directory = os.path.dirname(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=".scas-status.", suffix=".tmp")
    except OSError as exc:
        log.warning("cannot write the reload status %s: %s", path, exc.strerror)
        return
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(status, fh, sort_keys=True)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except OSError as exc:
        log.warning("cannot write the reload status %s: %s", path, exc.strerror)
        with contextlib.suppress(OSError):
            os.unlink(tmp)


class ScasApplication(BaseApplication):
    """gunicorn application whose settings and policy come from one YAML file."""

    def __init__(self, config_path: str) -> None:
        self.config_path = config_path
        self.scas: ServerConfig | None = None
        self.pipeline: Any = None
        self.loads = 0  # successful loads: the policy generation
        self.attempts = 0
        self.loaded_at: float | None = None
        super().__init__(usage=None, prog="scas-server")

    def load_config(self) -> None:
        from scas_server import metrics

        first = self.scas is None
        self.attempts += 1
        started = time.time()
        try:
            cfg, pipeline = build_all(self.config_path)
        except ConfigError as exc:
            if first:
                raise
            metrics.RELOADS.labels("rejected").inc()
            for line in exc.errors:
                log.error("reload rejected, keeping the running policy: %s", line)
            self._report("rejected", exc.errors, started)
        else:
            prime_lease_stores(pipeline)
            self.scas, self.pipeline = cfg, pipeline
            self.loads += 1
            self.loaded_at = time.time()
            metrics.CONFIG_LOADED.set(self.loaded_at)
            if not first:
                metrics.RELOADS.labels("applied").inc()
                log.info("configuration reloaded from %s", cfg.path)
            self._report("applied", [], started)
        assert self.scas is not None
        for key, value in gunicorn_settings(self.scas).items():
            if key in self.cfg.settings:  # skip settings an older gunicorn lacks
                self.cfg.set(key, value)

    def _report(self, result: str, errors: list[str], started: float) -> None:
        """Write ``<pidfile>.status`` for this load attempt (only when a pidfile is set)."""
        if self.scas is None or self.scas.pidfile is None:
            return
        write_status(status_path(self.scas.pidfile), {
            "pid": os.getpid(),
            "generation": self.loads,
            "attempt": self.attempts,
            "loaded_at": self.loaded_at,
            "last": {"result": result, "errors": list(errors), "started": started,
                     "at": time.time()},
        })

    def do_load_config(self) -> None:
        # gunicorn's own version exits on any error; the first load must
        # fail loudly (the CLI reports it), a reload must never exit.
        self.load_default_config()
        self.load_config()
        self.cfg.validate()

    def load(self) -> Any:
        from scas_server.app import create_app

        return create_app(self.pipeline)
