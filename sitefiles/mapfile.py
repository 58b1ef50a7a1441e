"""grid-mapfile, groupmapfile and ban-file parsing and matching.

One parser for all three, byte-compatible with the C LCMAPS plugins
(``lcmaps_gridmapfile.c``), because sites keep the files they already have:

* lines are split at ``\\n`` only, so a ``\\r`` stays part of the line (and of
  the last mapping: ``ojohn\\r`` is not ``ojohn``);
* leading blanks/tabs are skipped; an empty line or one starting with ``#`` is
  ignored;
* the key (DN or FQAN) is either ``"quoted"`` up to the next ``"`` not
  preceded by ``\\``, or unquoted up to the first blank/tab.  A backslash
  protects the next character while scanning but is KEPT in the key
  (``"/CN=Quote\\"d"`` matches the DN ``/CN=Quote\\"d`` only);
* after the key, blanks/tabs/commas are skipped, the text is cut at the first
  unescaped ``#`` and the rest is split into mappings at runs of ``,``, blank
  and tab; in mappings ``\\x`` becomes ``x``;
* a ``\\`` at the end of a line or an unbalanced quote is a parse error,
  reported as ``file:line: reason``.  Like C, the error is raised when a
  lookup reaches the broken line (a match on an earlier line still wins).

Matching is case-sensitive: ``strcmp`` without wildcards, otherwise glibc
``fnmatch(key, value, FNM_NOESCAPE)`` (``*`` crosses ``/``, ``\\`` is a literal,
``[...]``/``[!...]``/``[^...]`` classes).  The first line whose key matches AND
that has an acceptable mapping wins; lines without one are skipped.

Parsed files are cached per path and re-read when (inode, size, mtime, ctime)
change, so a server does not re-parse on every request.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

from sitefiles.cglob import glob_match

__all__ = [
    "Mapfile",
    "MapfileError",
    "MapfileLine",
    "MapfileMissing",
    "MapfileParseError",
    "Match",
    "clear_cache",
    "find_mapping",
    "glob_match",
    "key_matches",
    "load",
    "parse",
]

Kind = Literal["pool", "local", "any"]

_BLANKS = b" \t"


GRID_SECURITY = "/etc/grid-security"


def default_gridmapfile() -> str:
    """``$GRIDMAP`` (or the GLOBUSMAP spellings C also reads), else the system grid-mapfile."""
    for var in ("GRIDMAP", "GLOBUSMAP", "globusmap", "GlobusMap"):
        value = os.environ.get(var)
        if value:
            return value
    return f"{GRID_SECURITY}/grid-mapfile"



class MapfileError(Exception):
    """Base class: the mapfile cannot be used.  The message is one line."""


class MapfileMissing(MapfileError):
    """The configured file does not exist or cannot be read."""


class MapfileParseError(MapfileError):
    """A line is malformed; ``str()`` is ``file:line: reason``."""

    def __init__(self, filename: str, lineno: int, reason: str) -> None:
        self.filename = filename
        self.lineno = lineno
        self.reason = reason
        super().__init__(f"{filename}:{lineno}: {reason}")


@dataclass(frozen=True)
class MapfileLine:
    """One significant line: the key as written (escapes kept) and its mappings."""

    lineno: int
    key: str
    mappings: tuple[str, ...]


@dataclass(frozen=True)
class Match:
    """Result of a lookup: the line that matched and the mapping chosen from it.

    ``mapping`` is ``None`` only for key-only lookups (ban files).  For a pool
    mapping (``.opool``) ``pool`` is the prefix without the dot.
    """

    line: MapfileLine
    mapping: str | None

    @property
    def is_pool(self) -> bool:
        return self.mapping is not None and self.mapping.startswith(".")

    @property
    def pool(self) -> str | None:
        return self.mapping[1:] if self.is_pool and self.mapping is not None else None


def _decode(raw: bytes) -> str:
    # surrogateescape keeps every byte: the C parser works on bytes.
    return raw.decode("utf-8", "surrogateescape")


def _parse_line(line: bytes, filename: str, lineno: int) -> MapfileLine | None:
    """Parse one line (without its ``\\n``); ``None`` for blank/comment lines."""
    i, n = 0, len(line)
    while i < n and line[i] in _BLANKS:
        i += 1
    if i == n or line[i] == ord("#"):
        return None
    if line[i] == ord('"'):
        start = i + 1
        j = start
        while True:
            if j >= n:
                raise MapfileParseError(filename, lineno, "unbalanced quote in key")
            c = line[j]
            if c == ord("\\"):
                if j + 1 >= n:
                    raise MapfileParseError(filename, lineno, "backslash at end of line")
                j += 2
                continue
            if c == ord('"'):
                break
            j += 1
        key = line[start:j]
        i = j + 1
    else:
        start = i
        j = i
        while j < n and line[j] not in _BLANKS:
            if line[j] == ord("\\"):
                if j + 1 >= n:
                    raise MapfileParseError(filename, lineno, "backslash at end of line")
                j += 2
                continue
            j += 1
        key = line[start:j]
        i = j
    while i < n and line[i] in b" \t,":
        i += 1
    mappings: list[bytes] = []
    cur = bytearray()
    have = False
    while i < n:
        c = line[i]
        if c == ord("\\"):
            if i + 1 >= n:
                raise MapfileParseError(filename, lineno, "backslash at end of line")
            cur.append(line[i + 1])
            have = True
            i += 2
            continue
        if c == ord("#"):
            break
        if c in b" \t,":
            if have:
                mappings.append(bytes(cur))
                cur.clear()
                have = False
        else:
            cur.append(c)
            have = True
        i += 1
    if have:
        mappings.append(bytes(cur))
    return MapfileLine(lineno, _decode(key), tuple(_decode(m) for m in mappings))


@dataclass(frozen=True)
class Mapfile:
    """A parsed file: its good lines and, if any, the first parse error.

    Lines after a parse error are not kept; a lookup that gets past the last
    good line without a match raises the error (as the C parser does).
    """

    filename: str
    lines: tuple[MapfileLine, ...]
    error: MapfileParseError | None = None

    def _candidates(self, value: str, wildcards: bool) -> Iterator[MapfileLine]:
        for line in self.lines:
            if _key_matches(line.key, value, wildcards):
                yield line
        if self.error is not None:
            raise self.error

    def find(
        self,
        value: str,
        *,
        wildcards: bool = True,
        kind: Kind = "any",
        requested: str | None = None,
    ) -> Match | None:
        """First (line, mapping) whose key matches ``value`` and whose mapping is acceptable.

        ``kind``: ``"pool"`` accepts mappings starting with ``.``, ``"local"``
        the others, ``"any"`` everything.  ``requested`` (a user or group name)
        replaces the filter by exact equality.  Raises MapfileParseError when
        the scan reaches a broken line before a match.
        """
        for line in self._candidates(value, wildcards):
            for mapping in line.mappings:
                if _acceptable(mapping, kind, requested):
                    return Match(line, mapping)
        return None

    def find_key(self, value: str, *, wildcards: bool = True) -> Match | None:
        """First line whose key matches, mappings ignored (ban files)."""
        for line in self._candidates(value, wildcards):
            return Match(line, None)
        return None


def _acceptable(mapping: str, kind: Kind, requested: str | None) -> bool:
    if requested is not None:
        return mapping == requested
    if kind == "pool":
        return mapping.startswith(".")
    if kind == "local":
        return not mapping.startswith(".")
    return True


def parse(data: bytes, filename: str = "<mapfile>") -> Mapfile:
    """Parse file contents (bytes, as on disk)."""
    lines: list[MapfileLine] = []
    for lineno, raw in enumerate(data.split(b"\n"), start=1):
        try:
            parsed = _parse_line(raw, filename, lineno)
        except MapfileParseError as exc:
            return Mapfile(filename, tuple(lines), exc)
        if parsed is not None:
            lines.append(parsed)
    return Mapfile(filename, tuple(lines))


# --- cache ---------------------------------------------------------------

_cache: dict[str, tuple[tuple[int, int, int, int, int], Mapfile]] = {}
_cache_lock = threading.Lock()


def _signature(st: os.stat_result) -> tuple[int, int, int, int, int]:
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def load(path: str | os.PathLike[str]) -> Mapfile:
    """Parsed contents of ``path``, from the cache unless the file changed."""
    name = os.fspath(path)
    try:
        st = os.stat(name)
    except OSError as exc:
        raise MapfileMissing(f"{name}: cannot stat: {exc.strerror}") from None
    sig = _signature(st)
    with _cache_lock:
        hit = _cache.get(name)
    if hit is not None and hit[0] == sig:
        return hit[1]
    try:
        with open(name, "rb") as fh:
            st = os.fstat(fh.fileno())
            data = fh.read()
    except IsADirectoryError:
        raise MapfileMissing(f"{name}: is a directory") from None
    except OSError as exc:
        raise MapfileMissing(f"{name}: cannot read: {exc.strerror}") from None
    parsed = parse(data, name)
    with _cache_lock:
        _cache[name] = (_signature(st), parsed)
    return parsed


def clear_cache() -> None:
    with _cache_lock:
        _cache.clear()


def find_mapping(
    path: str | os.PathLike[str],
    value: str,
    *,
    wildcards: bool = True,
    kind: Kind = "any",
    requested: str | None = None,
) -> Match | None:
    """``load(path).find(...)``: the usual one-call lookup for plugins."""
    return load(path).find(value, wildcards=wildcards, kind=kind, requested=requested)


def key_matches(path: str | os.PathLike[str], value: str, *, wildcards: bool = True) -> bool:
    """True if any line's key matches ``value`` (ban_dn / ban_fqan)."""
    return load(path).find_key(value, wildcards=wildcards) is not None


def _key_matches(key: str, value: str, wildcards: bool) -> bool:
    if not wildcards:
        return key == value
    return glob_match(key, value)
