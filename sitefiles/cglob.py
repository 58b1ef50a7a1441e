"""glibc ``fnmatch(pattern, value, FNM_NOESCAPE)`` in the C locale, as a cached regex.

The C plugins match grid-mapfile keys with exactly this call, so ``*`` also
matches ``/`` (no FNM_PATHNAME), ``\\`` is an ordinary character, ``[!...]``
and ``[^...]`` negate, ``[:class:]``/``[=c=]``/``[.c.]`` work for single
bytes, and matching is per BYTE (``?`` matches one byte of a UTF-8 ``ü``).
Python's ``fnmatch`` differs (no ``^`` negation, other handling of broken
brackets), hence this module.

Malformed brackets follow glibc's own state machine, which depends on the
character being matched: an unterminated ``[`` is a literal ``[`` only if the
character did not already match a member; a range with no end or an unknown
class name fails.  We run that state machine once per byte value when
compiling a bracket (256 cheap runs, cached), then emit an ordinary regex.
"""

from __future__ import annotations

import re
from functools import lru_cache

__all__ = ["glob_match"]

_FAIL, _MATCH, _LITERAL = 0, 1, 2
_LB, _RB, _COLON, _DOT, _EQ, _DASH = b"[]:.=-"
_CHAR_CLASS_MAX_LENGTH = 256


def _collating_symbol(pat: bytes, p: int) -> tuple[int, int] | None:
    """``pat[p]`` is the ``.`` of ``[.x.]``: (index after ``.]``, byte x), or None when the
    symbol is unterminated or not exactly one byte (glibc then fails the match)."""
    start = p
    while True:
        p += 1
        c = _at(pat, p)
        if c == _DOT and _at(pat, p + 1) == _RB:
            return (p + 2, pat[start + 1]) if p - start == 2 else None
        if c == 0:
            return None


def _class_bytes(test: str) -> frozenset[int]:
    return frozenset(c for c in range(128) if getattr(chr(c), test)())


_PRINT = frozenset(range(0x20, 0x7F))
_CLASSES: dict[bytes, frozenset[int]] = {
    b"alpha": _class_bytes("isalpha"),
    b"digit": frozenset(b"0123456789"),
    b"alnum": _class_bytes("isalnum"),
    b"upper": _class_bytes("isupper"),
    b"lower": _class_bytes("islower"),
    b"space": frozenset(b" \t\n\v\f\r"),
    b"blank": frozenset(b" \t"),
    b"punct": frozenset(c for c in _PRINT if not chr(c).isalnum() and c != 0x20),
    b"print": _PRINT,
    b"graph": _PRINT - {0x20},
    b"cntrl": frozenset([*range(0x20), 0x7F]),
    b"xdigit": frozenset(b"0123456789abcdefABCDEF"),
}


def _at(pat: bytes, k: int) -> int:
    return pat[k] if k < len(pat) else 0


def _skip_rest(pat: bytes, start: int, p: int, negate: bool) -> tuple[int, int]:
    """glibc's ``matched:`` loop: skip to the closing ``]`` after a member matched.

    Reaching the end of the pattern makes the ``[`` literal here too (glibc
    2.36 behaviour, checked against libc by the tests).
    """
    while True:
        c = _at(pat, p)
        p += 1
        if c == 0:
            return _LITERAL, start
        if c == _LB and _at(pat, p) == _COLON:
            startp, c1, ok = p, 0, False
            while True:
                p += 1
                c = _at(pat, p)
                c1 += 1
                if c1 == _CHAR_CLASS_MAX_LENGTH:
                    return _FAIL, 0
                if c == _COLON and _at(pat, p + 1) == _RB:
                    ok = True
                    break
                if c < ord("a") or c >= ord("z"):
                    break
            if not ok:
                p = startp
                continue
            p += 2
            c = _at(pat, p)
            p += 1
        elif c == _LB and _at(pat, p) == _EQ:
            p += 1
            if _at(pat, p) == 0:
                return _FAIL, 0
            p += 1
            if _at(pat, p) != _EQ or _at(pat, p + 1) != _RB:
                return _FAIL, 0
            p += 2
            c = _at(pat, p)
            p += 1
        elif c == _LB and _at(pat, p) == _DOT:
            while True:
                p += 1
                c = _at(pat, p)
                if c == 0:
                    return _FAIL, 0
                if c == _DOT and _at(pat, p + 1) == _RB:
                    break
            p += 2
            c = _at(pat, p)
            p += 1
        if c == _RB:
            return (_FAIL, 0) if negate else (_MATCH, p)


def _bracket(pat: bytes, start: int, fn: int) -> tuple[int, int]:
    """Outcome of the bracket whose ``[`` is just before ``start``, for byte ``fn``.

    (_MATCH, index after ``]``), (_FAIL, 0) or (_LITERAL, start): the ``[``
    is an ordinary character and matching goes on right after it.
    """
    p = start
    negate = _at(pat, p) in b"!^"
    if negate:
        p += 1
    c = _at(pat, p)
    p += 1
    while True:
        normal = True
        if c == _LB and _at(pat, p) == _COLON:
            startp, name = p, bytearray()
            while True:
                if len(name) == _CHAR_CLASS_MAX_LENGTH:
                    return _FAIL, 0
                p += 1
                c = _at(pat, p)
                if c == _COLON and _at(pat, p + 1) == _RB:
                    p += 2
                    normal = False
                    break
                if c < ord("a") or c >= ord("z"):
                    p, c = startp, _LB
                    break
                name.append(c)
            if not normal:
                members = _CLASSES.get(bytes(name))
                if members is None:
                    return _FAIL, 0
                if fn in members:
                    return _skip_rest(pat, start, p, negate)
                c = _at(pat, p)
                p += 1
                if c == _RB:
                    break
                continue
        elif c == 0:
            return _LITERAL, start
        cold = c
        if normal and c == _LB and _at(pat, p) == _DOT:
            symbol = _collating_symbol(pat, p)
            if symbol is None:
                return _FAIL, 0
            p, cold = symbol
            is_range = _at(pat, p) == _DASH and _at(pat, p + 1) != 0
            if not is_range and fn == cold:
                return _skip_rest(pat, start, p, negate)
            c = _at(pat, p)
            p += 1
            normal = False
        elif normal and c == _LB and _at(pat, p) == _EQ:
            startp = p
            if _at(pat, p + 1) != 0 and _at(pat, p + 2) == _EQ and _at(pat, p + 3) == _RB:
                cold = pat[p + 1]
                p += 4
                if fn == cold:
                    return _skip_rest(pat, start, p, negate)
                c = _at(pat, p)
                p += 1
                normal = False
            else:
                p, c = startp, _LB
        if normal:
            is_range = _at(pat, p) == _DASH and _at(pat, p + 1) not in (0, _RB)
            if not is_range and c == fn:
                return _skip_rest(pat, start, p, negate)
            cold = c
            c = _at(pat, p)
            p += 1
        if c == _DASH and _at(pat, p) != _RB:
            cend = _at(pat, p)
            p += 1
            if cend == 0:
                return _FAIL, 0
            if cend == _LB and _at(pat, p) == _DOT:
                symbol = _collating_symbol(pat, p)
                if symbol is None:
                    return _FAIL, 0
                p, cend = symbol
            if cold <= fn <= cend:
                return _skip_rest(pat, start, p, negate)
            c = _at(pat, p)
            p += 1
        if c == _RB:
            break
    return (_MATCH, p) if negate else (_FAIL, 0)


def _byteset(members: list[int]) -> bytes:
    if len(members) == 256:
        return b"."
    return b"[" + b"".join(b"\\x%02x" % m for m in members) + b"]"


@lru_cache(maxsize=4096)
def _compile(pattern: bytes) -> re.Pattern[bytes]:
    memo: dict[int, bytes] = {}

    def suffix(k: int) -> bytes:
        if k in memo:
            return memo[k]
        out: list[bytes] = []
        i = k
        while i < len(pattern):
            c = pattern[i]
            if c == ord("*"):
                out.append(b".*")
            elif c == ord("?"):
                out.append(b".")
            elif c == _LB:
                groups: dict[tuple[int, int], list[int]] = {}
                for fn in range(256):
                    kind, end = _bracket(pattern, i + 1, fn)
                    if kind == _LITERAL and fn != _LB:
                        continue
                    if kind != _FAIL:
                        groups.setdefault((kind, end), []).append(fn)
                alts = [
                    (_byteset(members) if kind == _MATCH else b"\\[") + suffix(end)
                    for (kind, end), members in groups.items()
                ]
                out.append(b"(?:" + b"|".join(alts) + b")" if alts else b"(?!)")
                break
            else:
                out.append(re.escape(bytes([c])))
            i += 1
        memo[k] = b"".join(out)
        return memo[k]

    return re.compile(suffix(0), re.DOTALL)


_META = re.compile(r"[*?\[]")


def glob_match(pattern: str | bytes, value: str | bytes) -> bool:
    """``fnmatch(pattern, value, FNM_NOESCAPE) == 0`` on the UTF-8 bytes."""
    if isinstance(pattern, str) and isinstance(value, str) and not _META.search(pattern):
        return pattern == value  # most mapfile keys are plain DNs: no regex needed
    pat = pattern if isinstance(pattern, bytes) else pattern.encode("utf-8", "surrogateescape")
    val = value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")
    return _compile(pat).fullmatch(val) is not None
