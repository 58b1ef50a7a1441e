"""lcmaps_ban_dn.mod / lcmaps_ban_fqan.mod: fail when the DN (any FQAN) is listed.

Grid-mapfile syntax, keys only, wildcards on unless disabled. A missing or
unset ban file makes the plugin fail (a ban list that cannot be read must
not let everyone in). ban_fqan succeeds when there are no FQANs.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcmaps.plugin_api import BANNED, Plugin, RunContext
from lcmaps.plugins._common import NO_WILDCARD_OPTS, prefixed_file, register_dn
from sitefiles import mapfile
from sitefiles.plugins import ArgWalker

BAN_FILE_OPTS = (
    "-banmapfile", "-BANMAPFILE", "-ban_mapfile", "-BAN_MAPFILE",
    "-gridmapfile", "-GRIDMAPFILE", "-gridmap", "-GRIDMAP",
)


class _Ban(Plugin):
    label = "lcmaps_ban"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.banfile: str | None = None
        self.wildcards = True
        args = ArgWalker(argv, self.label)
        for opt in args:
            if opt in BAN_FILE_OPTS:
                self.banfile = prefixed_file(args.value("a file name"), self.label, opt)
            elif opt in NO_WILDCARD_OPTS:
                self.wildcards = False
            else:
                args.unknown()

    def _listed(self, ctx: RunContext, values: Sequence[str]) -> bool | None:
        """True if banned, False if not, None after recording an error."""
        if not self.banfile:
            ctx.fail(f"{self.label}: no ban file configured")
            return None
        try:
            banlist = mapfile.load(self.banfile)
            for value in values:
                if banlist.find_key(value, wildcards=self.wildcards) is not None:
                    ctx.fail(f"{self.label}: {value} is banned", BANNED)
                    return True
        except mapfile.MapfileError as exc:
            ctx.fail(f"{self.label}: {exc}")
            return None
        return False


class BanDn(_Ban):
    name = "ban_dn"
    label = "lcmaps_ban_dn"

    def run(self, ctx: RunContext) -> bool:
        return self._listed(ctx, [register_dn(ctx)]) is False


class BanFqan(_Ban):
    name = "ban_fqan"
    label = "lcmaps_ban_fqan"

    def run(self, ctx: RunContext) -> bool:
        if not ctx.fqans:
            return True
        return self._listed(ctx, list(ctx.fqans)) is False
