"""Who is calling: the PEP's TLS identity, or the Unix-socket peer's credentials.

gunicorn does not put the client certificate into the WSGI environ, but it
does hand the connection's socket to the application as
``environ["gunicorn.socket"]``. :func:`peer_of` reads the caller from that
socket *after* the TLS handshake: the verified chain (through the private
``_sslobj.get_verified_chain()`` of Python 3.10-3.12, public as
``SSLSocket.get_verified_chain()`` from 3.13) or ``SO_PEERCRED`` on a Unix
socket. A client can never set these keys with a header: header keys in the
environ always start with ``HTTP_``.

For a proxy certificate the PEP's identity is the end-entity certificate
behind the proxies, exactly as for a user's credential.

**Resumed TLS sessions.** OpenSSL keeps only the peer's leaf certificate in a
session, so on a resumed session the verified chain is gone. A PEP with a host
certificate is fully described by its leaf. For a proxy leaf, the chain seen at
the full handshake is remembered here, keyed by the leaf's SHA-256: a leaf
certificate names its issuer and carries its signature, so the chain above it is
the one that verified then. Sessions resume only on the worker that made them
(each worker has its own ticket keys), which is where the chain was remembered.
The application verifies the chain again on every query, against the CRLs on
disk, so resumption never skips a revocation.
"""

from __future__ import annotations

import hashlib
import socket
import ssl
import struct
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from credentials.lru import BoundedLRU

__all__ = ["ENVIRON_KEY", "Peer", "peer_of"]

ENVIRON_KEY = "scas.peer"
# _ssl.ENCODING_DER: the format argument of _ssl.Certificate.public_bytes
_ENCODING_DER = 2


@dataclass(frozen=True)
class Peer:
    """The authenticated caller of one connection.

    ``transport`` is ``tls``, ``unix`` or ``none`` (no socket information,
    e.g. a test client). ``subject`` is the PEP's identity DN (OpenSSL
    one-line form); ``uid``/``gid``/``pid`` come from the kernel.
    """

    transport: str
    subject: str | None = None
    is_proxy: bool = False
    chain: tuple[x509.Certificate, ...] = ()
    uid: int | None = None
    gid: int | None = None
    pid: int | None = None
    #: ``chain`` as PEM, made once per connection (the revocation check reads it per query)
    pem: bytes = field(default=b"", compare=False, repr=False)

    def describe(self) -> str:
        """Short text for the audit log."""
        if self.transport == "unix":
            return f"unix:uid={self.uid},pid={self.pid}"
        if self.transport == "tls":
            return self.subject or "tls:?"
        return "none"


class _Chains:
    """Chains seen at full handshakes, by leaf SHA-256; LRU, bounded in entries and bytes."""

    def __init__(self, max_entries: int = 20_480, max_bytes: int = 32 << 20) -> None:
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._items: OrderedDict[bytes, tuple[bytes, ...]] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def remember(self, ders: list[bytes]) -> None:
        key, size = hashlib.sha256(ders[0]).digest(), sum(map(len, ders))
        with self._lock:
            if key in self._items:
                self._items.move_to_end(key)
                return
            self._items[key] = tuple(ders)
            self._bytes += size
            while len(self._items) > self.max_entries or self._bytes > self.max_bytes:
                _, old = self._items.popitem(last=False)
                self._bytes -= sum(map(len, old))

    def recall(self, leaf: bytes) -> list[bytes] | None:
        with self._lock:
            found = self._items.get(hashlib.sha256(leaf).digest())
        return list(found) if found is not None else None


CHAINS = _Chains()


def _verified_ders(sock: ssl.SSLSocket) -> list[bytes]:
    """The chain that verified at this connection's handshake (DER, leaf first), also on a
    resumed session."""
    sslobj = getattr(sock, "_sslobj", None)
    getter = getattr(sock, "get_verified_chain", None) or getattr(
        sslobj, "get_verified_chain", None
    )  # public from Python 3.13
    raw: list[Any] = list(getter() or []) if getter is not None else []
    ders = [c if isinstance(c, bytes) else c.public_bytes(_ENCODING_DER) for c in raw]
    if ders:
        CHAINS.remember(ders)
    else:  # resumed: the session kept the leaf only
        leaf = sock.getpeercert(binary_form=True)
        ders = (CHAINS.recall(leaf) or [leaf]) if leaf else []
    return ders


#: TLS peers by their verified chain's DER: a PEP that connects per query is the same
#: caller each time, so its certificates are parsed once (bounded, least recent out)
PEERS: BoundedLRU[tuple[bytes, ...], Peer] = BoundedLRU(1024, 32 << 20)


def _tls_peer(sock: ssl.SSLSocket) -> Peer:
    ders = tuple(_verified_ders(sock))
    if not ders:
        return Peer("tls")
    found = PEERS.get(ders)
    if found is None:
        found = _parse_peer(ders)
        PEERS.put(ders, found, 2 * sum(map(len, ders)))  # the DER, then the PEM
    return found


def _parse_peer(ders: tuple[bytes, ...]) -> Peer:
    from credentials.dn import oneline
    from credentials.errors import CredentialError
    from credentials.proxy_chain import classify

    chain = [x509.load_der_x509_certificate(d) for d in ders]
    try:
        _, _, ee_index = classify(chain)
    except CredentialError:
        ee_index = 0
    return Peer(
        "tls",
        subject=oneline(chain[ee_index].subject),
        is_proxy=ee_index > 0,
        chain=tuple(chain),
        pem=_pem(chain),
    )


def _unix_peer(sock: socket.socket) -> Peer:
    fmt = "3i"
    raw = sock.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize(fmt))
    pid, uid, gid = struct.unpack(fmt, raw)
    return Peer("unix", uid=uid, gid=gid, pid=pid)


def peer_of(sock: object) -> Peer:
    """The caller on ``sock`` (the connection gunicorn accepted)."""
    if isinstance(sock, ssl.SSLSocket):
        return _tls_peer(sock)
    if isinstance(sock, socket.socket) and sock.family == socket.AF_UNIX:
        return _unix_peer(sock)
    return Peer("none")


def _pem(chain: Any) -> bytes:
    return b"".join(c.public_bytes(Encoding.PEM) for c in chain)


def chain_pem(peer: Peer) -> bytes:
    """The PEP's verified chain as PEM (for an explicit revocation check)."""
    return peer.pem or _pem(peer.chain)
