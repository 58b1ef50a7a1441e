"""lcas_userallow.mod: admit only users whose DN is listed.

``pluginargs="[<file>] [-wildcard]"``. The C plugin ignored its argument
and always read the grid-mapfile; here the argument is honoured, and only
without one do we fall back to the grid-mapfile like the original
(``$GRIDMAP``, ``$GLOBUSMAP``, ``$globusmap``, ``$GlobusMap``, else
``/etc/grid-security/grid-mapfile``). Only the DN column counts, mappings
are ignored. Keys must equal the DN exactly (case-sensitive) unless
``-wildcard`` is given: an allow list errs on the narrow side. A list that
cannot be read or parsed at decision time raises LcasUnavailable
(Indeterminate, never a deny), except for a DN listed before the broken line.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcas.plugin_api import Plugin, Request, Verdict
from lcas.plugins._dnlist import DnList, lookup, parse_list_args
from sitefiles.mapfile import default_gridmapfile


class UserAllow(Plugin):
    name = "userallow"

    def __init__(self, argv: Sequence[str], *, db_dir: str = ".") -> None:
        super().__init__(argv, db_dir=db_dir)
        path, wildcard = parse_list_args(argv, self.name, db_dir, flag="-wildcard")
        self.allowlist = DnList(self.name, path or default_gridmapfile(), wildcards=wildcard)

    def authorize(self, request: Request) -> Verdict:
        if not lookup(self.allowlist, request):
            return Verdict.deny(f"user is not in the allowed list ({self.allowlist.path})")
        return Verdict.allow()
