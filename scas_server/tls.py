"""The server's TLS context: mutual TLS against a hashed grid CA directory.

Client certificates are required; RFC 3820 / legacy proxies are accepted as
client certificates (``VERIFY_ALLOW_PROXY_CERTS``), as the PEPs of gLExec
may present the pilot's proxy. With ``crl_check`` OpenSSL looks up the
leaf's CRL as ``<issuer-hash>.r0`` in the CA directory. OpenSSL skips CRL
checks for proxy certificates, so for a proxy the end-entity behind it is
checked by the application (:func:`scas_server.app`), through
:mod:`credentials.credential`.

gunicorn calls its ``ssl_context`` hook for every connection; the context
is built once per worker process and reused, which also gives TLS session
reuse within a worker.
"""

from __future__ import annotations

import ssl

from scas_server.config import ServerConfig

__all__ = ["TLSSetupError", "cached_context", "server_context"]


class TLSSetupError(Exception):
    """The certificate, key or CA directory cannot be used."""


def server_context(cfg: ServerConfig) -> ssl.SSLContext:
    """A fresh server-side context; raise :class:`TLSSetupError` with one line."""
    if not (cfg.tls_cert and cfg.tls_key and cfg.tls_ca_dir):
        raise TLSSetupError(f"{cfg.path}: tls: cert, key and ca_dir are required")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
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
    flags = ssl.VERIFY_X509_TRUSTED_FIRST | ssl.VERIFY_ALLOW_PROXY_CERTS
    if cfg.crl_check:
        flags |= ssl.VERIFY_CRL_CHECK_LEAF
    ctx.verify_flags = flags
    return ctx


def _reason(exc: BaseException) -> str:
    text = getattr(exc, "strerror", None) or getattr(exc, "reason", None) or str(exc)
    return " ".join(str(text).split())


_cache: dict[tuple[str, str | None, str | None, str | None, bool], ssl.SSLContext] = {}


def cached_context(cfg: ServerConfig) -> ssl.SSLContext:
    """One context per process and TLS setting (a reload with new files builds a new one)."""
    key = (cfg.path, cfg.tls_cert, cfg.tls_key, cfg.tls_ca_dir, cfg.crl_check)
    ctx = _cache.get(key)
    if ctx is None:
        _cache.clear()
        ctx = _cache[key] = server_context(cfg)
    return ctx
