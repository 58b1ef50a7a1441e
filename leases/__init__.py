"""Leases: which pool account (or pool group) a credential holds.

In:  a pool prefix and a lease string (DN, DN plus group names, or an FQAN).
Out: a :class:`~leases.store.Lease` (the account and the lease name), or one
     :class:`~leases.store.GridmapDirError` subclass per kind of failure, each marked as a
     policy outcome (``denial``) or a store fault (``unavailable``); and, inside
     :func:`~leases.store.recording`, the acquisitions made, to be replayed later.
Imports: nothing of ours but :mod:`safetext`. The LCMAPS pool plugins program against
:class:`~leases.store.LeaseStore`; :func:`leases.store_for` gives the C-compatible gridmapdir.
"""

from __future__ import annotations

import os
import threading

from leases.store import LeaseStore

__all__ = ["LeaseStore", "store_for"]

_stores: dict[str, LeaseStore] = {}
_lock = threading.Lock()


def store_for(path: str | os.PathLike[str]) -> LeaseStore:
    """The process's one lease store for ``path`` (today always the C-compatible gridmapdir).

    One per path, kept for the life of the process: its inode cache is what makes a held
    lease cost one ``lstat`` instead of a directory scan, and its free list what makes a
    first lease cost no scan (``prime()`` fills both at start-up).
    """
    key = os.fspath(path)
    with _lock:
        store = _stores.get(key)
        if store is None:
            from leases.gridmapdir import GridmapDir

            store = _stores[key] = GridmapDir(key, check=False)
        return store
