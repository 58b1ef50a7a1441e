"""lcmaps_voms_localgroup.mod / lcmaps_voms_poolgroup.mod: FQANs -> groups.

For each FQAN in order, the first groupmapfile line that matches (wildcards
always on) gives a group: a local one (not ``.``) or, for poolgroup, a
``.pool`` leased in the groupmapdir (one lease per FQAN, shared by every
user with it). The FIRST FQAN's group becomes the primary gid (unless
``--map-to-secondary-groups``), later ones secondary gids; if the first
FQAN maps nothing there is no primary gid at all. No FQANs -> failure.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from lcmaps import accounts
from lcmaps.plugin_api import EXHAUSTED, Plugin, PluginInitError, RunContext, lease_error_type
from lcmaps.plugins._common import OVERRIDE_OPTS, gridmapdir_for, lease_failure, prefixed_file
from sitefiles import mapfile
from sitefiles.plugins import ArgWalker, parse_int, parse_yes_no

if TYPE_CHECKING:  # the lease store is imported by the pool plugin only, when it needs it
    from leases import LeaseStore

GROUPMAPFILE_OPTS = ("-groupmapfile", "-GROUPMAPFILE", "-groupmap", "-GROUPMAP")
GROUPMAPDIR_OPTS = ("-groupmapdir", "-GROUPMAPDIR")


class _VomsGroup(Plugin):
    memo_safe = True
    label = "lcmaps_voms_group"
    pool = False

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.groupmapfile: str | None = None
        self.groupmapdir: str | None = None
        self.mapmin = 0
        self.mapall = False
        self.secondary_only = False
        self.override = False
        self.strict = True
        name = self.label
        args = ArgWalker(argv, name)
        for opt in args:
            if opt in GROUPMAPFILE_OPTS:
                self.groupmapfile = prefixed_file(args.value("a file name"), name, opt)
            elif opt == "-mapmin":
                self.mapmin = parse_int(args.value("a number"), name, opt)
            elif opt == "--map-to-secondary-groups":
                self.secondary_only = True
            elif opt == "-mapall":
                self.mapall = True
            elif self.pool and opt in GROUPMAPDIR_OPTS:
                self.groupmapdir = args.value("a directory")
            elif self.pool and opt in OVERRIDE_OPTS:
                self.override = True
            elif self.pool and opt == "-strict_poolprefix_match":
                self.strict = parse_yes_no(args.value("yes or no"), name, opt)
            else:
                args.unknown()
        if not self.groupmapfile:
            raise PluginInitError(f"{name}: no group-mapfile was provided, use -groupmapfile")

    def _group_for(self, ctx: RunContext, fqan: str) -> str | None:
        raise NotImplementedError

    def lease_stores(self) -> list[LeaseStore]:
        path = (self.groupmapdir or os.environ.get("GROUPMAPDIR")) if self.pool else None
        if not path:
            return []
        from leases import store_for

        return [store_for(path)]

    def run(self, ctx: RunContext) -> bool:
        fqans = ctx.fqans
        if not fqans:
            return ctx.fail(f"{self.label}: no (valid) VOMS groups found")
        mapped = 0
        for i, fqan in enumerate(fqans):
            try:
                group = self._group_for(ctx, fqan)
            except mapfile.MapfileError as exc:
                return ctx.fail(f"{self.label}: {exc}")
            except lease_error_type() as exc:  # looked up only while an exception is matched
                return lease_failure(ctx, self.label, exc)
            if group is None:
                if self.mapall:
                    return ctx.fail(f"{self.label}: no group for FQAN {i + 1} '{fqan}'",
                                    ctx.kind)
                continue
            mapped += 1
            try:
                gid = accounts.gid_of_group(group)
            except accounts.UnknownAccount:
                return ctx.fail(f"{self.label}: no group found with the name '{group}'")
            if i == 0 and not self.secondary_only:
                ctx.data.add_pgid(gid)
            else:
                ctx.data.add_sgid(gid)
            ctx.data.vo_mappings.append((fqan, gid))
        if mapped < self.mapmin:
            return ctx.fail(f"{self.label}: {mapped} groups found, minimum is {self.mapmin}",
                            ctx.kind)
        return True


class VomsLocalGroup(_VomsGroup):
    name = "voms_localgroup"
    label = "lcmaps_voms_localgroup"

    def _group_for(self, ctx: RunContext, fqan: str) -> str | None:
        assert self.groupmapfile is not None
        m = mapfile.find_mapping(self.groupmapfile, fqan, wildcards=True, kind="local")
        return m.mapping if m is not None else None


class VomsPoolGroup(_VomsGroup):
    name = "voms_poolgroup"
    label = "lcmaps_voms_poolgroup"
    pool = True

    def _group_for(self, ctx: RunContext, fqan: str) -> str | None:
        from leases.store import LeaseArgumentError, PoolExhausted

        assert self.groupmapfile is not None
        m = mapfile.find_mapping(self.groupmapfile, fqan, wildcards=True, kind="pool")
        if m is None or m.pool is None:
            return None
        path = self.groupmapdir or os.environ.get("GROUPMAPDIR")
        if not path:
            raise LeaseArgumentError("no groupmapdir (use -groupmapdir or $GROUPMAPDIR)")
        gmd = gridmapdir_for(path)
        assert gmd is not None
        try:
            if ctx.verifying:
                found = gmd.lookup(fqan)
                return found
            return gmd.acquire(m.pool, fqan, strict_prefix=self.strict,
                               override_inconsistency=self.override).account
        except PoolExhausted:
            ctx.kind = EXHAUSTED  # kept if this run then fails for want of a group
            return None
