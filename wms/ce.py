"""``wms-ce --config FILE [--check]``: the Computing Element service under gunicorn.

Runs as an unprivileged service account (refuses to run as root): mutual TLS that accepts
proxies (``VERIFY_ALLOW_PROXY_CERTS``), gthread workers (a submission waits on glexec and
sbatch). The master prepares the directories, writes glexec's TLS credential (host
certificate + key in one 0600 file), opens the SQLite store and recovers submissions a
previous run left half-way; then the workers are forked.

``--check`` validates the configuration and the directories and prints ``OK`` (exit 0), or
one line per problem (exit 1). Exit 2: usage.
"""

from __future__ import annotations

import argparse
import logging
import os
import ssl
import stat
import sys
from collections.abc import Sequence
from typing import Any

__all__ = ["main"]

log = logging.getLogger("wms.ce")


class SetupError(Exception):
    """A directory or credential the CE needs is missing or unsafe."""


def server_context(cfg: Any) -> ssl.SSLContext:
    """Mutual TLS against the grid CA directory; proxies accepted as client certificates."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(cfg.tls_cert, cfg.tls_key)
    ctx.load_verify_locations(capath=cfg.ca_dir)
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags = ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_ALLOW_PROXY_CERTS
    return ctx


def _own_dir(path: str, mode: int) -> None:
    os.makedirs(path, mode=mode, exist_ok=True)
    st = os.lstat(path)
    if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.getuid():
        raise SetupError(f"{path}: must be a directory owned by the CE account (uid "
                         f"{os.getuid()})")  # fmt: skip
    if stat.S_IMODE(st.st_mode) != mode:
        os.chmod(path, mode)


def prepare(cfg: Any) -> None:
    """Directories (state 0700, job parent 0711) and glexec's host credential (0600)."""
    if os.geteuid() == 0:
        raise SetupError("wms-ce must not run as root: start it as its service account")
    _own_dir(cfg.state_dir, 0o700)
    for sub in (cfg.proxy_dir, os.path.join(cfg.state_dir, "run")):
        _own_dir(sub, 0o700)
    _own_dir(cfg.job_dir, 0o711)
    try:
        with open(cfg.scas_cert, "rb") as c, open(cfg.scas_key, "rb") as k:
            cred = c.read().rstrip(b"\n") + b"\n" + k.read()
    except OSError as exc:
        raise SetupError(f"host credential: {exc.filename}: {exc.strerror}") from None
    tmp = cfg.glexec_credential + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as fh:
        fh.write(cred)
    os.chmod(tmp, 0o600)
    os.replace(tmp, cfg.glexec_credential)


def build(config_path: str) -> tuple[Any, Any]:
    """(config, CE) ready to serve; ConfigError or SetupError otherwise."""
    from wms.authz import Authorizer
    from wms.batch import Batch
    from wms.config import load_config
    from wms.service import CE
    from wms.store import Store

    cfg = load_config(config_path)
    prepare(cfg)
    try:
        server_context(cfg)
    except (OSError, ssl.SSLError) as exc:
        raise SetupError(f"tls: {getattr(exc, 'reason', None) or exc}") from None
    from client.failures import ClientError

    try:
        authz = Authorizer(cfg)
    except ClientError as exc:
        raise SetupError(f"scas: {exc.message}") from None
    return cfg, CE(cfg, Store(cfg.db_path), authz, Batch(cfg))


def _application(cfg: Any, ce: Any) -> Any:
    from gunicorn.app.base import BaseApplication

    from wms.app import create_app

    class CeApplication(BaseApplication):
        def load_config(self) -> None:
            settings = {
                "bind": [cfg.listen], "workers": cfg.workers, "worker_class": "gthread",
                "threads": cfg.threads, "timeout": 330, "graceful_timeout": 30,
                "keepalive": 5, "proc_name": "wms-ce", "loglevel": cfg.log_level,
                "errorlog": "-", "certfile": cfg.tls_cert, "keyfile": cfg.tls_key,
                "cert_reqs": ssl.CERT_REQUIRED, "do_handshake_on_connect": True,
                "ssl_context": lambda conf, default: server_context(cfg),
                "control_socket_disable": True,
            }  # fmt: skip
            for key, value in settings.items():
                if key in self.cfg.settings:
                    self.cfg.set(key, value)

        def load(self) -> Any:
            return create_app(ce)

    return CeApplication()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="wms-ce", description="the WMS Computing Element")
    parser.add_argument("--config", "-c", required=True, metavar="FILE", help="wms-ce.yaml")
    parser.add_argument("--check", action="store_true", help="validate and exit")
    args = parser.parse_args(argv)
    from wms.config import ConfigError
    from wms.store import StoreError

    logging.basicConfig(level=logging.INFO, format="%(asctime)s wms-ce %(levelname)s %(message)s")
    try:
        cfg, ce = build(args.config)
    except ConfigError as exc:
        for line in exc.errors:
            print(f"wms-ce: {line}", file=sys.stderr)
        return 1
    except (SetupError, StoreError) as exc:
        print(f"wms-ce: {exc}", file=sys.stderr)
        return 1
    if args.check:
        print("OK")
        return 0
    recovered = ce.recover()
    if recovered:
        log.warning("recovered %d submission(s) left half-way: %s", len(recovered),
                    ", ".join(recovered))  # fmt: skip
    _application(cfg, ce).run()
    return 0


if __name__ == "__main__":
    sys.exit(main())
