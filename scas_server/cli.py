"""``scas-server --config FILE``: run the SCAS service under gunicorn.

``--check`` validates everything the server would load (YAML, TLS files,
lcas.db, lcmaps.db, ticket key), prints ``OK`` or one line per problem,
and exits 0 or 1 without serving. ``kill -HUP <master pid>`` reloads.
"""

from __future__ import annotations

import argparse
import atexit
import contextlib
import glob
import os
import shutil
import sys
import tempfile

__all__ = ["main"]


def _metrics_dir() -> None:
    """Give this run its own, empty prometheus multiprocess directory.

    Must happen before prometheus_client is imported anywhere in the
    process; an operator-provided directory is emptied of stale files.
    """
    existing = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if existing:
        os.makedirs(existing, exist_ok=True)
        for stale in glob.glob(os.path.join(existing, "*.db")):
            os.unlink(stale)
        return
    path = tempfile.mkdtemp(prefix="scas-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    master = os.getpid()

    def cleanup() -> None:
        if os.getpid() == master:  # workers exit through here too
            shutil.rmtree(path, ignore_errors=True)

    atexit.register(cleanup)


def _raise_fd_limit() -> None:
    """Soft descriptor limit up to the hard one: each gevent worker holds one descriptor per
    open connection (``worker_connections``), idle and stalled ones included."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="scas-server", description="SCAS authorization service (SAML2-XACML2 over mTLS)"
    )
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="server YAML")
    parser.add_argument(
        "--check", action="store_true", help="validate the configuration and exit"
    )
    args = parser.parse_args(argv)

    if not args.check:
        _metrics_dir()
        _raise_fd_limit()
    from scas_server.config import ConfigError

    if args.check:
        from scas_server.gunicorn_conf import build_all

        try:
            build_all(args.config)
        except ConfigError as exc:
            for line in exc.errors:
                print(line, file=sys.stderr)
            return 1
        print("OK")
        return 0

    from scas_server.gunicorn_conf import ScasApplication

    try:
        app = ScasApplication(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"scas-server: {line}", file=sys.stderr)
        return 1
    app.run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
