"""lcmaps_voms_localaccount.mod / lcmaps_voms_poolaccount.mod: FQAN -> account.

FQANs are tried in order; the first that yields an account wins (for the
pool plugin: a pool AND a lease; a full pool moves on to the next FQAN).
voms_localaccount adds the account's gids by default; voms_poolaccount by
default only the uid (its gids come from voms_localgroup/poolgroup run
before it). The pool lease is named after the DN plus the group names
already in the credential store, so the same FQANs in another order give
another lease (quirk C3).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from lcmaps import accounts
from lcmaps.plugin_api import EXHAUSTED, Plugin, PluginInitError, RunContext
from lcmaps.plugins._common import (
    GRIDMAPDIR_OPTS,
    GRIDMAPFILE_OPTS,
    OVERRIDE_OPTS,
    GidFlags,
    add_account,
    gridmapdir_for,
    lease_failure,
    prefixed_file,
    register_dn,
    requested_username,
)
from sitefiles import mapfile
from sitefiles.mapfile import default_gridmapfile
from sitefiles.plugins import ArgWalker, parse_int, parse_yes_no

if TYPE_CHECKING:  # the lease store is imported by the pool plugin only, when it needs it
    from leases import LeaseStore


class _VomsAccount(Plugin):
    memo_safe = True
    label = "lcmaps_voms_account"
    pool = False

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        name = self.label
        self.gridmapfile: str | None = None
        self.gridmapdir: str | None = None
        self.override = False
        self.max_mappings = 1
        self.strict = True
        self.use_sgids_in_lease = True
        self.require_pgid: bool | None = None
        flags = GidFlags(name, default_account_gid=not self.pool)
        args = ArgWalker(argv, name)
        for opt in args:
            if opt in GRIDMAPFILE_OPTS:
                self.gridmapfile = prefixed_file(args.value("a file name"), name, opt)
            elif opt in GidFlags.OPTIONS:
                flags.take(opt)
            elif self.pool and opt in GRIDMAPDIR_OPTS:
                self.gridmapdir = args.value("a directory")
            elif self.pool and opt in OVERRIDE_OPTS:
                self.override = True
            elif self.pool and opt == "-max_mappings_per_credential":
                from leases.store import MAX_MAPPINGS_LIMIT

                self.max_mappings = parse_int(args.value("a number"), name, opt, minimum=1,
                                              maximum=MAX_MAPPINGS_LIMIT)
            elif self.pool and opt == "-strict_poolprefix_match":
                self.strict = parse_yes_no(args.value("yes or no"), name, opt)
            elif self.pool and opt in (
                "--do-not-use-secondary-gids", "-do_not-use-secondary-gids",
                "-do_not_use_secondary_gids",
            ):
                self.use_sgids_in_lease = False
            elif self.pool and opt in (
                "--do-not-require-primary-gid", "-do_not-require-primary-gid",
                "-do_not_require_primary_gid", "--require-primary-gid",
            ):
                want = opt == "--require-primary-gid"
                if self.require_pgid is not None and self.require_pgid != want:
                    raise PluginInitError(f"{name}: cannot specify both {opt} and its opposite")
                self.require_pgid = want
            else:
                args.unknown()
        self.pgid_bits, self.add_sgids = flags.resolve()

    def lease_stores(self) -> list[LeaseStore]:
        store = gridmapdir_for(self.gridmapdir) if self.pool else None
        return [store] if store is not None else []

    def _finish(self, ctx: RunContext, account: str) -> bool:
        return add_account(ctx, account, self.label, pgid=self.pgid_bits, sgids=self.add_sgids)


class VomsLocalAccount(_VomsAccount):
    name = "voms_localaccount"
    label = "lcmaps_voms_localaccount"

    def run(self, ctx: RunContext) -> bool:
        register_dn(ctx)
        ok, req = requested_username(ctx, self.label) if ctx.verifying else (True, None)
        if not ok:
            return False
        path = self.gridmapfile or default_gridmapfile()
        if not ctx.fqans:
            return ctx.fail(f"{self.label}: no (valid) VOMS groups found")
        for fqan in ctx.fqans:
            try:
                m = mapfile.find_mapping(path, fqan, wildcards=True, kind="local", requested=req)
            except mapfile.MapfileError as exc:
                return ctx.fail(f"{self.label}: {exc}")
            if m is not None and m.mapping is not None:
                return self._finish(ctx, m.mapping)
        return ctx.fail(f"{self.label}: no local account for any FQAN in {path}")


def _group_names(gids: Sequence[int]) -> list[str]:
    out = []
    for gid in gids:
        try:
            out.append(accounts.group_name(gid))
        except accounts.UnknownAccount:
            out.append(str(gid))
    return out


class VomsPoolAccount(_VomsAccount):
    name = "voms_poolaccount"
    label = "lcmaps_voms_poolaccount"
    pool = True

    def run(self, ctx: RunContext) -> bool:
        from leases.names import lease_string
        from leases.store import GridmapDirError, PoolExhausted

        dn = register_dn(ctx)
        if not ctx.fqans:
            return ctx.fail(f"{self.label}: no (valid) VOMS groups found")
        ok, req = requested_username(ctx, self.label)
        if not ok:
            return False
        if not ctx.data.pgids and self.require_pgid:
            return ctx.fail(f"{self.label}: no primary gid in the credential and one is required")
        gids = list(ctx.data.pgids) + (list(ctx.data.sgids) if self.use_sgids_in_lease else [])
        leasename = lease_string(dn, _group_names(gids))
        gmd = gridmapdir_for(self.gridmapdir)
        if gmd is None:
            return ctx.fail(f"{self.label}: no gridmapdir (use -gridmapdir or $GRIDMAPDIR)")
        path = self.gridmapfile or default_gridmapfile()
        exhausted = False
        for fqan in ctx.fqans:
            try:
                m = mapfile.find_mapping(path, fqan, wildcards=True, kind="pool")
                if m is None or m.pool is None:
                    continue
                if ctx.verifying:
                    assert req is not None
                    lease = gmd.verify(m.pool, leasename, req, mapcounter=ctx.request.mapcounter,
                                       max_mappings=self.max_mappings, strict_prefix=self.strict)
                else:
                    lease = gmd.acquire(m.pool, leasename, mapcounter=ctx.request.mapcounter,
                                        max_mappings=self.max_mappings, requested=req,
                                        strict_prefix=self.strict,
                                        override_inconsistency=self.override)
            except PoolExhausted:
                exhausted = True
                continue
            except mapfile.MapfileError as exc:
                return ctx.fail(f"{self.label}: {exc}")
            except GridmapDirError as exc:
                return lease_failure(ctx, self.label, exc)
            if not self._finish(ctx, lease.account):
                return False
            ctx.data.set_poolindex(lease.name, new=not lease.reused)
            return True
        return ctx.fail(f"{self.label}: no pool account for any FQAN of {dn}",
                        EXHAUSTED if exhausted else None)
