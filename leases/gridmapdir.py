"""Pool-account leases in a gridmapdir, shareable with C LCMAPS.

A gridmapdir holds one empty regular file per pool account (``opool001``)
and, for every lease, a hard link to it named after the encoded credential
(``%2fdc%3dorg%2fcn%3dalice``).  An account is free when its file has link
count 1.  Leases are made with ``link(2)`` and checked by link count and
inode, never with a lock file, so a Python SCAS and a C LCMAPS on another
host can share one directory (reference notes, lcmaps_lcas.md section 8).

Usage by the plugins::

    gmd = GridmapDir("/etc/grid-security/gridmapdir")
    lease = gmd.acquire("opool", dn, mapcounter=None)            # poolaccount
    lease = gmd.acquire("opool", lease_string(dn, groups))       # voms_poolaccount
    lease = GridmapDir(groupmapdir).acquire("odteam", fqan)      # voms_poolgroup
    lease = gmd.verify("opool", dn, "opool002")                  # verify mode
    lease.account, lease.name                                     # name = POOL_INDEX

Every failure raises a subclass of ``GridmapDirError`` with a one-line
message; ``PoolExhausted`` is the distinct "no free account" case.  A failed
call leaves no lease behind that it created itself.

A first lease is made in three steps, so that a lease name becomes visible
only once its account has been won (``docs/leases.md`` gives the rules and
the argument that no interleaving hands one account to two credentials):

1. *claim*: hard-link the free entry to a private name (``leases.claims``);
2. *verify*: the claim's link count must be exactly 2 (entry + our claim);
   more means another claimant: remove ours, rescan after a short back-off;
3. *publish*: touch the claim (so no lease appears with the free entry's old mtime,
   which an expiry would take for an old lease), then
   ``renameat2(claim, lease, RENAME_NOREPLACE)``, so the lease
   appears with link count 2 in one step (link + unlink where the file
   system lacks it); if the lease already exists, a concurrent request for
   the same credential won: drop the claim and reuse that lease.

A process killed after step 1 leaves a claim that blocks its entry until
the claim is stale (``CLAIM_TIMEOUT``, or at once on this host when the
process is gone); every scan and :meth:`GridmapDir.expire` remove stale
claims. Killed after step 3, the lease is complete. Nothing is half-written:
leases are empty files.

Compatibility decisions
-----------------------
(a) Verify mode (C8).  The C plugins 1.7.1 verify a mapping by first
    looking at ``<lease>:mapcount=0001`` and treat "no such file" there as an
    error, so a correct plain lease is denied.  We do not copy that by
    default: ``verify`` checks the plain lease, and the ``mapcount`` leases
    only when a mapcounter is given or ``max_mappings > 1``.
    ``c_verify_quirk=True`` reproduces the C order and the ENOENT error, for
    differential tests.
(b) Non-ASCII bytes in a lease string (signed-char ``%ffffffXX``).  Reproduced
    byte-exactly by default, because hosts sharing a gridmapdir must agree on
    lease names: ``/CN=Jürgen`` (raw UTF-8) encodes as ``%2fcn%3dj%ff%ffrgen``
    (plus whatever stale tail C leaves).  Certificate DNs never contain raw
    non-ASCII (OpenSSL escapes them as ``\\xC3\\xBC``).
    ``encode_lease(..., c_signed_char=False)`` gives the clean ``%c3%bc``.
(c) A lost race: C links the lease name first and backs out when the count
    exceeds 2, so its lease is briefly visible before it is won; ours never
    is (the claim above). A lost claim is retried up to ``race_retries``
    times before ``LeaseRace``; a scan that finds no free entry while some
    are being claimed looks again rather than report an exhausted pool.
    A lease seen with link count > 2 is re-checked for a few ms (a C writer
    may be backing out of a race) before ``LeaseCorrupt``.
(d) Verify mode is read-only here (C removes a solitary lease it meets while
    verifying; we leave it).
"""

from __future__ import annotations

import contextlib
import errno
import os
import random
import stat
import threading
import time
from collections.abc import Callable

from leases import upkeep
from leases.claims import (
    CLAIM_PREFIX,
    CLAIM_TIMEOUT,
    claim_is_stale,
    new_claim_name,
    rename_noreplace,
)
from leases.freelist import FreeLists, Listing, read_listing
from leases.names import (
    encode_lease,
    in_pool,
    is_candidate_entry,
    lease_name,
    lease_string,
)
from leases.store import (
    MAX_MAPPINGS_LIMIT,
    EntryTaken,
    GridmapDirError,
    GridmapDirUnusable,
    Lease,
    LeaseArgumentError,
    LeaseCorrupt,
    LeaseInfo,
    LeaseNotFound,
    LeaseRace,
    LeaseStore,
    NoSuchEntry,
    PoolExhausted,
    WrongPool,
    check_counter,
    note_acquired,
)

__all__ = [
    "MAX_MAPPINGS_LIMIT",
    "EntryTaken",
    "GridmapDir",
    "GridmapDirError",
    "GridmapDirUnusable",
    "Lease",
    "LeaseArgumentError",
    "LeaseCorrupt",
    "LeaseInfo",
    "LeaseNotFound",
    "LeaseRace",
    "LeaseStore",
    "NoSuchEntry",
    "PoolExhausted",
    "WrongPool",
    "check_counter",
    "encode_lease",
    "in_pool",
    "is_candidate_entry",
    "lease_name",
    "lease_string",
]


class _Retry(Exception):
    """Internal: the lease appeared or vanished under us; start over."""


class _Raced(Exception):
    """Internal: another claimant held the entry too; our claim was removed."""


class _Busy(Exception):
    """Internal: no free entry seen, but some were being claimed; look again."""


#: the steps of a first lease, in order, as passed to the ``hook`` seam
STEPS = ("free", "claimed", "verified", "published")


class GridmapDir(LeaseStore):
    """The C-compatible lease store on a (local or shared) directory.

    ``check=True`` validates the directory now (GridmapDirUnusable).  The
    object keeps an inode -> entry-name cache so a held lease is found
    without scanning the directory; every cached name is re-checked with
    ``lstat`` before it is believed.  Safe to use from several threads and
    processes at once: all coordination is in the file system, and the cache
    is guarded by a lock.

    ``hook(step, entry)`` is a test seam: it is called at each step of a first
    lease (:data:`STEPS`), so a test can pause a thread or kill the process
    exactly there.
    """

    def __init__(
        self, path: str | os.PathLike[str], *, race_retries: int = 8, check: bool = True,
        claim_timeout: float = CLAIM_TIMEOUT, hook: Callable[[str, str], None] | None = None,
    ) -> None:  # fmt: skip
        self.path = os.fspath(path)
        self.race_retries = race_retries
        self.claim_timeout = claim_timeout
        self.hook = hook
        self._inodes: dict[int, str] = {}
        self._lock = threading.Lock()
        self._free = FreeLists()
        if check:
            self.check()

    def __repr__(self) -> str:
        return f"GridmapDir({self.path!r})"

    @property
    def location(self) -> str:
        return self.path

    # -- helpers ---------------------------------------------------------------

    def check(self) -> None:
        """Raise GridmapDirUnusable unless the directory exists and is writable."""
        try:
            st = os.stat(self.path)
        except FileNotFoundError:
            raise GridmapDirUnusable(f"gridmapdir {self.path} does not exist") from None
        except OSError as exc:
            raise GridmapDirUnusable(f"gridmapdir {self.path}: {exc.strerror}") from None
        if not stat.S_ISDIR(st.st_mode):
            raise GridmapDirUnusable(f"gridmapdir {self.path} is not a directory")
        if not os.access(self.path, os.W_OK | os.X_OK):
            raise GridmapDirUnusable(f"gridmapdir {self.path} is not writable")

    def probe(self) -> None:
        """Create, fill, link and remove a probe file: what a lease needs, done for real.

        ``os.access`` says yes on a full or read-only-remounted file system; this does not.
        """
        self.check()
        probe = self._p(new_claim_name().replace(CLAIM_PREFIX, ".probe.", 1))
        try:
            fd = os.open(probe, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, b"\0" * 512)
            finally:
                os.close(fd)
            os.link(probe, probe + ".l")
            os.unlink(probe + ".l")
        except OSError as exc:
            raise GridmapDirUnusable(f"gridmapdir {self.path}: {exc.strerror}") from None
        finally:
            with contextlib.suppress(OSError):
                os.unlink(probe)

    def _p(self, name: str) -> str:
        return os.path.join(self.path, name)

    def _step(self, step: str, entry: str) -> None:
        if self.hook is not None:
            self.hook(step, entry)

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.lstat(self._p(name))
        except FileNotFoundError:
            return None
        except NotADirectoryError:
            raise GridmapDirUnusable(f"gridmapdir {self.path} is not a directory") from None
        except OSError as exc:
            raise self._oserror(exc, f"cannot stat {name}") from None

    def _oserror(self, exc: OSError, what: str) -> GridmapDirError:
        if exc.errno == errno.ENAMETOOLONG:
            return LeaseArgumentError(f"lease name too long ({what})")
        if exc.errno == errno.ENOENT and not os.path.isdir(self.path):
            return GridmapDirUnusable(f"gridmapdir {self.path} does not exist")
        if exc.errno in (errno.EACCES, errno.EPERM, errno.EROFS, errno.ENOSPC, errno.EDQUOT):
            return GridmapDirUnusable(f"gridmapdir {self.path}: {what}: {exc.strerror}")
        return GridmapDirError(f"gridmapdir {self.path}: {what}: {exc.strerror}")

    def _unlink(self, name: str) -> None:
        try:
            os.unlink(self._p(name))
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise self._oserror(exc, f"cannot remove {name}") from None

    def _touch(self, name: str) -> None:
        try:
            os.utime(self._p(name))
        except OSError as exc:
            raise self._oserror(exc, f"cannot touch {name}") from None

    def _leasefile(self, leasename: str | bytes, mapcounter: int | None) -> str:
        name = encode_lease(lease_string(leasename, (), mapcounter))
        if name in ("", ".", "..") or "/" in name or "\0" in name:
            raise LeaseArgumentError(f"lease name {name!r} is not a valid file name")
        return name

    @staticmethod
    def _check_lease_stat(name: str, st: os.stat_result) -> None:
        if not stat.S_ISREG(st.st_mode):
            raise LeaseCorrupt(f"lease {name} is not a regular file")
        if st.st_nlink > 2:
            raise LeaseCorrupt(f"lease {name} has link count {st.st_nlink} (> 2)")

    def _other_link(self, name: str, st: os.stat_result) -> str | None:
        """The other name of the lease's inode (the pool entry), cache first."""
        with self._lock:
            cached = self._inodes.get(st.st_ino)
        if cached is not None and cached != name:
            other = self._lstat(cached)
            if other is not None and other.st_ino == st.st_ino and other.st_dev == st.st_dev:
                return cached
            with self._lock:
                self._inodes.pop(st.st_ino, None)
        found: str | None = None
        seen: dict[int, str] = {}
        try:
            with os.scandir(self.path) as it:
                for entry in it:
                    if entry.name == name:
                        continue
                    ino = entry.inode()
                    if is_candidate_entry(entry.name):
                        seen[ino] = entry.name
                    if found is None and ino == st.st_ino:
                        found = entry.name
        except OSError as exc:
            raise self._oserror(exc, "cannot read directory") from None
        with self._lock:
            self._inodes.update(seen)
        if found is not None:
            other = self._lstat(found)
            if other is None or other.st_ino != st.st_ino:
                return None
        return found

    # -- acquire -----------------------------------------------------------------

    def acquire(
        self,
        pool: str,
        leasename: str | bytes,
        *,
        mapcounter: int | None = None,
        max_mappings: int = 1,
        requested: str | None = None,
        strict_prefix: bool = True,
        override_inconsistency: bool = False,
    ) -> Lease:
        counter = check_counter(mapcounter, max_mappings)
        if not pool:
            raise LeaseArgumentError("empty pool prefix")
        name = self._leasefile(leasename, counter)
        if requested is not None:
            lease = self._requested(pool, name, requested, strict_prefix, override_inconsistency)
        else:
            lease = self._pool_lease(pool, name, strict_prefix, override_inconsistency)
        options = {"mapcounter": mapcounter, "max_mappings": max_mappings,
                   "requested": requested, "strict_prefix": strict_prefix,
                   "override_inconsistency": override_inconsistency}  # fmt: skip
        note_acquired(self, pool, leasename, options, lease)
        return lease

    def _pool_lease(self, pool: str, name: str, strict: bool, override: bool) -> Lease:
        for attempt in range(self.race_retries + 1):
            try:
                return self._pool_mapping(pool, name, strict, override)
            except (_Raced, _Busy):
                if attempt < self.race_retries:
                    time.sleep(random.uniform(0.0005, 0.005) * (attempt + 1))
        raise LeaseRace(f"lost the race for a free account in pool .{pool} for lease {name}")

    def _pool_mapping(self, pool: str, name: str, strict: bool, override: bool) -> Lease:
        for attempt in range(4):
            try:
                st = self._lstat(name)
                if st is not None:
                    if st.st_nlink > 2 and attempt < 3 and stat.S_ISREG(st.st_mode):
                        # A C writer backing out of a race, or one of ours between link and
                        # unlink of its claim: only a persistent count > 2 is corrupt.
                        time.sleep(0.002 * (attempt + 1))
                        continue
                    self._check_lease_stat(name, st)
                    if st.st_nlink == 1:
                        self._unlink(name)  # solitary lease: its account is gone
                    else:
                        return self._reuse(pool, name, st, strict, override)
                return self._allocate(pool, name, strict)
            except _Retry:
                continue
        raise LeaseRace(f"lease {name} keeps changing under us")

    def _reuse(
        self, pool: str, name: str, st: os.stat_result, strict: bool, override: bool
    ) -> Lease:
        other = self._other_link(name, st)
        if other is None:
            raise _Retry  # other link vanished: now solitary
        if other.startswith(CLAIM_PREFIX):
            time.sleep(0.001)
            raise _Retry  # a fallback publish between its link and unlink
        if in_pool(other, pool, strict):
            try:
                os.utime(self._p(name))
            except FileNotFoundError:
                raise _Retry from None  # released or expired since our lstat: look again
            except OSError as exc:
                raise self._oserror(exc, f"cannot touch {name}") from None
            return Lease(other, name, reused=True)
        if not override:
            raise WrongPool(f"lease {name} points to {other}, which is not in pool .{pool}")
        self._unlink(name)
        return self._allocate(pool, name, strict)

    def prime(self) -> int:
        """Read the directory once now (at start-up), so that neither the first lookup of a
        held lease nor the first lease afterwards has to: the inode cache and the free list.
        Returns the number of account entries read."""
        listing = self._listing()
        with self._lock:
            self._inodes.update((ino, n) for n, ino in listing.entries)
        self._free.prime(listing)
        return len(listing.entries)

    def _listing(self) -> Listing:
        try:
            return read_listing(self.path)
        except OSError as exc:
            raise self._oserror(exc, "cannot read directory") from None

    def _allocate(self, pool: str, name: str, strict: bool) -> Lease:
        """A free entry of the pool, won and published as ``name``: the next one on the free
        list (each re-checked here and won by the claim protocol), else the full scan."""
        while (ent := self._free.pop(pool, strict, self._listing)) is not None:
            st = self._lstat(ent)
            if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 1:
                continue  # taken since the listing (by anyone): the next one
            self._step("free", ent)
            lease = self._take(ent, st, name)
            if lease is not None:
                return lease
        self._free.ran_dry(pool, strict)
        return self._scan_allocate(pool, name, strict)

    def _scan_allocate(self, pool: str, name: str, strict: bool) -> Lease:
        """The first free entry of the pool in raw readdir order, won and published as ``name``.

        The authoritative answer when the free list has none: it also tells a pool in flux
        (retry) from an exhausted one."""
        seen: dict[int, str] = {}
        claimed: set[int] = set()
        leased: set[int] = set()  # inodes a lease name points to
        linked: list[os.stat_result] = []  # pool entries not free
        try:
            with os.scandir(self.path) as it:
                for entry in it:
                    ent = entry.name
                    if ent.startswith("%"):
                        leased.add(entry.inode())
                        continue
                    if ent.startswith(CLAIM_PREFIX):
                        self._note_claim(ent, entry.inode(), claimed)
                        continue
                    if not is_candidate_entry(ent) or not in_pool(ent, pool, strict):
                        continue
                    seen[entry.inode()] = ent
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except FileNotFoundError:
                        continue
                    if not stat.S_ISREG(st.st_mode):
                        continue
                    if st.st_nlink != 1:
                        linked.append(st)
                        continue
                    self._step("free", ent)
                    lease = self._take(ent, st, name)
                    if lease is not None:
                        return lease
        except OSError as exc:
            raise self._oserror(exc, "cannot read directory") from None
        finally:
            with self._lock:
                self._inodes.update(seen)
        if self._in_flux(linked, leased, claimed):
            raise _Busy  # entries still being claimed may come free again
        if self._lstat(name) is not None:
            raise _Retry  # a request for the same credential took the last entry: reuse it
        raise PoolExhausted(f"no free account in pool .{pool} (gridmapdir {self.path})")

    def _in_flux(
        self, linked: list[os.stat_result], leased: set[int], claimed: set[int]
    ) -> bool:
        """Whether a taken entry may be about to come free, so "exhausted" is not yet true.

        A claim can come and go between our ``stat`` of its entry and our reading of its name,
        so a recently changed entry (ctime within the claim timeout) with no lease name seen
        counts too. An entry unchanged for longer is settled whatever links it.
        """
        recent = time.time() - self.claim_timeout
        for st in linked:
            if st.st_nlink > 2 or st.st_ino in claimed:
                return True
            if st.st_ino not in leased and st.st_ctime >= recent:
                return True
        return False

    def _note_claim(self, ent: str, ino: int, claimed: set[int]) -> None:
        """Remember a live claim's inode (its entry is in flux); remove a stale one, whose
        entry may then be free (so the scan is not the last word either)."""
        claimed.add(ino)
        if claim_is_stale(ent, timeout=self.claim_timeout):
            with contextlib.suppress(OSError):
                os.unlink(self._p(ent))

    def _take(self, ent: str, st: os.stat_result, name: str) -> Lease | None:
        """Win free entry ``ent`` under a private claim, then publish the claim as ``name``.

        None: the entry is not usable by us (not writable, gone); try the next one.
        Raises _Raced when someone else claimed it too, _Retry when lease ``name`` appeared.
        """
        src = self._p(ent)
        try:
            fd = os.open(src, os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
        except OSError as exc:
            if exc.errno == errno.EROFS:
                raise self._oserror(exc, f"cannot write {ent}") from None
            return None  # not writable for us (or gone): C skips it too
        os.close(fd)
        claim = new_claim_name()
        try:
            os.link(src, self._p(claim))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise self._oserror(exc, f"cannot claim {ent}") from None
        published = False
        try:
            self._step("claimed", ent)
            cst = self._lstat(claim)
            if cst is None or cst.st_ino != st.st_ino or cst.st_nlink > 2:
                raise _Raced  # swept, replaced, or claimed by another: back out
            if cst.st_nlink < 2:
                return None  # the entry was removed meanwhile
            self._step("verified", ent)
            self._fresh(claim)  # the lease must never appear with the free entry's old mtime
            self._publish(claim, name)
            published = True
        finally:
            if not published:
                self._unlink(claim)
        self._step("published", ent)
        self._touch(name)
        with self._lock:
            self._inodes[st.st_ino] = ent
        return Lease(ent, name, reused=False)

    def _fresh(self, claim: str) -> None:
        """Touch our claim before publishing it: an expiry running beside us would take a
        lease that appeared with the entry's old mtime for an old lease."""
        try:
            os.utime(self._p(claim))
        except FileNotFoundError:
            raise _Raced from None  # swept as stale: start over
        except OSError as exc:
            raise self._oserror(exc, f"cannot touch {claim}") from None

    def _publish(self, claim: str, name: str) -> None:
        """Give the won entry its lease name; _Retry if the lease appeared meanwhile."""
        src, dst = self._p(claim), self._p(name)
        try:
            if rename_noreplace(src, dst):
                return
            os.link(src, dst)  # no renameat2 here: link, then drop the claim
        except FileExistsError:
            raise _Retry from None
        except FileNotFoundError:
            raise _Raced from None  # our claim was swept as stale: start over
        except OSError as exc:
            raise self._oserror(exc, f"cannot publish lease {name}") from None
        self._unlink(claim)

    def _requested(
        self, pool: str, name: str, account: str, strict: bool, override: bool
    ) -> Lease:
        """C ``get_req_pool_mapping`` outside verify mode."""
        est, st = self._requested_state(pool, name, account, strict)
        if est.st_nlink == 2:
            if st is not None and st.st_ino == est.st_ino:
                self._touch(name)
                return Lease(account, name, reused=True)
            raise EntryTaken(f"account {account} is leased by another credential")
        if st is not None:
            self._check_lease_stat(name, st)
            if st.st_nlink == 2:
                if not override:
                    other = self._other_link(name, st)
                    raise WrongPool(f"lease {name} already points to {other}, not to {account}")
                self._unlink(name)
            else:
                self._unlink(name)
        try:
            lease = self._take(account, est, name)
        except _Retry:
            raise EntryTaken(f"lease {name} was created concurrently") from None
        except _Raced:
            raise EntryTaken(f"account {account} was leased concurrently") from None
        if lease is None:
            raise NoSuchEntry(f"pool entry {account} is not usable")
        return lease

    def _requested_state(
        self, pool: str, name: str, account: str, strict: bool
    ) -> tuple[os.stat_result, os.stat_result | None]:
        if not in_pool(account, pool, strict) or not is_candidate_entry(account) or "/" in account:
            raise LeaseArgumentError(f"requested account {account!r} is not in pool .{pool}")
        est = self._lstat(account)
        if est is None:
            raise NoSuchEntry(f"account {account} has no entry in gridmapdir {self.path}")
        if not stat.S_ISREG(est.st_mode):
            raise LeaseCorrupt(f"pool entry {account} is not a regular file")
        if est.st_nlink > 2:
            raise LeaseCorrupt(f"pool entry {account} has link count {est.st_nlink} (> 2)")
        return est, self._lstat(name)

    # -- verify / lookup ---------------------------------------------------------

    def verify(
        self,
        pool: str,
        leasename: str | bytes,
        account: str,
        *,
        mapcounter: int | None = None,
        max_mappings: int = 1,
        strict_prefix: bool = True,
        c_verify_quirk: bool = False,
    ) -> Lease:
        counter = check_counter(mapcounter, max_mappings)
        if counter is not None:
            names = [self._leasefile(leasename, counter)]
        else:
            counted = [self._leasefile(leasename, i) for i in range(1, max_mappings + 1)]
            plain = self._leasefile(leasename, None)
            if c_verify_quirk:
                names = [*counted, plain]
            else:
                names = [plain, *counted] if max_mappings > 1 else [plain]
        first_error: GridmapDirError | None = None
        for name in names:
            try:
                return self._verify_one(pool, name, account, strict_prefix)
            except EntryTaken as exc:
                first_error = first_error or exc
            except GridmapDirError as exc:
                if c_verify_quirk:
                    raise
                first_error = first_error or exc
        assert first_error is not None
        raise first_error

    def _verify_one(self, pool: str, name: str, account: str, strict: bool) -> Lease:
        est, st = self._requested_state(pool, name, account, strict)
        if st is None:
            raise LeaseNotFound(f"no lease {name} in gridmapdir {self.path}")
        self._check_lease_stat(name, st)
        if est.st_nlink == 2 and st.st_ino == est.st_ino:
            return Lease(account, name, reused=True)
        if est.st_nlink == 2:
            raise EntryTaken(f"account {account} is leased by another credential")
        raise LeaseNotFound(f"lease {name} does not point to {account}")

    def lookup(self, leasename: str | bytes, *, mapcounter: int | None = None) -> str | None:
        counter = mapcounter if mapcounter is not None and mapcounter >= 1 else None
        name = self._leasefile(leasename, counter)
        st = self._lstat(name)
        if st is None or not stat.S_ISREG(st.st_mode) or st.st_nlink != 2:
            return None
        return self._other_link(name, st)

    # -- administration ------------------------------------------------------------

    def release(self, name: str) -> bool:
        """Remove lease ``name`` race-safely (``leases.upkeep``); False if it was not there.

        A lease that was re-made for another account while we looked is put back (False).
        """
        if not name.startswith("%") or "/" in name:
            raise LeaseArgumentError(f"{name!r} is not a lease name (leases start with %)")
        return upkeep.release_name(self.path, name).outcome == "removed"

    def leases(self) -> list[LeaseInfo]:
        names: dict[int, list[str]] = {}
        try:
            with os.scandir(self.path) as it:
                for entry in it:
                    names.setdefault(entry.inode(), []).append(entry.name)
        except OSError as exc:
            raise self._oserror(exc, "cannot read directory") from None
        out: list[LeaseInfo] = []
        for ino, group in names.items():
            for name in group:
                if not name.startswith("%"):
                    continue
                st = self._lstat(name)
                if st is None or st.st_ino != ino:
                    continue
                others = [n for n in group if n != name and not n.startswith("%")]
                account = others[0] if others else None
                out.append(LeaseInfo(name, account, st.st_mtime, st.st_nlink))
        return out

    def expire(self, max_age: float, *, now: float | None = None) -> list[LeaseInfo]:
        """Remove leases not renewed for ``max_age`` seconds, and stale claims.

        Race-safe beside live writers (``leases.upkeep``): a lease renewed or re-linked
        between the scan and its removal is kept.
        """
        cutoff = (time.time() if now is None else now) - max_age
        self.sweep_claims()
        removed = upkeep.expire_leases(self.path, cutoff)
        return [r.lease.info() for r in removed if r.outcome == "removed"]

    def sweep_claims(self) -> list[str]:
        """Remove stale claims (left by killed processes); return their names."""
        removed: list[str] = []
        try:
            with os.scandir(self.path) as it:
                names = [e.name for e in it if e.name.startswith(CLAIM_PREFIX)]
        except OSError as exc:
            raise self._oserror(exc, "cannot read directory") from None
        for name in names:
            if claim_is_stale(name, timeout=self.claim_timeout):
                with contextlib.suppress(FileNotFoundError):
                    self._unlink(name)
                    removed.append(name)
        return removed
