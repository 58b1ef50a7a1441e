"""What an LCMAPS plugin sees: its argv at start, a run context per request.

A plugin class is constructed once with the argv C LCMAPS would give it
(``argv[0]`` is the legacy module path) and must refuse unknown arguments
by raising :class:`PluginInitError`. It is then run many times, possibly
from several threads at once, so it keeps no per-request state on ``self``:
everything a run produces goes into ``ctx.data`` (the credential store).
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence
from contextvars import ContextVar
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar

from safetext import one_line
from sitefiles.plugins import LazyLogger, PluginInitError

if TYPE_CHECKING:
    from credentials.credential import Credential
    from leases.store import GridmapDirError, LeaseStore

__all__ = [
    "BANNED", "EXHAUSTED", "CredentialData", "Mode", "Plugin", "PluginInitError",
    "PluginUnavailable", "Request", "RequestedAccount", "RunContext", "lease_error_type",
    "lease_store_for",
]

log = LazyLogger("lcmaps")


#: kinds of deny a client is told apart (the detail stays in the audit log)
BANNED = "banned"
EXHAUSTED = "exhausted"

#: The lease-store factory of the run in progress (``Engine.store_factory``), or None for
#: the process's real stores. A context variable, so one thread's run never sees another's.
STORE_FACTORY: ContextVar[Callable[[str], LeaseStore] | None] = ContextVar(
    "lcmaps_store_factory", default=None
)


def lease_store_for(path: str) -> LeaseStore:
    """The lease store the pool plugins use for ``path``: :func:`leases.store_for`, unless
    the running engine was given a factory (``scas-admin explain``'s read-only store)."""
    factory = STORE_FACTORY.get()
    if factory is not None:
        return factory(path)
    from leases import store_for

    return store_for(path)


def lease_error_type() -> type[GridmapDirError]:
    """:class:`leases.store.GridmapDirError`, imported when first asked for: as ``except
    lease_error_type() as exc:`` it is only looked up once an exception is being matched, so
    a run whose plugins lease nothing never imports the lease store (3-5 ms of a one-shot)."""
    from leases.store import GridmapDirError

    return GridmapDirError


class PluginUnavailable(Exception):
    """Something a plugin depends on failed (a lease store, an LDAP server): not a policy
    outcome. The engine stops there, and the service answers Indeterminate so clients fail
    over, instead of trying the next rule as C does for any failure."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


class Mode(enum.Enum):
    NORMAL = "normal"  # plugin_run: may lease accounts
    VERIFICATION = "verification"  # plugin_verify: checks a requested account, no new leases


@dataclass(frozen=True)
class RequestedAccount:
    """The account a caller asks to have verified (or a requested username)."""

    uid: int | None = None
    pgids: tuple[int, ...] = ()
    sgids: tuple[int, ...] = ()
    poolindex: str | None = None
    username: str | None = None


@dataclass(frozen=True)
class Request:
    """The run variables of C LCMAPS (``user_dn``, ``fqan_list``, ``mapcounter``...)."""

    dn: str
    fqans: tuple[str, ...] = ()
    credential: Credential | None = None
    mapcounter: int = -1
    mode: Mode = Mode.NORMAL
    requested: RequestedAccount | None = None
    now: datetime | None = None


@dataclass
class CredentialData:
    """The credential store (``lcmaps_cred_data.c``): UIDs and primary GIDs
    are appended as given, secondary GIDs kept sorted and unique, the pool
    index is a single value (last writer wins)."""

    dn: str | None = None
    uids: list[int] = field(default_factory=list)
    pgids: list[int] = field(default_factory=list)
    sgids: list[int] = field(default_factory=list)
    poolindex: str | None = None
    lease_new: bool | None = None  # whether the pool index is a lease made by this run
    vo_mappings: list[tuple[str, int]] = field(default_factory=list)

    def add_uid(self, uid: int) -> None:
        self.uids.append(uid)

    def add_pgid(self, gid: int) -> None:
        self.pgids.append(gid)

    def add_sgid(self, gid: int) -> None:
        if gid not in self.sgids:
            self.sgids.append(gid)
            self.sgids.sort()

    def set_poolindex(self, index: str, *, new: bool | None = None) -> None:
        self.poolindex, self.lease_new = index, new

    def reset(self) -> None:
        self.dn = None
        self.uids.clear()
        self.pgids.clear()
        self.sgids.clear()
        self.poolindex = None
        self.lease_new = None
        self.vo_mappings.clear()


@dataclass
class RunContext:
    """One run of the engine: the request and what the plugins made of it."""

    request: Request
    data: CredentialData = field(default_factory=CredentialData)
    reason: str | None = None  # why the last failing plugin failed
    kind: str | None = None  # what kind of deny that was: BANNED, EXHAUSTED, or None
    #: (module, result) of each plugin run that reads the credential, in run order
    checks: list[tuple[str, bool]] = field(default_factory=list)

    @property
    def dn(self) -> str:
        """The registered DN if a plugin set one, else the request's DN."""
        return self.data.dn if self.data.dn is not None else self.request.dn

    @property
    def fqans(self) -> tuple[str, ...]:
        return self.request.fqans

    @property
    def verifying(self) -> bool:
        return self.request.mode is Mode.VERIFICATION

    def fail(self, reason: str, kind: str | None = None) -> bool:
        """Record why a plugin failed (and, for the service's reply, whether it was a ban or a
        full pool) and return False (the plugin's result)."""
        self.reason, self.kind = reason, kind
        log.info("%s", one_line(reason))
        return False


class Plugin:
    """Base class. Subclasses parse ``argv`` in ``__init__`` and implement :meth:`run`."""

    name: ClassVar[str] = "plugin"
    #: C plugins without ``plugin_verify`` make a VERIFICATION run fail.
    has_verify: ClassVar[bool] = True
    #: The outcome depends only on the request, the files the plugin reads and the leases it
    #: takes through a lease store: the server may then reuse a mapping for a short time
    #: (``scas_server.mapping_memo``), replaying the leases. False for plugins with other
    #: effects or inputs (LDAP, a remote SCAS, enforcement), and for LCMAPS ban lists, so
    #: that a ban there counts from the next query.
    memo_safe: ClassVar[bool] = False
    #: The outcome depends on the credential's chain, not only on the DN and the FQANs. A
    #: kept mapping serves another credential of the same user only when each such plugin,
    #: run again on it, answers as it did in the run that made the mapping.
    reads_credential: ClassVar[bool] = False

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = tuple(argv)

    def run(self, ctx: RunContext) -> bool:
        raise NotImplementedError

    def verify(self, ctx: RunContext) -> bool:
        return self.run(ctx)

    def lease_stores(self) -> list[LeaseStore]:
        """The lease stores this plugin writes, so ``/health`` probes the real ones."""
        return []

    def terminate(self) -> None:
        """Release resources (connections); called by :meth:`Engine.close`."""
