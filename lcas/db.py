"""lcas.db: the list of LCAS plugins, one per line.

Grammar (checked against liblcas 1.3.19 through the oracle)::

    # comment
    pluginname="lcas_userban.mod", pluginargs="ban_users.db"
    pluginargs = "-authfile x" , pluginname = /usr/lib/lcas/lcas_voms.mod

* a line is ``var=value`` pairs separated by ``,``; blanks and tabs are
  allowed around ``=`` and ``,``; empty pairs (``,,`` or a trailing ``,``)
  are ignored; pair order is free; a trailing ``\\r`` is dropped;
* a value is either ``"double quoted"`` (needed for a ``,`` or a blank) or
  runs to the next blank, tab or ``,`` (an unquoted ``#`` is part of it);
* blank lines and lines whose first non-blank character is ``#`` are
  comments; after a complete pair, `` # text`` is a trailing comment.

Where C is stricter we read the line as meant (C then denies everybody):
a CRLF ``\\r`` is dropped (C keeps it in an unquoted last value, and
reads a blank CRLF line or ``,\\r`` as a pair without ``=``), and ``#``
after a complete pair is a comment (C ignores text after a value up to the
next ``,`` and refuses a ``#`` after a comma). Pinned by
tests/compat/test_lcas_compat.py.

Where C LCAS is silently lax we refuse with ``file:line: reason`` instead,
because a half-read authorization list must never run: an unclosed quote
(C also refuses), text after a value (C drops it, so ``pluginargs=-a b``
lost ``b``), a variable other than ``pluginname``/``pluginargs`` (C ignores
it), a repeated variable, a missing or empty ``pluginname`` (C reads
uninitialised memory or skips the line), and ``\\"`` inside a quoted value
(C loops forever on it).

Plugin names map onto entry points of group ``scas_stack.lcas_plugins``:
the basename (so an absolute path works too) minus ``.mod``/``.so`` and a
leading ``lcas_`` or ``liblcas_``: ``/usr/lib/lcas/lcas_userban.mod`` and
``lcas_userban.mod`` both select ``userban``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

__all__ = ["DbEntry", "LcasConfigError", "LcasDbError", "entry_point_name", "load_db",
           "parse_db"]

VARIABLES = ("pluginname", "pluginargs")
MAX_DB_BYTES = 1024 * 1024


class LcasConfigError(Exception):
    """lcas.db cannot be used at all; the message is one line."""


class LcasDbError(LcasConfigError):
    """A malformed line: ``str()`` is ``file:line: reason``."""

    def __init__(self, filename: str, lineno: int, reason: str) -> None:
        self.filename, self.lineno, self.reason = filename, lineno, reason
        super().__init__(f"{filename}:{lineno}: {reason}")


@dataclass(frozen=True)
class DbEntry:
    """One plugin line: the name as written and its argument string."""

    lineno: int
    pluginname: str
    pluginargs: str = ""

    @property
    def argv(self) -> tuple[str, ...]:
        """What C passes to ``plugin_initialize``: the name, then the args split on blanks."""
        return (self.pluginname, *self.pluginargs.split())

    @property
    def entry_point(self) -> str:
        return entry_point_name(self.pluginname)


def entry_point_name(pluginname: str) -> str:
    """``/usr/lib/lcas/lcas_userban.mod`` -> ``userban``."""
    base = os.path.basename(pluginname)
    for suffix in (".mod", ".so"):
        if base.endswith(suffix):
            base = base[: -len(suffix)]
            break
    for prefix in ("liblcas_", "lcas_"):
        if base.startswith(prefix):
            base = base[len(prefix) :]
            break
    return base


_BLANKS = " \t"


def _parse_line(line: str, filename: str, lineno: int) -> DbEntry | None:
    def fail(reason: str) -> LcasDbError:
        return LcasDbError(filename, lineno, reason)

    n = len(line)
    i = 0
    while i < n and line[i] in _BLANKS:
        i += 1
    if i == n or line[i] == "#":
        return None
    values: dict[str, str] = {}
    while i < n:
        while i < n and line[i] in _BLANKS + ",":
            i += 1
        if i == n or line[i] == "#":
            break
        start = i
        while i < n and line[i] not in _BLANKS + "=,#\"":
            i += 1
        var = line[start:i]
        while i < n and line[i] in _BLANKS:
            i += 1
        if not var:
            raise fail(f"expected a variable name, found {line[i]!r}")
        if i == n or line[i] != "=":
            raise fail(f"missing '=' after '{var}'")
        if var not in VARIABLES:
            raise fail(f"unknown variable '{var}' (expected pluginname or pluginargs)")
        if var in values:
            raise fail(f"'{var}' given twice")
        i += 1
        while i < n and line[i] in _BLANKS:
            i += 1
        if i < n and line[i] == '"':
            end = line.find('"', i + 1)
            if end == -1:
                raise fail(f"missing closing quote in the value of '{var}'")
            if line[end - 1] == "\\":
                raise fail(f"escaped quote in the value of '{var}' is not supported")
            value = line[i + 1 : end]
            i = end + 1
        else:
            start = i
            while i < n and line[i] not in _BLANKS + ',"':
                i += 1
            value = line[start:i]
            if i < n and line[i] == '"':
                raise fail(f"stray quote in the value of '{var}'")
        values[var] = value
        while i < n and line[i] in _BLANKS:
            i += 1
        if i < n and line[i] not in ",#":
            raise fail(f"unexpected text after the value of '{var}' (quote values with blanks)")
    if "pluginname" not in values:
        raise fail("no pluginname on this line")
    if not values["pluginname"]:
        raise fail("empty pluginname")
    return DbEntry(lineno, values["pluginname"], values.get("pluginargs", ""))


def parse_db(data: bytes | str, filename: str = "lcas.db") -> list[DbEntry]:
    """All plugin entries in file order; raises :class:`LcasDbError` on the first bad line."""
    if isinstance(data, bytes):
        data = data.decode("utf-8", "surrogateescape")
    entries = []
    for lineno, raw in enumerate(data.split("\n"), start=1):
        if raw.endswith("\r"):
            raw = raw[:-1]
        if "\0" in raw:
            raise LcasDbError(filename, lineno, "NUL byte in line")
        entry = _parse_line(raw, filename, lineno)
        if entry is not None:
            entries.append(entry)
    return entries


def load_db(path: str | os.PathLike[str]) -> list[DbEntry]:
    """Read and parse lcas.db; a missing or unreadable file is an :class:`LcasConfigError`."""
    name = os.fspath(path)
    try:
        with open(name, "rb") as fh:
            data = fh.read(MAX_DB_BYTES + 1)
    except OSError as exc:
        raise LcasConfigError(f"{name}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_DB_BYTES:
        raise LcasConfigError(f"{name}: larger than {MAX_DB_BYTES} bytes")
    return parse_db(data, name)
