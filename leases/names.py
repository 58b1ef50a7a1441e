"""Gridmapdir lease names and pool-membership rules, byte-compatible with C LCMAPS.

Kept apart from the store so other lease stores (and admin tools) name
leases exactly as ``lcmaps_gridmapdir.c`` does; see ``leases.gridmapdir``
for the compatibility decision on non-ASCII bytes.
"""

from __future__ import annotations

from collections.abc import Iterable
from functools import lru_cache

__all__ = [
    "decode_lease",
    "encode_lease",
    "in_pool",
    "is_candidate_entry",
    "lease_name",
    "lease_string",
]

def _as_bytes(value: str | bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


@lru_cache(maxsize=16384)
def encode_lease(lease: str | bytes, *, c_signed_char: bool = True) -> str:
    """C ``urlencode`` of a lease string (compatibility decision (b)).

    A pure function on every lease lookup, so it is memoised: the byte loop
    cost more than the file system calls of a held lease.

    ASCII alnum -> lower case; ``\\001`` -> ``:`` followed by the rest copied
    raw; any other byte -> ``%xx`` (lower-case hex).  Bytes >= 0x80 go through
    C's signed-char ``snprintf("%%%02x")`` into a zeroed buffer of 3n+1 bytes
    that advances only 3 positions, emulated exactly unless
    ``c_signed_char=False``.
    """
    raw = _as_bytes(lease)
    buf = bytearray(3 * len(raw) + 1)
    pos = 0
    for i, c in enumerate(raw):
        if c < 0x80 and chr(c).isalnum():
            buf[pos] = ord(chr(c).lower())
            pos += 1
        elif c == 1:
            tail = raw[i + 1 :]
            buf[pos] = ord(":")
            buf[pos + 1 : pos + 1 + len(tail)] = tail
            pos += 1 + len(tail)
            break
        else:
            text = b"%%%02x" % c if c < 0x80 or not c_signed_char else b"%%ffffff%02x" % c
            room = len(buf) - pos
            part = text[: room - 1]
            buf[pos : pos + len(part)] = part
            buf[pos + len(part)] = 0
            pos += 3
    out = bytes(buf).split(b"\0", 1)[0]
    return out.decode("utf-8", "surrogateescape")


def lease_string(
    identity: str | bytes, groups: Iterable[str] = (), mapcounter: int | None = None
) -> bytes:
    """The raw lease string: identity [+ ``\\001`` groups joined by ``:``] [+ mapcount].

    ``groups`` are the voms_poolaccount group NAMES (primary first, then the
    secondaries sorted by gid); none -> plain identity.  A mapcounter >= 1
    appends ``\\001mapcount=%04d`` (``:mapcount=`` when ``\\001`` is present).
    """
    out = _as_bytes(identity)
    names = [_as_bytes(g) for g in groups]
    if names:
        out += b"\001" + b":".join(names)
    if mapcounter is not None and mapcounter >= 1:
        out += (b":" if b"\001" in out else b"\001") + b"mapcount=%04d" % mapcounter
    return out


def lease_name(
    identity: str | bytes, groups: Iterable[str] = (), mapcounter: int | None = None
) -> str:
    """``encode_lease(lease_string(...))``: the file name (and POOL_INDEX)."""
    return encode_lease(lease_string(identity, groups, mapcounter))


def in_pool(name: str, pool: str, strict: bool = True) -> bool:
    """Is account ``name`` in pool ``pool`` (the ``.pool`` mapping without the dot)?

    Strict (the C default): the prefix followed by one or more ASCII digits only.
    """
    if not name.startswith(pool):
        return False
    if not strict:
        return True
    rest = name[len(pool) :]
    return rest != "" and all("0" <= ch <= "9" for ch in rest)


def is_candidate_entry(name: str) -> bool:
    """Allocation skip rules: not ``%...``/``.…``, not ``root``, no ``~``."""
    return not (name[:1] in ("%", ".", "") or name == "root" or "~" in name)


def decode_lease(name: str) -> tuple[str, tuple[str, ...], int | None]:
    """A lease name read back: (identity, group names, mapcount), for admin listings.

    Only as far as the encoding allows: C lower-cased the identity's letters, so
    ``/DC=org/CN=Alice`` comes back as ``/dc=org/cn=alice``; a byte >= 0x80 (C's
    ``%ff`` quirk) comes back as U+FFFD. Compare identities encoded, never decoded.
    """
    head, sep, tail = name.partition(":")
    raw = bytearray()
    i = 0
    while i < len(head):
        hexpart = head[i + 1 : i + 3]
        if head[i] == "%" and len(hexpart) == 2 and all(c in _HEX for c in hexpart):
            raw.append(int(hexpart, 16))
            i += 3
        else:
            raw += head[i].encode("utf-8", "surrogateescape")
            i += 1
    groups = [g for g in tail.split(":") if g] if sep else []
    mapcount = None
    if groups and groups[-1].startswith("mapcount=") and groups[-1][9:].isdigit():
        mapcount = int(groups.pop()[9:])
    return raw.decode("utf-8", "replace"), tuple(groups), mapcount


_HEX = frozenset("0123456789abcdefABCDEF")
