"""Who is calling the CE: the end-entity DN behind the TLS client's (proxy) chain.

gunicorn hands the connection's socket to the application (``environ["gunicorn.socket"]``);
the verified chain comes from it after the handshake (``get_verified_chain``, public from
Python 3.13, ``_sslobj`` before). For a proxy the identity is the end-entity certificate
behind the proxies. A header can never set this: header keys in the environ start with
``HTTP_``. (The same approach as the SCAS server's, written small here: wms does not import
the server.)

A resumed TLS session keeps only the leaf; the chain seen at the full handshake is
remembered by the leaf's SHA-256 (a leaf names its issuer and carries its signature).
"""

from __future__ import annotations

import hashlib
import ssl
import threading
from collections import OrderedDict
from typing import Any

from cryptography import x509

from credentials.dn import oneline
from credentials.errors import CredentialError
from credentials.proxy_chain import classify

__all__ = ["identity_of"]

_ENCODING_DER = 2
_LOCK = threading.Lock()
_CHAINS: OrderedDict[bytes, tuple[bytes, ...]] = OrderedDict()
_MAX = 4096


def _chain(sock: ssl.SSLSocket) -> list[bytes]:
    sslobj = getattr(sock, "_sslobj", None)
    getter = getattr(sock, "get_verified_chain", None) or getattr(
        sslobj, "get_verified_chain", None
    )
    raw: list[Any] = list(getter() or []) if getter is not None else []
    ders = [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in raw]
    with _LOCK:
        if ders:
            _CHAINS[hashlib.sha256(ders[0]).digest()] = tuple(ders)
            while len(_CHAINS) > _MAX:
                _CHAINS.popitem(last=False)
            return ders
        leaf = sock.getpeercert(binary_form=True)
        if not leaf:
            return []
        return list(_CHAINS.get(hashlib.sha256(leaf).digest(), (leaf,)))


def identity_of(sock: object) -> str | None:
    """The caller's DN (OpenSSL one-line form), or None without a verified TLS peer."""
    if not isinstance(sock, ssl.SSLSocket):
        return None
    certs = [x509.load_der_x509_certificate(d) for d in _chain(sock)]
    if not certs:
        return None
    try:
        _, _, ee_index = classify(certs)
    except CredentialError:
        ee_index = 0
    return oneline(certs[ee_index].subject)
