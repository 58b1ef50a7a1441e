"""Shared by userban and userallow: a DN list in grid-mapfile syntax.

The file is parsed by :mod:`sitefiles.mapfile`, the exact C grid-mapfile
parser: quoted DNs (``\\`` kept verbatim inside), ``#`` comments, blank
lines, lines split at ``\\n``. Unlike the C parser, a ``\\r`` left at the end of
a key by a CRLF file is dropped, so a DOS-edited ban list still bans.
Anything after the DN on a line is ignored; an UNQUOTED DN stops at its
first blank, so ``/CN=John Doe`` lists ``/CN=John`` (a warning is logged).

A list that cannot be read or parsed at decision time is a fault, not an
answer: :func:`lookup` raises :class:`~lcas.plugin_api.LcasUnavailable`. As in
C, a match on a line before the broken one still counts.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence

from lcas.plugin_api import LcasUnavailable, PluginInitError, Request, resolve_path
from safetext import one_line
from sitefiles import mapfile
from sitefiles.cglob import glob_match

log = logging.getLogger("lcas")


class DnList:
    """One DN list file, re-read when it changes (mapfile's cache)."""

    def __init__(self, plugin: str, path: str, *, wildcards: bool) -> None:
        self.plugin, self.path, self.wildcards = plugin, path, wildcards
        try:
            parsed = mapfile.load(path)
        except mapfile.MapfileError as exc:
            raise PluginInitError(f"{plugin}: {exc}") from None
        if parsed.error is not None:
            raise PluginInitError(f"{plugin}: {parsed.error}")
        for line in parsed.lines:
            if [m for m in line.mappings if m != "\r"]:
                log.warning("%s: %s:%d: text after the DN '%s' is ignored (quote DNs "
                            "that contain blanks)", plugin, one_line(path), line.lineno,
                            one_line(line.key))

    def contains(self, dn: str) -> bool:
        """True if a line matches ``dn``; raises MapfileError if the file went bad."""
        parsed = mapfile.load(self.path)
        for line in parsed.lines:
            key = line.key[:-1] if line.key.endswith("\r") else line.key
            if glob_match(key, dn) if self.wildcards else key == dn:
                return True
        if parsed.error is not None:
            raise parsed.error
        return False


def parse_list_args(
    argv: Sequence[str], plugin: str, db_dir: str, *, flag: str
) -> tuple[str | None, bool]:
    """``[flag] [file]`` in any order -> (resolved file or None, flag given)."""
    path: str | None = None
    seen = False
    for arg in argv[1:]:
        if arg == flag:
            seen = True
        elif arg.startswith("-"):
            raise PluginInitError(f"{plugin}: unknown argument '{arg}'")
        elif path is None:
            path = resolve_path(arg, db_dir)
        else:
            raise PluginInitError(f"{plugin}: more than one file given ('{arg}')")
    return path, seen


def lookup(dnlist: DnList, request: Request) -> bool:
    """Membership of the request's DN; LcasUnavailable if the list is unusable."""
    try:
        return dnlist.contains(request.dn)
    except mapfile.MapfileError as exc:  # the message names the file
        raise LcasUnavailable(str(exc)) from None
