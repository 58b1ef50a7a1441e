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
  128 MiB of CRL file bytes (the largest IGTF CRLs are a few MiB);
* directory listings (:func:`dir_listing`): the CA directory, the vomsdir and its VO
  directories, :data:`LISTING_MAX_ENTRIES` = 256 directories and 16 MiB of names.

Directory listings. A cold verification needs the names of the files of each issuer
hash (``<hash>.0``, ``<hash>.r0`` ...) and of the vomsdir; listing and filtering an
IGTF directory of a few hundred files costs more than a signature. A listing is
remembered with the directory's state (inode, size, mtime): creating, removing or
renaming an entry changes the directory's mtime, so a changed state lists again. The
kernel stamps mtimes with a coarse clock, so two changes a few milliseconds apart can
leave the same mtime; a listing is only remembered once the directory's mtime is
:data:`RACY_SECONDS` old (the "racy" rule git uses for its index), so a listing taken
in the same tick as a change is never reused.

Misses cost CPU, never correctness: an evicted entry is verified again in full.

Re-check interval. A hit ``stat``-s the files it rests on (the CA directory, the issuers'
certificates and CRLs, the vomsdir and ``.lsc`` files): eight to eleven calls for a VOMS
proxy, a tenth of a warm query in the server. :func:`set_recheck_seconds` lets a long-lived
process (the server, from ``trust.recheck_seconds``) rely on what it saw for that many
seconds: a ``stat`` result is reused for half of it, and a verification whose files were all
found unchanged is not re-checked for the other half. A replaced CRL or CA file then counts
within the interval instead of from the next query. The default, 0, is what every one-shot
command keeps: each verification looks.
"""

from __future__ import annotations

import hashlib
import os
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, TypeVar

from cryptography import x509

from credentials import certbytes
from credentials.lru import BoundedLRU, MiB

__all__ = [
    "CHAIN_MAX_BYTES", "CHAIN_MAX_ENTRIES", "ENTRY_OVERHEAD", "INDEX_ENTRY_BYTES",
    "MEMO_MAX_BYTES", "MEMO_MAX_ENTRIES", "RACY_SECONDS", "BoundedLRU", "FileState",
    "Listing", "MiB", "Remembered", "Verdict", "VerdictCache", "canonical_chain_key",
    "chain_key", "dir_listing", "file_state", "files_size", "forget_chain_key", "one_look",
    "set_recheck_seconds", "settled", "stat_of", "watch_files",
]  # fmt: skip

FileState = tuple[str, int, int, int]  # path, inode, size, mtime_ns (-1s: absent)

CHAIN_MAX_ENTRIES = 20_000
CHAIN_MAX_BYTES = 32 * MiB
#: accounted per entry on top of the bytes it holds (dataclass, tuples, datetimes, dict slot)
ENTRY_OVERHEAD = 1024
#: accounted per index entry: two 32-byte digests, their bytes objects and the dict slot
INDEX_ENTRY_BYTES = 200
#: the chain-key memo holds nothing a cached credential does not hold already
MEMO_MAX_ENTRIES = 40_000
MEMO_MAX_BYTES = 128 * MiB
LISTING_MAX_ENTRIES = 256
LISTING_MAX_BYTES = 16 * MiB
#: a file or directory changed less than this long ago may change again within the
#: same mtime tick: what was read from it is used once, not remembered
RACY_SECONDS = 2.0

def _der(cert: x509.Certificate) -> bytes:
    return certbytes.der(cert)


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


_look = threading.local()


class one_look:  # lower case: it reads as a function, ``with one_look():``
    """Within this block (one verification) each path is ``stat``-ed once: the
    verification sees the files as they were when it first looked, and a change counts
    from the next one. Nested blocks share the outer one's view. (A class, not a
    generator: it wraps every query, and costs a third as much.)"""

    __slots__ = ("outer",)

    def __enter__(self) -> None:
        self.outer = getattr(_look, "stats", None) is not None
        if not self.outer:
            _look.stats = {}

    def __exit__(self, *_exc: object) -> None:
        if not self.outer:
            _look.stats = None


_recheck = 0.0  # see "Re-check interval" above
_recent: dict[str, tuple[float, os.stat_result | None]] = {}
_RECENT_MAX = 4096


def set_recheck_seconds(seconds: float) -> None:
    """Reuse a ``stat`` result for ``seconds`` (0: never), process-wide."""
    global _recheck
    _recheck = max(0.0, float(seconds))
    _recent.clear()


def stat_of(path: str) -> os.stat_result | None:
    """``os.stat(path)`` (None if it fails), once per :func:`one_look` block, and at most
    once per re-check interval when one is set."""
    seen: dict[str, os.stat_result | None] | None = getattr(_look, "stats", None)
    if seen is not None and path in seen:
        return seen[path]
    st = _stat_now(path) if _recheck > 0 else _stat(path)
    if seen is not None:
        seen[path] = st
    return st


def _stat(path: str) -> os.stat_result | None:
    try:
        return os.stat(path)
    except OSError:
        return None


def _stat_now(path: str) -> os.stat_result | None:
    now = time.monotonic()
    found = _recent.get(path)
    if found is not None and now - found[0] < _recheck / 2:  # see Remembered.holds
        return found[1]
    st = _stat(path)
    if len(_recent) >= _RECENT_MAX:
        _recent.clear()
    _recent[path] = (now, st)
    return st


def file_state(path: str) -> FileState:
    st = stat_of(path)
    if st is None:
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
        if _recheck <= 0:
            return all(file_state(f[0]) == f for f in self.files)
        # With a re-check interval, files found unchanged less than half of it ago are not
        # looked at again (a stat itself is reused for the other half: at most the interval).
        clock = time.monotonic()
        if clock - self.__dict__.get("_files_seen", -_recheck) < _recheck / 2:
            return True
        if not all(file_state(f[0]) == f for f in self.files):
            return False
        object.__setattr__(self, "_files_seen", clock)  # not a field: eq and hash ignore it
        return True


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


def settled(state: FileState, *, now: float | None = None) -> bool:
    """True when ``state``'s mtime is old enough that a change would show in it."""
    return state[3] < ((now if now is not None else time.time()) - RACY_SECONDS) * 1e9


class Listing:
    """The entries of one directory: ``names`` sorted; ``files`` the regular files among
    them; ``by_stem`` the names grouped by the part before their first dot. Shared by every
    caller, never changed (a plain class: a dataclass costs a one-shot ~0.5 ms to make)."""

    __slots__ = ("by_stem", "files", "names", "state")

    def __init__(self, state: FileState, names: tuple[str, ...], files: frozenset[str],
                 by_stem: dict[str, tuple[str, ...]]) -> None:
        self.state, self.names, self.files, self.by_stem = state, names, files, by_stem


_listings: BoundedLRU[str, Listing] = BoundedLRU(LISTING_MAX_ENTRIES, LISTING_MAX_BYTES)


def dir_listing(path: str) -> Listing | None:
    """``path``'s entries, remembered while its state holds (see the module docstring);
    None if it is not a readable directory."""
    state = file_state(path)
    if state[1] == -1:
        return None
    cached = _listings.get(path)
    if cached is not None and cached.state == state:
        return cached
    try:
        with os.scandir(path) as entries:
            found = [(e.name, e.is_file()) for e in entries]
    except OSError:
        return None
    names = tuple(sorted(n for n, _ in found))
    stems: dict[str, list[str]] = {}
    for name in names:
        stem, dot, _rest = name.partition(".")
        if dot:
            stems.setdefault(stem, []).append(name)
    listing = Listing(state, names, frozenset(n for n, f in found if f),
                      {k: tuple(v) for k, v in stems.items()})
    if settled(state) and _fresh_state(path) == state:  # unchanged while it was listed
        _listings.put(path, listing, sum(len(n) + 60 for n in names) + ENTRY_OVERHEAD)
    return listing


def _fresh_state(path: str) -> FileState:
    try:
        st = os.stat(path)
    except OSError:
        return (path, -1, -1, -1)
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def watch_files(certdir: str, issuer_hashes: Iterable[str]) -> tuple[FileState, ...]:
    """The CA directory and every file in it belonging to these issuer hashes
    (``<hash>.*``)."""
    listing = dir_listing(certdir)
    paths = [certdir]
    for name in sorted(set(issuer_hashes)):
        found = listing.by_stem.get(name, ()) if listing is not None else ()
        paths.extend(os.path.join(certdir, n) for n in found)
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
