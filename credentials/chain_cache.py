"""Remembering verified chains, so a repeat query costs a few ``stat`` calls, not OpenSSL.

A grid user sends the same proxy chain for hours; verifying it in full
(OpenSSL path building twice, CRL signatures, every proxy signature) costs
milliseconds. A chain that verified once is remembered together with:

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

Keys: what was verified, not what was sent
-------------------------------------------
A :class:`VerdictCache` has two levels:

* the *entries* (the verdicts, or in :mod:`credentials.credential_cache` the
  verified credentials) are keyed by the **canonical key**: the SHA-256 of the
  CA directory, the end-entity's position and the DER of the certificates that
  form the verified path, from the leaf through the end-entity and up to, but
  not including, the trust anchor (:func:`canonical_chain_key`). The anchor is
  left out because it is not the client's to choose: it is named by the CA
  directory (in the key) and its file is ``stat``-ed on every hit; a chain sent
  with or without its root is the same verification. Intermediates are in,
  whether the client sent them or the CA directory supplied them, because the
  signatures and CRL checks ran on them. Junk certificates that OpenSSL did not
  use, PEM whitespace and the order of unrelated extra blocks therefore all land
  on one entry;
* a small **index** maps the hash of what was presented (the chain as sent:
  :func:`chain_key`; the PEM bytes in the credential cache) to the canonical key,
  so a repeat query skips parsing and path building. An index entry is two
  32-byte digests and is only written after that exact presentation verified in
  full, so a hit never answers for bytes that were not verified once themselves.

Bounds (entries, bytes, LRU)
----------------------------
Every cache here is a :class:`BoundedLRU`: at most ``max_entries`` entries and at
most ``max_bytes`` accounted bytes, least recently used evicted first, every
operation under one lock (``stat`` calls and verification run outside it). The
bytes are approximate: the DER, AC and PEM bytes an entry holds (see each
``put``) plus :data:`ENTRY_OVERHEAD` for the Python objects around them. An
entry larger than ``max_bytes`` on its own is not kept. Defaults, per process
(each server worker has its own):

* verified chains (``proxy_chain.CACHE``): :data:`CHAIN_MAX_ENTRIES` = 20,000
  and :data:`CHAIN_MAX_BYTES` = 32 MiB. A verdict holds no certificate but the
  intermediates' DER (none for an end-entity issued by a root) and its watched
  file names: about 1.5 to 5 KiB accounted. 20,000 chains is a busy site's
  distinct proxies over a proxy lifetime, several times over; 32 MiB caps the
  worst case (long paths) at a size a worker can afford;
* the presented-to-canonical index: :data:`INDEX_ENTRY_BYTES` each, by
  default twice the entries of the cache it serves (a user's proxy is usually
  sent in one or two byte forms), i.e. about 8 MiB for 40,000;
* the chain-key memo (:func:`chain_key`): only chains of credentials in a
  :class:`~credentials.credential_cache.CredentialCache`, dropped when they leave it,
  so it costs a dict slot each; bounded all the same (:data:`MEMO_MAX_ENTRIES`
  = 40,000, two credential caches' worth, and :data:`MEMO_MAX_BYTES` = 128 MiB of DER);
* parsed CRLs (``proxy_chain._crl_cache``): one entry per CRL path, a rewritten file
  replacing its entry; 1,024 paths (an IGTF CA directory has a few hundred) and
  128 MiB of CRL file bytes (the largest IGTF CRLs are a few MiB).

Misses cost CPU, never correctness: an evicted entry is verified again in full.
"""

from __future__ import annotations

import glob
import hashlib
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from cryptography import x509
from cryptography.hazmat.primitives import serialization

__all__ = [
    "CHAIN_MAX_BYTES", "CHAIN_MAX_ENTRIES", "ENTRY_OVERHEAD", "INDEX_ENTRY_BYTES",
    "MEMO_MAX_BYTES", "MEMO_MAX_ENTRIES", "BoundedLRU", "FileState", "MiB", "Remembered",
    "Verdict", "VerdictCache", "canonical_chain_key", "chain_key", "file_state", "files_size",
    "forget_chain_key", "watch_files",
]  # fmt: skip

FileState = tuple[str, int, int, int]  # path, inode, size, mtime_ns (-1s: absent)

MiB = 1024 * 1024
CHAIN_MAX_ENTRIES = 20_000
CHAIN_MAX_BYTES = 32 * MiB
#: accounted per entry on top of the bytes it holds (dataclass, tuples, datetimes, dict slot)
ENTRY_OVERHEAD = 1024
#: accounted per index entry: two 32-byte digests, their bytes objects and the dict slot
INDEX_ENTRY_BYTES = 200
#: the chain-key memo holds nothing a cached credential does not hold already
MEMO_MAX_ENTRIES = 40_000
MEMO_MAX_BYTES = 128 * MiB

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class BoundedLRU(Generic[K, V]):
    """A thread-safe map bounded in entries and in accounted bytes, least recently used out.

    ``put`` takes the entry's size in bytes (approximate; at least 1). Every method
    holds the lock for a few dict operations only. ``on_evict(key, value)`` is called,
    outside the lock, for every value that leaves: evicted, replaced, popped or cleared.
    """

    def __init__(
        self, max_entries: int, max_bytes: int,
        on_evict: Callable[[K, V], object] | None = None,
    ) -> None:  # fmt: skip
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a cache needs room for at least one entry and one byte")
        self.max_entries = max_entries
        self.max_bytes = max_bytes
        self._on_evict = on_evict
        self._items: OrderedDict[K, tuple[V, int]] = OrderedDict()
        self._nbytes = 0
        self._lock = threading.Lock()

    def _gone(self, left: list[tuple[K, V]]) -> None:
        if self._on_evict is not None:
            for key, value in left:
                self._on_evict(key, value)

    def get(self, key: K) -> V | None:
        """The value, now the most recently used; None if absent."""
        with self._lock:
            item = self._items.get(key)
            if item is None:
                return None
            self._items.move_to_end(key)
            return item[0]

    def peek(self, key: K) -> V | None:
        """The value without touching its place in the LRU order."""
        with self._lock:
            item = self._items.get(key)
            return None if item is None else item[0]

    def put(self, key: K, value: V, size: int) -> bool:
        """Store (or replace) ``key``; evict from the LRU end until both bounds hold.

        False (and ``key`` absent) if ``size`` alone exceeds ``max_bytes``.
        """
        size = max(int(size), 1)
        left: list[tuple[K, V]] = []
        with self._lock:
            old = self._items.pop(key, None)
            if old is not None:
                self._nbytes -= old[1]
                if old[0] is not value:
                    left.append((key, old[0]))
            stored = size <= self.max_bytes
            if stored:
                self._items[key] = (value, size)
                self._nbytes += size
                while len(self._items) > self.max_entries or self._nbytes > self.max_bytes:
                    gone, (dropped, dropped_size) = self._items.popitem(last=False)
                    self._nbytes -= dropped_size
                    left.append((gone, dropped))
        self._gone(left)
        return stored

    def pop(self, key: K, only_if: Callable[[V], bool] | None = None) -> None:
        """Drop ``key``; with ``only_if``, only while its value passes that test."""
        with self._lock:
            item = self._items.get(key)
            if item is None or (only_if is not None and not only_if(item[0])):
                return
            del self._items[key]
            self._nbytes -= item[1]
        self._gone([(key, item[0])])

    def keys(self) -> list[K]:
        """A snapshot, least recently used first."""
        with self._lock:
            return list(self._items)

    def clear(self) -> None:
        with self._lock:
            left = [(key, item[0]) for key, item in self._items.items()]
            self._items.clear()
            self._nbytes = 0
        self._gone(left)

    @property
    def nbytes(self) -> int:
        """The accounted bytes of all entries (never above ``max_bytes``)."""
        with self._lock:
            return self._nbytes

    def __len__(self) -> int:
        with self._lock:
            return len(self._items)

    def __contains__(self, key: object) -> bool:
        with self._lock:
            return key in self._items


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


_Memo = tuple[Sequence[x509.Certificate], str, int, bytes]
#: chain keys by ``id(chain)``; only chains of cached credentials, forgotten with them
_recent_keys: BoundedLRU[int, _Memo] = BoundedLRU(MEMO_MAX_ENTRIES, MEMO_MAX_BYTES)


def chain_key(
    chain: Sequence[x509.Certificate], ee_index: int, certdir: str, *, remember: bool = False
) -> bytes:
    """What identifies one presentation: the exact certificates, where the EE is, the CA dir.

    This is the *index* key (what was sent, junk included); the entries are keyed by
    :func:`canonical_chain_key`. The chain of a cached credential comes back on every
    request (``verify_proxy`` verifies it again), so :mod:`credentials.credential_cache`
    asks to ``remember`` its key by object identity (the object is held, so its id
    cannot be reused) instead of re-encoding every certificate each time. It is
    :func:`forget_chain_key`-ed when the credential leaves the cache, so a one-off
    chain is never kept alive by the memo.
    """
    recent = _recent_keys.get(id(chain))
    if recent is not None and recent[0] is chain and recent[1:3] == (certdir, ee_index):
        return recent[3]
    h = hashlib.sha256(certdir.encode() + b"\0" + str(ee_index).encode())
    size = 0
    for cert in chain:
        der = _der(cert)
        size += len(der)
        h.update(der)
    key = h.digest()
    if remember and isinstance(chain, tuple):
        _recent_keys.put(id(chain), (chain, certdir, ee_index, key), size + ENTRY_OVERHEAD)
    return key


def forget_chain_key(chain: Sequence[x509.Certificate]) -> None:
    """Let the memo drop ``chain`` (its credential left the cache)."""
    _recent_keys.pop(id(chain), only_if=lambda memo: memo[0] is chain)


def canonical_chain_key(
    prefix: Sequence[x509.Certificate], intermediates: Sequence[bytes], ee_index: int,
    certdir: str,
) -> bytes:  # fmt: skip
    """What one verification rests on: leaf..end-entity, the path's intermediates (DER).

    ``prefix`` is ``chain[: ee_index + 1]`` (proxies and the end-entity); the trust
    anchor is not part of it (see the module docstring). Each DER is length-prefixed.
    """
    h = hashlib.sha256(b"verified-path\0" + certdir.encode() + b"\0" + str(ee_index).encode())
    for der in [*(_der(c) for c in prefix), *intermediates]:
        h.update(len(der).to_bytes(4, "big"))
        h.update(der)
    return h.digest()


def file_state(path: str) -> FileState:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1, -1)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def files_size(files: Iterable[FileState]) -> int:
    """Accounted bytes of watched file states: the path strings and four small ints each."""
    return sum(len(f[0]) + 100 for f in files)


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
    """A chain that verified; ``limited`` lets the policy be applied on every hit.

    ``key`` is its :func:`canonical_chain_key`; ``intermediates`` the DER of the
    verified path between the end-entity and the trust anchor, top excluded.
    """

    limited: bool
    key: bytes = b""
    intermediates: tuple[bytes, ...] = ()

    @property
    def nbytes(self) -> int:
        """Accounted size: the intermediates' DER, the watched file states, the overhead."""
        return (sum(len(d) for d in self.intermediates) + len(self.key)
                + files_size(self.files) + ENTRY_OVERHEAD)


def watch_files(certdir: str, issuer_hashes: Iterable[str]) -> tuple[FileState, ...]:
    """The CA directory and every file in it belonging to these issuer hashes."""
    paths = [certdir]
    for name in sorted(set(issuer_hashes)):
        paths.extend(sorted(glob.glob(os.path.join(certdir, glob.escape(name) + ".*"))))
    return tuple(file_state(p) for p in paths)


R = TypeVar("R", bound=Remembered)


class VerdictCache(Generic[R]):
    """Canonical key -> :class:`Remembered`, with an index from presented key -> canonical key.

    Both levels are :class:`BoundedLRU`. :meth:`get` answers only while the entry
    still holds; a stale entry is dropped. ``index_entries`` defaults to twice
    ``max_entries``.
    """

    def __init__(
        self, max_entries: int = CHAIN_MAX_ENTRIES, max_bytes: int = CHAIN_MAX_BYTES, *,
        index_entries: int | None = None, on_evict: Callable[[bytes, R], object] | None = None,
    ) -> None:  # fmt: skip
        index_entries = index_entries if index_entries is not None else 2 * max_entries
        self._entries: BoundedLRU[bytes, R] = BoundedLRU(max_entries, max_bytes, on_evict)
        self._index: BoundedLRU[bytes, bytes] = BoundedLRU(
            index_entries, index_entries * INDEX_ENTRY_BYTES
        )
        self._stats_lock = threading.Lock()
        self.hits = 0
        self.misses = 0

    @property
    def max_entries(self) -> int:
        return self._entries.max_entries

    @property
    def max_bytes(self) -> int:
        return self._entries.max_bytes

    def get(self, presented: bytes, now: datetime) -> R | None:
        """The entry the presentation ``presented`` verified to, if it still holds."""
        canonical = self._index.get(presented)
        entry = self._entries.get(canonical) if canonical is not None else None
        holds = entry is not None and entry.holds(now)
        if entry is not None and not holds:
            assert canonical is not None
            self._entries.pop(canonical, only_if=lambda current: current is entry)
        with self._stats_lock:
            if holds:
                self.hits += 1
            else:
                self.misses += 1
        return entry if holds else None

    def peek(self, presented: bytes) -> R | None:
        """The entry as stored, without checking that it still holds."""
        canonical = self._index.peek(presented)
        return self._entries.peek(canonical) if canonical is not None else None

    def adopt(self, presented: bytes, canonical: bytes, now: datetime) -> R | None:
        """The entry already under ``canonical`` if it holds, now indexed by ``presented`` too.

        For a new presentation of something verified before (just verified in full itself),
        so that it shares the entry instead of replacing it.
        """
        entry = self._entries.get(canonical)
        if entry is None or not entry.holds(now):
            return None
        self._index.put(presented, canonical, INDEX_ENTRY_BYTES)
        return entry

    def put(self, presented: bytes, canonical: bytes, entry: R, size: int) -> bool:
        """Remember ``entry`` under ``canonical`` (``size`` accounted bytes) and index it.

        False if it is too big to keep (larger than ``max_bytes`` on its own).
        """
        if not self._entries.put(canonical, entry, size):
            return False
        self._index.put(presented, canonical, INDEX_ENTRY_BYTES)
        return True

    def clear(self) -> None:
        self._entries.clear()
        self._index.clear()

    @property
    def nbytes(self) -> int:
        """Accounted bytes of the entries (the index is bounded by its entry count)."""
        return self._entries.nbytes

    @property
    def index_len(self) -> int:
        return len(self._index)

    @property
    def index_max_entries(self) -> int:
        return self._index.max_entries

    def __len__(self) -> int:
        return len(self._entries)
