"""Helpers shared by the mapping plugins: file defaults, accounts, gid flags."""

from __future__ import annotations

import os
from typing import TYPE_CHECKING

from lcmaps import accounts
from lcmaps.plugin_api import EXHAUSTED, PluginInitError, RunContext, lease_store_for
from sitefiles.mapfile import GRID_SECURITY

if TYPE_CHECKING:
    from leases.store import GridmapDirError, LeaseStore

GRIDMAPFILE_OPTS = ("-gridmapfile", "-GRIDMAPFILE", "-gridmap", "-GRIDMAP")
GRIDMAPDIR_OPTS = ("-gridmapdir", "-GRIDMAPDIR")
OVERRIDE_OPTS = ("-override_inconsistency", "-OVERRIDE_INCONSISTENCY")
NO_WILDCARD_OPTS = (
    "-no_wildcard", "-disablewildcard", "--disablewildcard",
    "-disablewildcards", "--disablewildcards",
)


def lease_failure(ctx: RunContext, plugin: str, exc: GridmapDirError) -> bool:
    """A lease-store fault goes up to the engine (Indeterminate); a policy outcome, such as
    an exhausted pool, fails the plugin like C."""
    from leases.store import PoolExhausted

    if exc.unavailable:
        raise exc
    return ctx.fail(f"{plugin}: {exc}", EXHAUSTED if isinstance(exc, PoolExhausted) else None)


def gridmapdir_for(path: str | None) -> LeaseStore | None:
    """The lease store of ``-gridmapdir`` (else ``$GRIDMAPDIR``), or None when neither is set."""
    path = path or os.environ.get("GRIDMAPDIR")
    return lease_store_for(path) if path else None


def prefixed_file(name: str, plugin: str, opt: str) -> str:
    """A file named in plugin args: absolute as is; relative names live in
    /etc/grid-security for root (as C's ``lcmaps_get_prefixed_file``)."""
    if not name:
        raise PluginInitError(f"{plugin}: option {opt} needs to be followed by a file name")
    if name.startswith("/") or os.geteuid() != 0:
        return name
    return f"{GRID_SECURITY}/{name}"



def requested_username(ctx: RunContext, plugin: str) -> tuple[bool, str | None]:
    """(ok, name): the requested username, or the name of the requested uid.

    uid 0 or an unknown uid is a failure; in verification mode a request is
    required (as in the C pool plugins)."""
    req = ctx.request.requested
    if req is not None and req.username:
        return True, req.username
    if req is not None and req.uid is not None and req.uid != -1:
        if req.uid == 0:
            ctx.fail(f"{plugin}: illegal request for uid 0")
            return False, None
        try:
            return True, accounts.account_by_uid(req.uid).name
        except accounts.UnknownAccount:
            ctx.fail(f"{plugin}: the requested uid {req.uid} is unknown")
            return False, None
    if ctx.verifying:
        ctx.fail(f"{plugin}: verification needs a requested uid or username")
        return False, None
    return True, None


def register_dn(ctx: RunContext) -> str:
    """The DN the plugins map: the registered one, else the user DN (then registered)."""
    if ctx.data.dn is None:
        ctx.data.dn = ctx.request.dn
    return ctx.data.dn


def add_account(
    ctx: RunContext, name: str, plugin: str, *, pgid: int = 1, sgids: bool = True
) -> bool:
    """Add the uid of ``name`` and, per flags, its gid (``pgid`` bit 1: as
    primary, bit 2: as secondary) and its ``getgrouplist`` gids."""
    try:
        acct = accounts.account(name)
    except accounts.UnknownAccount:
        return ctx.fail(f"{plugin}: no user account found with the name '{name}'")
    ctx.data.add_uid(acct.uid)
    if pgid & 1:
        ctx.data.add_pgid(acct.gid)
    if pgid & 2:
        ctx.data.add_sgid(acct.gid)
    if sgids:
        try:
            for gid in accounts.group_gids(name, acct.gid):
                ctx.data.add_sgid(gid)
        except accounts.UnknownAccount:
            pass  # C ignores a failing lcmaps_get_gidlist
    return True


class GidFlags:
    """The gid options of voms_localaccount / voms_poolaccount, with C's
    conflict checks and resolution order."""

    OPTIONS = (
        "--use-voms-gid", "--use_voms_gid", "-use_voms_gid", "--use-account-gid",
        "--do-not-add-primary-gid-from-mapped-account",
        "--add-primary-gid-from-mapped-account",
        "--add-primary-gid-as-secondary-gid-from-mapped-account",
        "--do-not-add-secondary-gids-from-mapped-account",
        "--add-secondary-gids-from-mapped-account",
    )

    def __init__(self, plugin: str, *, default_account_gid: bool) -> None:
        self.plugin = plugin
        self.default_account_gid = default_account_gid
        self.seen: set[str] = set()

    def take(self, opt: str) -> None:
        conflicts = {
            "--do-not-add-primary-gid-from-mapped-account": (
                "--add-primary-gid-from-mapped-account",
                "--add-primary-gid-as-secondary-gid-from-mapped-account",
            ),
            "--add-primary-gid-from-mapped-account": (
                "--do-not-add-primary-gid-from-mapped-account",
            ),
            "--add-primary-gid-as-secondary-gid-from-mapped-account": (
                "--do-not-add-primary-gid-from-mapped-account",
            ),
            "--do-not-add-secondary-gids-from-mapped-account": (
                "--add-secondary-gids-from-mapped-account",
            ),
            "--add-secondary-gids-from-mapped-account": (
                "--do-not-add-secondary-gids-from-mapped-account",
            ),
            "voms": ("--use-account-gid",),
            "--use-account-gid": ("voms",),
        }
        key = "voms" if opt in ("--use-voms-gid", "--use_voms_gid", "-use_voms_gid") else opt
        for other in conflicts.get(key, ()):
            if other in self.seen:
                shown = "--use-voms-gid" if other == "voms" else other
                raise PluginInitError(f"{self.plugin}: cannot specify both {opt} and {shown}")
        self.seen.add(key)

    def resolve(self) -> tuple[int, bool]:
        """(pgid bits, add account sgids)."""
        on = self.default_account_gid
        if "voms" in self.seen:
            on = False
        elif "--use-account-gid" in self.seen:
            on = True
        pgid, sgid = (1 if on else 0), on
        if "--do-not-add-primary-gid-from-mapped-account" in self.seen:
            pgid = 0
        else:
            if "--add-primary-gid-from-mapped-account" in self.seen:
                pgid |= 1
            if "--add-primary-gid-as-secondary-gid-from-mapped-account" in self.seen:
                pgid |= 2
        if "--do-not-add-secondary-gids-from-mapped-account" in self.seen:
            sgid = False
        elif "--add-secondary-gids-from-mapped-account" in self.seen:
            sgid = True
        return pgid, sgid
