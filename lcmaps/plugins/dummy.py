"""lcmaps_dummy_good / lcmaps_dummy_bad / lcmaps_voms: the no-op plugins.

``dummy_good`` is the usual terminal state of a policy (C has no bare
one-plugin rule). Like C it matches its options case-insensitively, skips
an option with no (or an empty) value and ignores arguments it does not
know (logged), so a site's existing file keeps working; it may add a uid,
a primary and a secondary gid (and then a ``dummy%20U%20G`` pool index).
In verification mode it only succeeds, as in C.
"""

from __future__ import annotations

from collections.abc import Sequence

from lcmaps import accounts
from lcmaps.plugin_api import Plugin, PluginInitError, RunContext


def _digits(value: str, opt: str) -> int:
    if not value.isascii() or not value.isdigit():
        raise PluginInitError(f"lcmaps_dummy_good: {opt} needs a number >= 0, got '{value}'")
    return int(value)


class DummyGood(Plugin):
    memo_safe = True
    name = "dummy_good"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.uid: int | None = None
        self.gid: int | None = None
        self.sgid: int | None = None
        args = list(argv[1:])
        for i, raw in enumerate(args):
            opt = raw.lower()
            value = args[i + 1] if i + 1 < len(args) else None
            known = opt in (
                "--dummy-uid", "--dummy-gid", "--dummy-sec-gid",
                "--dummy-username", "--dummy-group", "--dummy-sec-group",
            )
            if not known:
                continue  # C skips unknown words (and the values it already used)
            if not value:
                continue
            try:
                if opt == "--dummy-uid":
                    self.uid = _digits(value, raw)
                elif opt == "--dummy-gid":
                    self.gid = _digits(value, raw)
                elif opt == "--dummy-sec-gid":
                    self.sgid = _digits(value, raw)
                elif opt == "--dummy-username":
                    self.uid = accounts.account(value).uid
                elif opt == "--dummy-group":
                    self.gid = accounts.gid_of_group(value)
                else:
                    self.sgid = accounts.gid_of_group(value)
            except accounts.UnknownAccount:
                reason = f"lcmaps_dummy_good: no account or group '{value}'"
                raise PluginInitError(reason) from None

    def run(self, ctx: RunContext) -> bool:
        if self.uid is not None:
            ctx.data.add_uid(self.uid)
        if self.gid is not None:
            ctx.data.add_pgid(self.gid)
        if self.sgid is not None:
            ctx.data.add_sgid(self.sgid)
        if self.uid is not None and self.gid is not None:
            ctx.data.set_poolindex(f"dummy%20{self.uid}%20{self.gid}")
        return True

    def verify(self, ctx: RunContext) -> bool:
        return True


class DummyBad(Plugin):
    """Always fails; C ignores its arguments."""

    name = "dummy_bad"

    def run(self, ctx: RunContext) -> bool:
        return ctx.fail("lcmaps_dummy_bad: always fails")


class VomsNoop(Plugin):
    """lcmaps_voms.mod: deprecated (VOMS parsing moved into the core); succeeds."""

    memo_safe = True
    name = "voms"

    def run(self, ctx: RunContext) -> bool:
        return True
