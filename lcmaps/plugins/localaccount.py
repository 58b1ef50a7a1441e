"""lcmaps_localaccount.mod: DN -> local account from a grid-mapfile.

Exact DN match only (C passes no wildcard option), the first mapping not
starting with ``.`` (or the requested username), then uid, pgid and all
``getgrouplist`` gids of the account.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcmaps.plugin_api import Plugin, RunContext
from lcmaps.plugins._common import (
    GRIDMAPFILE_OPTS,
    add_account,
    prefixed_file,
    register_dn,
    requested_username,
)
from sitefiles import mapfile
from sitefiles.mapfile import default_gridmapfile
from sitefiles.plugins import ArgWalker

NAME = "lcmaps_localaccount"


class LocalAccount(Plugin):
    memo_safe = True
    name = "localaccount"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.gridmapfile: str | None = None
        args = ArgWalker(argv, NAME)
        for opt in args:
            if opt in GRIDMAPFILE_OPTS:
                self.gridmapfile = prefixed_file(args.value("a file name"), NAME, opt)
            else:
                args.unknown()

    def run(self, ctx: RunContext) -> bool:
        dn = register_dn(ctx)
        ok, req = requested_username(ctx, NAME)
        if not ok:
            return False
        path = self.gridmapfile or default_gridmapfile()
        try:
            match = mapfile.find_mapping(path, dn, wildcards=False, kind="local", requested=req)
        except mapfile.MapfileError as exc:
            return ctx.fail(f"{NAME}: {exc}")
        if match is None or match.mapping is None:
            return ctx.fail(f"{NAME}: no local account for the DN in {path}")
        return add_account(ctx, match.mapping, NAME)
