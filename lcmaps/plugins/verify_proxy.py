"""lcmaps_verify_proxy.mod: verify the proxy chain the request came with.

Options are matched like C (case-insensitive prefixes): ``-certdir``/
``-cadir``/``-capath``/``--capath DIR`` (must exist; default
``$X509_CERT_DIR`` then /etc/grid-security/certificates), the limited-proxy
options, ``--max-proxy-level-ttl=N|L PERIOD``, ``--max-voms-ttl PERIOD``
(``[DD]d-HH:MM`` or ``H:MM``), ``--only-enforce-lifetime-checks`` and the
two private-key options (accepted; a proxy file's key is not needed here).
The checks themselves are :func:`credentials.credential.verify_credential`'s
(its chain part, :func:`~credentials.credential.check_chain`).
Without a certificate chain (DN+FQAN requests) the plugin fails, as in C.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING

from lcmaps.plugin_api import Plugin, PluginInitError, RunContext
from sitefiles.plugins import ArgWalker

if TYPE_CHECKING:
    from credentials.proxy_chain import ProxyPolicy

NAME = "lcmaps_verify_proxy"
LEAF_PROXY = 2000
_PERIOD = re.compile(r"(?:(\d{0,2})[dD]-(\d\d)|(\d{1,2})):(\d\d)")


def parse_period(text: str) -> timedelta | None:
    """C's ``lcmaps_lifetime_ttl_char2time_t``; None when it would return <= 0."""
    m = _PERIOD.fullmatch(text)
    if m is None:
        return None
    days = int(m.group(1) or 0)
    hours = int(m.group(2) or m.group(3) or 0)
    seconds = int(m.group(4)) * 60 + hours * 3600 + days * 86400
    return timedelta(seconds=seconds) if seconds > 0 else None


class VerifyProxy(Plugin):
    memo_safe = True
    reads_credential = True
    name = "verify_proxy"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.certdir: str | None = None
        self.allow_limited = True
        self.require_limited = False
        self.only_lifetime = False
        self.level_ttl: dict[int | str, timedelta] = {}
        self.voms_ttl: timedelta | None = None
        self._made: ProxyPolicy | None = None
        args = ArgWalker(argv, NAME)
        for a in args:
            low = a.lower()
            if low.startswith(("-cadir", "-certdir", "-capath", "--capath")) and args.has_value():
                d = args.value(allow_empty=True)
                if d and not os.path.exists(d):
                    raise PluginInitError(f"{NAME}: CA directory '{d}' does not exist")
                self.certdir = d or self.certdir
            elif low.startswith(("--discard_private_key_absence",
                                 "--never_discard_private_key_absence")):
                pass
            elif low.startswith("--allow-limited-proxy"):
                self.allow_limited = True
            elif low.startswith("--disallow-limited-proxy"):
                self.allow_limited = False
            elif low.startswith("--require-limited-proxy"):
                self.require_limited = True
            elif low.startswith("--only-enforce-lifetime-checks"):
                self.only_lifetime = True
            elif low.startswith("--max-voms-ttl") and args.has_value():
                self.voms_ttl = self._period(args.value(allow_empty=True), a)
            elif low.startswith(("--max-proxy-level-ttl=", "--max-proxy-level-ttl@")) and (
                args.has_value()
            ):
                self.level_ttl[self._level(a)] = self._period(args.value(allow_empty=True), a)
            else:
                args.unknown()
        if self.certdir is None:
            self.certdir = os.environ.get("X509_CERT_DIR") or "/etc/grid-security/certificates"
        if not self.allow_limited and self.require_limited:
            raise PluginInitError(f"{NAME}: limited proxies both required and disallowed")

    @staticmethod
    def _level(opt: str) -> int | str:
        """The proxy level of ``--max-proxy-level-ttl=N`` (``L`` is the leaf), as C reads it."""
        lvl = opt[22:]
        if len(opt) == 23 and lvl in ("l", "L"):
            return "L"
        m = re.match(r"\s*[+-]?\d+", lvl)
        level = int(m.group(0)) if m else 0
        if not 0 <= level < LEAF_PROXY:
            raise PluginInitError(f"{NAME}: bad proxy level in '{opt}'")
        return level

    @staticmethod
    def _period(text: str, opt: str) -> timedelta:
        t = parse_period(text) if text else None
        if t is None:
            raise PluginInitError(f"{NAME}: bad period '{text}' for {opt}, use e.g. 2d-13:37")
        return t

    def run(self, ctx: RunContext) -> bool:
        cred = ctx.request.credential
        if cred is None:
            return ctx.fail(f"{NAME}: no certificate chain to verify")
        from credentials.credential import check_chain
        from credentials.errors import CredentialError

        policy = self._policy()
        now = ctx.request.now or datetime.now(UTC)
        assert self.certdir is not None
        try:
            check_chain(cred, self.certdir, now=now, policy=policy)
            if self.voms_ttl is not None:
                policy.check_voms_lifetime(cred.voms, now=now)
        except CredentialError as exc:
            return ctx.fail(f"{NAME}: {exc.reason}")
        return True

    def _policy(self) -> ProxyPolicy:
        """The options as a policy, made on first use (the import waits for a run)."""
        if self._made is None:
            from credentials.proxy_chain import ProxyPolicy

            self._made = ProxyPolicy(
                allow_limited=self.allow_limited,
                require_limited=self.require_limited,
                max_level_ttl=dict(self.level_ttl),
                max_voms_ttl=self.voms_ttl,
                only_lifetime_checks=self.only_lifetime,
            )
        return self._made
