"""lcas_userban.mod: refuse users whose DN is in a ban file.

``pluginargs="<banfile> [-no_wildcard]"``. Ban-file lines use grid-mapfile
syntax (see :mod:`lcas.plugins._dnlist`). Keys are matched like LCMAPS'
ban_dn: shell wildcards (``*`` also crosses ``/``, ``?``, ``[...]``) unless
``-no_wildcard`` is given, in which case a key must equal the DN exactly.
Matching is case-sensitive. A ban file that cannot be read or parsed at
decision time raises LcasUnavailable (Indeterminate, never a deny), except
for a DN listed before the broken line, which is still banned.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcas.plugin_api import Plugin, PluginInitError, Request, Verdict
from lcas.plugins._dnlist import DnList, lookup, parse_list_args


class UserBan(Plugin):
    name = "userban"

    def __init__(self, argv: Sequence[str], *, db_dir: str = ".") -> None:
        super().__init__(argv, db_dir=db_dir)
        path, no_wildcard = parse_list_args(argv, self.name, db_dir, flag="-no_wildcard")
        if path is None:
            raise PluginInitError(f"{self.name}: no ban file given")
        self.banlist = DnList(self.name, path, wildcards=not no_wildcard)

    def authorize(self, request: Request) -> Verdict:
        if lookup(self.banlist, request):
            return Verdict.deny(f"user is banned ({self.banlist.path})")
        return Verdict.allow()
