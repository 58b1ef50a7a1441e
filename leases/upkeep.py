"""Gridmapdir upkeep beside live writers: survey, release and expire leases.

The server's workers and C LCMAPS (on this host or others) keep leasing and renewing in the
same directory while an admin or a cron job runs these, and none of them takes a lock. So a
lease is never removed on the strength of an earlier look. It is removed in three steps,
with the care a first lease takes (``docs/leases.md``, "Releasing and expiring"):

1. *check*: ``lstat`` the lease and its pool entry: still one inode (the one the scan saw),
   link count 2, and for expiry still older than the cutoff;
2. *set aside*: ``rename`` the lease to a private claim name (``leases.claims``). From here
   no writer can find, renew or re-link it under its lease name; a writer that looked it
   up a moment earlier fails its touch and looks again;
3. *verify, then drop or put back*: ``lstat`` the claim and the entry again. Same inode,
   count 2, still old: unlink the claim and the account is free. Otherwise publish the
   claim back under the lease name (``RENAME_NOREPLACE``): the lease is kept.

Once aside, the lease's mtime can change only through the entry's own name (C touches
that too), which the verify step sees. What remains is a window of microseconds between
that verify and the unlink; the doc spells it out.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass

from leases.claims import CLAIM_PREFIX, new_claim_name, rename_noreplace
from leases.store import GridmapDirError, GridmapDirUnusable, LeaseInfo, NoSuchEntry

__all__ = [
    "EntryState",
    "LeaseLink",
    "Removal",
    "Survey",
    "expire_leases",
    "lease_of",
    "release_account",
    "release_name",
    "remove_lease",
    "survey",
]

#: ``hook(step, lease name)`` test seam: "checked" (before the rename), "aside" (after it)
Hook = Callable[[str, str], None]
#: ``progress(phase, done, total)``, called now and then while a long operation runs
Progress = Callable[[str, int, int], None]
_Check = Callable[[os.stat_result, os.stat_result | None], str | None]


@dataclass(frozen=True)
class LeaseLink:
    """One lease name as seen by a scan: the pool entry it shares an inode with (None for a
    dangling lease, whose account file is gone), and that inode."""

    name: str
    account: str | None
    ino: int
    nlink: int
    mtime: float

    def info(self) -> LeaseInfo:
        return LeaseInfo(self.name, self.account, self.mtime, self.nlink)


@dataclass(frozen=True)
class EntryState:
    """A pool entry (account or group file) as seen by a scan."""

    name: str
    nlink: int
    mtime: float
    lease: str | None  # the lease name on the same inode, if the scan saw one

    @property
    def state(self) -> str:
        """free (count 1), leased (count 2 and a lease name), or busy (being leased,
        released or expired right now, or linked oddly)."""
        if self.nlink == 1:
            return "free"
        return "leased" if self.lease is not None and self.nlink == 2 else "busy"


@dataclass(frozen=True)
class Survey:
    path: str
    entries: tuple[EntryState, ...]
    leases: tuple[LeaseLink, ...]


@dataclass(frozen=True)
class Removal:
    """What became of one lease: ``removed``; ``kept`` (it changed, nothing removed);
    ``gone`` (someone else removed it first); ``superseded`` (it changed, and while it was
    aside the same key leased another account, so ours was dropped: see the doc)."""

    lease: LeaseLink
    outcome: str
    reason: str = ""


def _oserror(path: str, exc: OSError, what: str) -> GridmapDirError:
    if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
        return GridmapDirUnusable(f"gridmapdir {path}: {what}: {exc.strerror}")
    if exc.errno in (errno.ENOENT, errno.ENOTDIR) and not os.path.isdir(path):
        return GridmapDirUnusable(f"gridmapdir {path} does not exist")
    return GridmapDirError(f"gridmapdir {path}: {what}: {exc.strerror}")


def _lstat(path: str, name: str) -> os.stat_result | None:
    try:
        return os.lstat(os.path.join(path, name))
    except FileNotFoundError:
        return None
    except OSError as exc:
        raise _oserror(path, exc, f"cannot stat {name}") from None


def _inodes(path: str) -> list[tuple[str, int]]:
    """(name, inode) of every directory entry, from readdir alone (no stat)."""
    try:
        with os.scandir(path) as it:
            return [(e.name, e.inode()) for e in it]
    except OSError as exc:
        raise _oserror(path, exc, "cannot read directory") from None


def _tick(progress: Progress | None, phase: str, done: int, total: int) -> None:
    if progress is not None and (done == total or done % max(total // 100, 1) == 0):
        progress(phase, done, total)


def survey(path: str, *, progress: Progress | None = None) -> Survey:
    """Every pool entry and every lease, each ``lstat``-ed once (not one atomic snapshot:
    a busy directory changes while it is read, which the states allow for)."""
    listing = [(n, i) for n, i in _inodes(path) if not n.startswith(".")]
    stats: dict[str, os.stat_result] = {}
    for done, (name, _ino) in enumerate(listing, 1):
        st = _lstat(path, name)
        if st is not None and stat.S_ISREG(st.st_mode):
            stats[name] = st
        _tick(progress, "scan", done, len(listing))
    entry_of: dict[int, str] = {}
    lease_on: dict[int, str] = {}
    for name, st in stats.items():
        (lease_on if name.startswith("%") else entry_of).setdefault(st.st_ino, name)
    entries = tuple(
        EntryState(n, st.st_nlink, st.st_mtime, lease_on.get(st.st_ino))
        for n, st in stats.items() if not n.startswith("%")
    )  # fmt: skip
    leases = tuple(
        LeaseLink(n, entry_of.get(st.st_ino), st.st_ino, st.st_nlink, st.st_mtime)
        for n, st in stats.items() if n.startswith("%")
    )  # fmt: skip
    return Survey(path, entries, leases)


def lease_of(path: str, account: str) -> LeaseLink | None:
    """The lease on pool entry ``account`` now, or None when it is free.

    Raises NoSuchEntry when the directory has no such entry. A linked entry whose other
    name is not a lease (being claimed) is reported with the claim's name.
    """
    if not account or "/" in account or account.startswith(("%", ".")):
        raise NoSuchEntry(f"{account!r} is not a pool entry name")
    est = _lstat(path, account)
    if est is None or not stat.S_ISREG(est.st_mode):
        raise NoSuchEntry(f"account {account} has no entry in gridmapdir {path}")
    if est.st_nlink < 2:
        return None
    others = sorted(n for n, ino in _inodes(path) if ino == est.st_ino and n != account)
    name = next((n for n in others if n.startswith("%")), others[0] if others else None)
    if name is None:
        return None
    st = _lstat(path, name)
    if st is None or st.st_ino != est.st_ino:
        return None
    return LeaseLink(name, account, st.st_ino, st.st_nlink, st.st_mtime)


def _still(link: LeaseLink, cutoff: float | None) -> _Check:
    """The check of steps 1 and 3: the lease is still what the scan saw (and still old)."""

    def check(lease: os.stat_result, entry: os.stat_result | None) -> str | None:
        if lease.st_ino != link.ino or not stat.S_ISREG(lease.st_mode):
            return "the lease was made again meanwhile (another inode)"
        if link.account is None:
            if lease.st_nlink != 1:
                return "the dangling lease was linked meanwhile"
        elif entry is None or (entry.st_ino, entry.st_dev) != (lease.st_ino, lease.st_dev):
            return f"the lease no longer points to {link.account}"
        elif lease.st_nlink != 2:
            return f"link count {lease.st_nlink}: another writer is at it"
        if cutoff is not None and lease.st_mtime >= cutoff:
            return "renewed meanwhile"
        return None

    return check


def remove_lease(
    path: str, link: LeaseLink, *, cutoff: float | None = None, settle: float = 0.0,
    hook: Hook | None = None,
) -> Removal:  # fmt: skip
    """Remove lease ``link.name`` only while it is still the link to ``link.account``'s
    inode ``link.ino`` (and, with ``cutoff``, last renewed before it): the steps above.

    ``settle`` > 0 also keeps a lease whose inode changed (ctime) in the last ``settle``
    seconds: a C writer links a new lease and touches it two system calls later, so for
    that moment a brand-new lease carries the free entry's old mtime.
    """
    check = _still(link, cutoff)
    pre = _lstat(path, link.name)
    if pre is None:
        return Removal(link, "gone", "already removed")
    seen = LeaseLink(link.name, link.account, pre.st_ino, pre.st_nlink, pre.st_mtime)
    why = check(pre, _lstat(path, link.account) if link.account else None)
    if why is None and settle > 0 and pre.st_ctime > time.time() - settle:
        why = f"changed in the last {settle:g} s (a writer may be at it)"
    if why is not None:
        return Removal(seen, "kept", why)
    if hook is not None:
        hook("checked", link.name)
    claim = new_claim_name()
    try:
        os.rename(os.path.join(path, link.name), os.path.join(path, claim))
    except FileNotFoundError:
        return Removal(seen, "gone", "removed by another writer")
    except OSError as exc:
        raise _oserror(path, exc, f"cannot set {link.name} aside") from None
    try:
        if hook is not None:
            hook("aside", link.name)
        post = _lstat(path, claim)
        if post is None:
            return Removal(seen, "gone", "removed by another writer")
        seen = LeaseLink(link.name, link.account, post.st_ino, post.st_nlink, post.st_mtime)
        why = check(post, _lstat(path, link.account) if link.account else None)
    except BaseException:
        _put_back(path, claim, link.name)
        raise
    if why is None:
        _unlink(path, claim)
        return Removal(seen, "removed")
    if _put_back(path, claim, link.name):
        return Removal(seen, "kept", why)
    return Removal(seen, "superseded", f"{why}; the key leased another account meanwhile")


def _put_back(path: str, claim: str, name: str) -> bool:
    """Publish the claim under its lease name again; False (claim dropped) when that name
    exists again: a request for the same key leased another account while ours was aside."""
    src, dst = os.path.join(path, claim), os.path.join(path, name)
    try:
        if not rename_noreplace(src, dst):
            os.link(src, dst)  # no renameat2 here: link, then drop the claim
            _unlink(path, claim)
        return True
    except FileExistsError:
        _unlink(path, claim)
        return False
    except FileNotFoundError:
        return True  # our claim was swept (stale after the timeout): nothing left to do
    except OSError as exc:
        raise _oserror(path, exc, f"cannot put {name} back (it is at {claim})") from None


def _unlink(path: str, name: str) -> None:
    try:
        os.unlink(os.path.join(path, name))
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise _oserror(path, exc, f"cannot remove {name}") from None


def release_account(path: str, account: str, *, hook: Hook | None = None) -> Removal | None:
    """Release whatever lease holds ``account``; None when it is free.

    A linked entry with no lease name (a claim in flight) is ``kept``: try again.
    """
    link = lease_of(path, account)
    if link is None:
        return None
    if not link.name.startswith("%"):
        return Removal(link, "kept", "the account is being leased right now")
    return remove_lease(path, link, hook=hook)


def release_name(path: str, name: str, *, hook: Hook | None = None) -> Removal:
    """Release lease ``name`` (an encoded lease name), whichever account it points to."""
    st = _lstat(path, name)
    if st is None:
        return Removal(LeaseLink(name, None, 0, 0, 0.0), "gone", "no such lease")
    account = next(
        (n for n, ino in _inodes(path) if ino == st.st_ino and n != name
         and not n.startswith(("%", CLAIM_PREFIX))), None,
    )  # fmt: skip
    if account is None and st.st_nlink != 1:
        return Removal(LeaseLink(name, None, st.st_ino, st.st_nlink, st.st_mtime), "kept",
                       "another writer is at it")
    return remove_lease(path, LeaseLink(name, account, st.st_ino, st.st_nlink, st.st_mtime),
                        hook=hook)


def expire_leases(
    path: str, cutoff: float, *, dry_run: bool = False, settle: float = 0.0,
    progress: Progress | None = None, hook: Hook | None = None,
) -> list[Removal]:  # fmt: skip
    """Remove every lease last renewed before ``cutoff`` (an epoch time), dangling ones too.

    ``dry_run`` reports what would go (outcome ``removed``) and changes nothing. Leases
    renewed or re-linked since the scan, or changed within ``settle`` seconds (see
    :func:`remove_lease`), are ``kept``. Stale claims are not swept here
    (``GridmapDir.sweep_claims`` does that).
    """
    old = [ln for ln in survey(path, progress=progress).leases if ln.mtime < cutoff]
    out: list[Removal] = []
    for done, link in enumerate(sorted(old, key=lambda x: x.name), 1):
        if dry_run:
            out.append(Removal(link, "removed"))
        else:
            out.append(remove_lease(path, link, cutoff=cutoff, settle=settle, hook=hook))
        _tick(progress, "expire", done, len(old))
    return out
