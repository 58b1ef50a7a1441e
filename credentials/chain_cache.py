"""Remembering verified chains, so a repeat query costs a few ``stat`` calls, not OpenSSL.

A grid user sends the same proxy chain for hours; verifying it in full
(OpenSSL path building twice, CRL signatures, every proxy signature) costs
milliseconds. A chain that verified once is remembered by the SHA-256 of its
certificates and the CA directory, together with:

* the time window in which the verdict holds: the latest ``notBefore`` and
  the earliest ``notAfter`` of every certificate involved (CAs included) and
  the earliest ``nextUpdate`` of the CRLs consulted. A ``now`` outside it is
  a miss, so expiry is exact;
* the state (inode, size, mtime) of the CA directory and of every file in it
  named after a hash of an issuer on the path (``<hash>.0``, ``<hash>.r0``,
  ``<hash>.signing_policy`` ...). They are re-checked on every hit, so a new
  or rewritten CRL, or a removed CA, takes effect on the next query.

Failures are never remembered: a bad chain is verified (and refused) each
time. The site's :class:`~credentials.proxy_chain.ProxyPolicy` is applied on every
call, so one cache serves callers with different policies.
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "FileState", "Remembered", "Verdict", "VerdictCache", "chain_key", "file_state",
    "watch_files",
]  # fmt: skip

FileState = tuple[str, int, int, int]  # path, inode, size, mtime_ns (-1s: absent)


_recent_keys: OrderedDict[int, tuple[Sequence[x509.Certificate], str, int, bytes]] = OrderedDict()


def chain_key(chain: Sequence[x509.Certificate], ee_index: int, certdir: str) -> bytes:
    """What identifies one verification: the exact certificates, where the EE is, the CA dir.

    The same chain object comes back on every request once the credential is cached, so
    the last keys are remembered by object identity (the object is held, so its id cannot
    be reused) instead of re-encoding every certificate each time.
    """
    recent = _recent_keys.get(id(chain))
    if recent is not None and recent[0] is chain and recent[1:3] == (certdir, ee_index):
        return recent[3]
    h = hashlib.sha256(certdir.encode() + b"\0" + str(ee_index).encode())
    for cert in chain:
        h.update(cert.public_bytes(serialization.Encoding.DER))
    key = h.digest()
    if isinstance(chain, tuple):
        _recent_keys[id(chain)] = (chain, certdir, ee_index, key)
        while len(_recent_keys) > 4096:
            _recent_keys.popitem(last=False)
    return key


def file_state(path: str) -> FileState:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1, -1)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


@dataclass(frozen=True)
class Remembered:
    """A successful verification and what must stay true for it to still hold."""

    not_before: datetime
    not_after: datetime
    files: tuple[FileState, ...]

    def holds(self, now: datetime) -> bool:
        if not self.not_before <= now <= self.not_after:
            return False
        return all(file_state(f[0]) == f for f in self.files)


@dataclass(frozen=True)
class Verdict(Remembered):
    """A chain that verified; ``limited`` lets the policy be applied on every hit."""

    limited: bool


def watch_files(certdir: str, issuer_hashes: Iterable[str]) -> tuple[FileState, ...]:
    """The CA directory and every file in it belonging to these issuer hashes."""
    paths = [certdir]
    for name in sorted(set(issuer_hashes)):
        paths.extend(sorted(glob.glob(os.path.join(certdir, glob.escape(name) + ".*"))))
    return tuple(file_state(p) for p in paths)


R = TypeVar("R", bound=Remembered)


class VerdictCache(Generic[R]):
    """A bounded, thread-safe map from a SHA-256 key to a :class:`Remembered`, LRU evicted.

    :meth:`get` answers only while the entry still holds; a stale entry is dropped.
    """

    def __init__(self, max_entries: int = 8192) -> None:
        self.max_entries = max_entries
        self._entries: OrderedDict[bytes, R] = OrderedDict()
        self._lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    def get(self, key: bytes, now: datetime) -> R | None:
        with self._lock:
            entry = self._entries.get(key)
        if entry is not None and entry.holds(now):
            self.hits += 1
            return entry
        if entry is not None:
            with self._lock:
                self._entries.pop(key, None)
        self.misses += 1
        return None

    def peek(self, key: bytes) -> R | None:
        """The entry as stored, without checking that it still holds."""
        with self._lock:
            return self._entries.get(key)

    def put(self, key: bytes, entry: R) -> None:
        with self._lock:
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.max_entries:
                self._entries.popitem(last=False)

    def clear(self) -> None:
        with self._lock:
            self._entries.clear()

    def __len__(self) -> int:
        return len(self._entries)
