"""lcmaps_poolaccount.mod: DN -> ``.pool`` in the grid-mapfile -> leased account.

Leases live in the gridmapdir shared with C LCMAPS (:mod:`leases.gridmapdir`).
Adds uid, pgid, the account's ``getgrouplist`` gids and the lease name as
pool index. An exhausted pool is a plain plugin failure.

Verification mode checks the plain lease (and the ``mapcount`` ones), not
C 1.7.1's ``:mapcount=0001``-first lookup that denies correct mappings
(quirk C8); see the gridmapdir module for that decision.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcmaps.plugin_api import Plugin, PluginInitError, RunContext
from lcmaps.plugins._common import (
    GRIDMAPDIR_OPTS,
    GRIDMAPFILE_OPTS,
    NO_WILDCARD_OPTS,
    OVERRIDE_OPTS,
    add_account,
    gridmapdir_for,
    lease_failure,
    prefixed_file,
    register_dn,
    requested_username,
)
from leases import LeaseStore
from leases.store import MAX_MAPPINGS_LIMIT, GridmapDirError
from sitefiles import mapfile
from sitefiles.mapfile import default_gridmapfile
from sitefiles.plugins import ArgWalker, parse_int, parse_yes_no

NAME = "lcmaps_poolaccount"


class PoolAccount(Plugin):
    memo_safe = True
    name = "poolaccount"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.gridmapfile: str | None = None
        self.gridmapdir: str | None = None
        self.override = False
        self.max_mappings = 1
        self.strict = True
        self.wildcards = True
        args = ArgWalker(argv, NAME)
        for opt in args:
            if opt in GRIDMAPFILE_OPTS:
                self.gridmapfile = prefixed_file(args.value("a file name"), NAME, opt)
            elif opt in GRIDMAPDIR_OPTS:
                d = args.value("a directory")
                if not d.startswith("/"):
                    raise PluginInitError(f"{NAME}: {opt} must be an absolute path, got '{d}'")
                self.gridmapdir = d
            elif opt == "-max_mappings_per_credential":
                self.max_mappings = parse_int(args.value("a number"), NAME, opt, minimum=1,
                                              maximum=MAX_MAPPINGS_LIMIT)
            elif opt == "-strict_poolprefix_match":
                self.strict = parse_yes_no(args.value("yes or no"), NAME, opt)
            elif opt in OVERRIDE_OPTS:
                self.override = True
            elif opt in NO_WILDCARD_OPTS:
                self.wildcards = False
            else:
                args.unknown()

    def lease_stores(self) -> list[LeaseStore]:
        store = gridmapdir_for(self.gridmapdir)
        return [store] if store is not None else []

    def run(self, ctx: RunContext) -> bool:
        dn = register_dn(ctx)
        ok, req = requested_username(ctx, NAME)
        if not ok:
            return False
        gmd = gridmapdir_for(self.gridmapdir)
        if gmd is None:
            return ctx.fail(f"{NAME}: no gridmapdir (use -gridmapdir or $GRIDMAPDIR)")
        path = self.gridmapfile or default_gridmapfile()
        try:
            match = mapfile.find_mapping(path, dn, wildcards=self.wildcards, kind="pool")
        except mapfile.MapfileError as exc:
            return ctx.fail(f"{NAME}: {exc}")
        if match is None or match.pool is None:
            return ctx.fail(f"{NAME}: no pool for the DN in {path}")
        counter = ctx.request.mapcounter
        try:
            if ctx.verifying:
                assert req is not None
                lease = gmd.verify(match.pool, dn, req, mapcounter=counter,
                                   max_mappings=self.max_mappings, strict_prefix=self.strict)
            else:
                lease = gmd.acquire(match.pool, dn, mapcounter=counter,
                                    max_mappings=self.max_mappings, requested=req,
                                    strict_prefix=self.strict,
                                    override_inconsistency=self.override)
        except GridmapDirError as exc:
            return lease_failure(ctx, NAME, exc)
        if not add_account(ctx, lease.account, NAME):
            return False
        ctx.data.set_poolindex(lease.name, new=not lease.reused)
        return True
