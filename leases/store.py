"""The lease-store interface (DESIGN.md section 8) and its error classes.

The LCMAPS pool plugins program against ``LeaseStore`` so a site with several
SCAS replicas can later put leases in a shared database; ``GridmapDir`` in
``leases.gridmapdir`` is the embedded, C-compatible implementation.
"""

from __future__ import annotations

import threading
from abc import ABC, abstractmethod
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, ClassVar

from safetext import one_line

MAX_MAPPINGS_LIMIT = 9999

# --- errors ----------------------------------------------------------------


class GridmapDirError(Exception):
    """Base class: no lease could be made or checked.  One-line message.

    ``unavailable`` tells the two kinds apart across the plugin boundary: True for a fault
    of the store (I/O error, out of space, unusable directory, a race lost after retries),
    which the service answers Indeterminate so clients fail over; False for a policy
    outcome (pool exhausted, account taken), which is a Deny on every replica alike.
    """

    unavailable: ClassVar[bool] = True

    def __init__(self, message: str) -> None:
        super().__init__(one_line(message))


class GridmapDirUnusable(GridmapDirError):
    """The directory is missing, not a directory, or not writable."""


class LeaseArgumentError(GridmapDirError):
    """Bad arguments: mapcounter out of range, requested account not in the pool."""

    unavailable = False


class PoolExhausted(GridmapDirError):
    """Every account of the pool is leased (C: "no pool-entry available")."""

    unavailable = False


class WrongPool(GridmapDirError):
    """The credential's lease points to an account outside the requested pool."""

    unavailable = False


class LeaseCorrupt(GridmapDirError):
    """A lease or pool entry is not a regular file or has link count > 2."""


class LeaseRace(GridmapDirError):
    """Lost a race for a free account against another process too many times."""


class EntryTaken(GridmapDirError):
    """The requested account is leased to another credential."""

    unavailable = False


class NoSuchEntry(GridmapDirError):
    """The requested account has no entry in the gridmapdir."""

    unavailable = False


class LeaseNotFound(GridmapDirError):
    """Verify mode: the credential holds no lease on the requested account."""

    unavailable = False


# --- store interface -------------------------------------------------------


@dataclass(frozen=True)
class Lease:
    """A lease held by a credential: the account (or group) and the lease file name."""

    account: str
    name: str
    reused: bool = False


@dataclass(frozen=True)
class LeaseInfo:
    """One lease as listed: ``account`` is None for a solitary (dangling) lease."""

    name: str
    account: str | None
    mtime: float
    nlink: int


class LeaseStore(ABC):
    """What the LCMAPS pool plugins need from a lease store (DESIGN.md section 8)."""

    @abstractmethod
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
        """Reuse the credential's lease in ``pool`` or lease a free account.

        ``leasename`` is the raw lease string (DN, ``lease_string(dn, groups)``
        or an FQAN); the mapcount suffix is added here.  ``requested`` asks
        for one particular account (C ``get_req_pool_mapping``).
        """

    @abstractmethod
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
        """Check, without creating anything, that the credential holds ``account``."""

    @abstractmethod
    def lookup(self, leasename: str | bytes, *, mapcounter: int | None = None) -> str | None:
        """The account the credential's lease points to, or None; no side effects."""

    @abstractmethod
    def release(self, name: str) -> bool:
        """Remove the lease file ``name`` (an encoded lease name); False if absent."""

    @abstractmethod
    def leases(self) -> list[LeaseInfo]:
        """All leases (files whose name starts with ``%``)."""

    @abstractmethod
    def probe(self) -> None:
        """Raise GridmapDirUnusable unless a lease could be written now (a real write)."""

    @property
    @abstractmethod
    def location(self) -> str:
        """Where the leases live, for health reports and logs."""

    @abstractmethod
    def expire(self, max_age: float, *, now: float | None = None) -> list[LeaseInfo]:
        """Remove leases not used (touched) for ``max_age`` seconds; return them."""

    def prime(self) -> int:
        """Warm whatever a first lookup or first lease would otherwise read (at start-up);
        return how many entries were read. Stores with nothing to warm read none."""
        return 0


def check_counter(mapcounter: int | None, max_mappings: int) -> int | None:
    if not 1 <= max_mappings <= MAX_MAPPINGS_LIMIT:
        raise LeaseArgumentError(
            f"max_mappings_per_credential {max_mappings} out of range 1..{MAX_MAPPINGS_LIMIT}"
        )
    if mapcounter is None or mapcounter in (0, -1):
        return None
    if mapcounter < -1:
        raise LeaseArgumentError(f"mapcounter {mapcounter} is invalid")
    if mapcounter > max_mappings:
        raise LeaseArgumentError(
            f"mapcounter {mapcounter} exceeds the maximum number of mappings {max_mappings}"
        )
    return mapcounter


# --- acquisitions, for a caller that remembers a mapping ---------------------


@dataclass(frozen=True)
class Acquired:
    """One ``acquire`` call and the lease it returned.

    The server remembers a mapping for a short time (``scas_server.mapping_memo``); before it
    answers from memory it replays every acquisition the mapping made. A replay is the same
    call: it re-checks the lease in the store and touches it, as any use does.
    """

    store: LeaseStore
    pool: str
    leasename: str | bytes
    options: tuple[tuple[str, Any], ...]
    lease: Lease

    def replay(self) -> Lease | None:
        """Acquire again (raises as ``acquire`` does), but only if the lease still points to
        the same account: None when it does not, so a replay never makes a lease itself
        (but for a release in the instant between the look and the acquire)."""
        options = dict(self.options)
        account = self.store.lookup(self.leasename, mapcounter=options.get("mapcounter"))
        if account != self.lease.account:
            return None
        return self.store.acquire(self.pool, self.leasename, **options)


_recorder = threading.local()  # per greenlet under gevent's monkey-patching


@contextmanager
def recording() -> Iterator[list[Acquired]]:
    """Collect, in this thread, every acquisition made inside the block."""
    calls: list[Acquired] = []
    outer = getattr(_recorder, "calls", None)
    _recorder.calls = calls
    try:
        yield calls
    finally:
        _recorder.calls = outer


def note_acquired(store: LeaseStore, pool: str, leasename: str | bytes,
                  options: dict[str, Any], lease: Lease) -> None:  # fmt: skip
    """Called by a store for each lease it returns; kept only inside :func:`recording`."""
    calls: list[Acquired] | None = getattr(_recorder, "calls", None)
    if calls is not None:
        calls.append(Acquired(store, pool, leasename, tuple(options.items()), lease))
