"""The server's TLS context: mutual TLS against a hashed grid CA directory.

Client certificates are required; RFC 3820 / legacy proxies are accepted as
client certificates (``VERIFY_ALLOW_PROXY_CERTS``), as the PEPs of gLExec
may present the pilot's proxy.

Revocation is not checked here. OpenSSL reads a CRL once into the context and
keeps it, so a CRL replaced by fetch-crl would only count after a restart (and an
expired one would refuse every PEP until then). The application checks every PEP's
chain against the CRLs on disk instead, on every query (:meth:`Pipeline.caller_refusal`,
cached by the files' state), for host certificates and proxies alike.

The handshake runs under a deadline (``handshake_timeout``): a client that sends half a
ClientHello and stalls is dropped, quietly, instead of holding a connection slot.

gunicorn calls its ``ssl_context`` hook once per worker (gevent) or per connection
(gthread); the context is built once per worker process and reused, which also gives TLS
session resumption within a worker (see :mod:`scas_server.peer` for who the caller is on
a resumed session).
"""

from __future__ import annotations

import logging
import ssl
import sys
from typing import Any

from scas_server.config import ServerConfig

__all__ = ["TLSSetupError", "cached_context", "server_context"]

log = logging.getLogger("scas.server")


class TLSSetupError(Exception):
    """The certificate, key or CA directory cannot be used."""


def server_context(cfg: ServerConfig) -> ssl.SSLContext:
    """A fresh server-side context; raise :class:`TLSSetupError` with one line."""
    if not (cfg.tls_cert and cfg.tls_key and cfg.tls_ca_dir):
        raise TLSSetupError(f"{cfg.path}: tls: cert, key and ca_dir are required")
    ctx = _deadline_context_class(cfg.handshake_timeout)(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        ctx.load_cert_chain(certfile=cfg.tls_cert, keyfile=cfg.tls_key)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(
            f"{cfg.path}: tls.cert/tls.key: cannot load {cfg.tls_cert}: {_reason(exc)}"
        ) from None
    try:
        ctx.load_verify_locations(capath=cfg.tls_ca_dir)
    except (OSError, ssl.SSLError) as exc:
        raise TLSSetupError(f"{cfg.path}: tls.ca_dir: {_reason(exc)}") from None
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.verify_flags = ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_ALLOW_PROXY_CERTS
    return ctx


class _HandshakeFailed(Exception):
    """Stands in for gevent's GreenletExit where gevent is not loaded."""


def _deadline_context_class(handshake_timeout: float) -> type[ssl.SSLContext]:
    """``ssl.SSLContext`` as it is now (gevent's, once a gevent worker has patched ``ssl``),
    with a handshake deadline: the only blocking step before gunicorn's own deadlines."""
    base = ssl.SSLContext

    class DeadlineContext(base):  # type: ignore[valid-type,misc]
        def wrap_socket(self, sock: Any, *args: Any, **kwargs: Any) -> Any:
            sock.settimeout(handshake_timeout)
            try:
                return super().wrap_socket(sock, *args, **kwargs)
            except OSError as exc:  # a stalled, broken or unauthenticated handshake
                log.debug("TLS handshake failed: %s", exc)
                sock.close()
                raise _quiet_exit() from None

    return DeadlineContext


def _quiet_exit() -> BaseException:
    """An exception the gevent hub does not print: one per failed handshake would flood
    the log under a scan or a flood of half-open connections."""
    gevent = sys.modules.get("gevent")
    return gevent.GreenletExit() if gevent is not None else _HandshakeFailed()


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
    return " ".join(str(text).split())


_cache: dict[tuple[str, str | None, str | None, str | None, float], ssl.SSLContext] = {}


def cached_context(cfg: ServerConfig) -> ssl.SSLContext:
    """One context per process and TLS setting (a reload with new files builds a new one)."""
    key = (cfg.path, cfg.tls_cert, cfg.tls_key, cfg.tls_ca_dir, cfg.handshake_timeout)
    ctx = _cache.get(key)
    if ctx is None:
        _cache.clear()
        ctx = _cache[key] = server_context(cfg)
    return ctx
