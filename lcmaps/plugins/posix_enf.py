"""lcmaps_posix_enf.mod: the account count limits, without the identity switch.

C's plugin calls setregid/setgroups/setreuid on the process running LCMAPS.
Here LCMAPS runs inside the SCAS server (or lcmaps-run), which must never
become the mapped user; the switch belongs to glexec's setuid helper, which
applies exactly the mapping this engine returns. So this plugin checks what
C checks before switching (at most ``-maxuid`` uids, ``-maxpgid`` primary
and ``-maxsgid`` secondary gids; at least one uid and one primary gid; none
of them 0 unless running as root is irrelevant here) and records the
decision; it succeeds or fails exactly where C would, in both modes.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcmaps.plugin_api import Plugin, PluginInitError, RunContext, log
from sitefiles.plugins import ArgWalker, parse_yes_no

NAME = "lcmaps_posix_enf"


class PosixEnf(Plugin):
    name = "posix_enf"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.maxuid = -1
        self.maxpgid = -1
        self.maxsgid = -1
        args = ArgWalker(argv, NAME)
        for opt in args:
            if opt in ("-maxuid", "-MAXUID", "-maxpgid", "-MAXPGID", "-maxsgid", "-MAXSGID"):
                nxt = args.value("a number", allow_empty=True)
                if not nxt.isascii() or not nxt.isdigit():
                    raise PluginInitError(f"{NAME}: {opt} needs a number, got '{nxt}'")
                setattr(self, opt.lower().lstrip("-"), int(nxt))
            elif opt in ("-set_only_euid", "-set_only_egid"):
                # checked like C, then unused: the identity switch is glexec's helper's
                parse_yes_no(args.value('"yes" or "no"', allow_empty=True), NAME, opt)
            else:
                args.unknown()

    def run(self, ctx: RunContext) -> bool:
        d = ctx.data
        for what, items, limit in (("uids", d.uids, self.maxuid), ("primary gids", d.pgids,
                                   self.maxpgid), ("secondary gids", d.sgids, self.maxsgid)):
            if limit >= 0 and len(items) > limit:
                return ctx.fail(f"{NAME}: {len(items)} {what}, at most {limit} allowed")
        if not d.uids:
            return ctx.fail(f"{NAME}: no uid to enforce")
        if not d.pgids:
            return ctx.fail(f"{NAME}: no primary gid to enforce")
        log.info("posix_enf: would switch to uid %d gid %d groups %s (done by glexec's helper)",
                 d.uids[0], d.pgids[0], d.sgids or [d.pgids[0]])
        return True
