"""Candidate free entries of a gridmapdir, kept in memory so a first lease needs no scan.

A first lease used to read the whole directory and ``lstat`` each pool entry until it met
one with link count 1: at 100,000 entries with half leased, about 0.6 s per lease. Here one
``readdir`` (no ``stat``) lists the pool entries whose inode no lease or claim name shares,
in directory order, and each first lease then takes the next name from that list.

The list is only a hint. Every name taken from it is re-checked with ``lstat`` (link count
1, regular file) and then won by the usual claim protocol (``docs/leases.md``), so a C
writer, another worker or another host that took the entry meanwhile costs one ``lstat``,
never a double lease. Entries freed after the listing are not in it: when the list runs dry
the caller falls back to the full scan, which sees them, and a new listing is read at most
once per :data:`REFILL_SECONDS` per pool.

Imports: :mod:`leases.names` and :mod:`leases.claims` only.
"""

from __future__ import annotations

import os
import threading
import time
from collections import deque
from collections.abc import Callable
from typing import NamedTuple

from leases.claims import CLAIM_PREFIX
from leases.names import in_pool, is_candidate_entry

__all__ = ["REFILL_SECONDS", "FreeLists", "Listing", "by_prefix", "read_listing"]

#: a dry pool's list is read again at most this often (the full scan answers meanwhile)
REFILL_SECONDS = 1.0


class Listing(NamedTuple):
    """One ``readdir``: candidate entries in order, and the inodes a lease or claim links."""

    entries: list[tuple[str, int]]
    taken: set[int]


def by_prefix(listing: Listing) -> dict[str, list[str]]:
    """The untaken entries named prefix + digits, grouped by prefix, in directory order.

    Built once at start-up, so a strict pool's first list costs a dictionary lookup
    instead of a pass over every entry."""
    groups: dict[str, list[str]] = {}
    for name, ino in listing.entries:
        if ino not in listing.taken and name[-1:].isdigit():
            stem = name.rstrip("0123456789")
            if stem:
                groups.setdefault(stem, []).append(name)
    return groups


def _candidates(listing: Listing, pool: str, strict: bool) -> deque[str]:
    return deque(n for n, ino in listing.entries
                 if ino not in listing.taken and in_pool(n, pool, strict))  # fmt: skip


def read_listing(path: str) -> Listing:
    """Read ``path`` once, without ``stat``: names and inodes come from ``readdir``."""
    entries: list[tuple[str, int]] = []
    taken: set[int] = set()
    with os.scandir(path) as it:
        for entry in it:
            name = entry.name
            if name.startswith("%") or name.startswith(CLAIM_PREFIX):
                taken.add(entry.inode())
            elif is_candidate_entry(name):
                entries.append((name, entry.inode()))
    return Listing(entries, taken)


class FreeLists:
    """Per pool (prefix and strictness), the names still believed free; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._listing: Listing | None = None
        self._groups: dict[str, list[str]] | None = None
        self._pools: dict[tuple[str, bool], deque[str]] = {}
        self._filled_at: dict[tuple[str, bool], float] = {}

    def prime(self, listing: Listing) -> None:
        """Start from ``listing`` (read at start-up): each strict pool's first list comes
        from it without another read; later lists, and other pools', from fresh reads."""
        groups = by_prefix(listing)
        with self._lock:
            self._listing, self._groups = listing, groups
            self._pools.clear()
            self._filled_at.clear()

    def pop(self, pool: str, strict: bool, read: Callable[[], Listing]) -> str | None:
        """The next candidate for ``pool``, or None: the caller must scan the directory.

        An empty list is refilled from a new listing at most once per
        :data:`REFILL_SECONDS`, so entries that keep failing cannot loop."""
        key = (pool, strict)
        with self._lock:
            names = self._pools.get(key)
            if names:
                return names.popleft()
            filled = self._filled_at.get(key)
            if filled is not None and time.monotonic() - filled < REFILL_SECONDS:
                return None
            self._filled_at[key] = time.monotonic()
            listing, groups = self._listing, self._groups
            if groups is not None and pool in groups and strict and not pool[-1:].isdigit():
                fresh = deque(groups.pop(pool))  # the start-up listing, once per pool
                self._pools[key] = fresh
                return fresh.popleft() if fresh else None
            self._listing = None  # a pool it cannot answer fast: read afresh from now on
        if listing is None:
            listing = read()  # outside the lock: other pools need not wait on the disk
        fresh = _candidates(listing, pool, strict)
        with self._lock:
            self._pools[key] = fresh
            return fresh.popleft() if fresh else None

    def ran_dry(self, pool: str, strict: bool) -> None:
        """The full scan is about to run for ``pool``: refill the list only after a pause."""
        key = (pool, strict)
        with self._lock:
            self._pools[key] = deque()
            self._filled_at[key] = time.monotonic()
