"""grid-mapfile / groupmapfile / ban-file parsing and matching (reference section 7)."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sitefiles import mapfile
from sitefiles.mapfile import MapfileMissing, MapfileParseError, glob_match


def write(tmp_path: Path, text: str | bytes, name: str = "grid-mapfile") -> Path:
    path = tmp_path / name
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return path


def lookup(path: Path, value: str, **kw: object) -> mapfile.Match | None:
    return mapfile.find_mapping(path, value, **kw)  # type: ignore[arg-type]


# --- parsing -----------------------------------------------------------------


def test_parse_quoted_key_and_mappings() -> None:
    m = mapfile.parse(b'"/DC=org/CN=Alice Smith" .opool,ojohn  oother\n', "f")
    assert m.lines[0].key == "/DC=org/CN=Alice Smith"
    assert m.lines[0].mappings == (".opool", "ojohn", "oother")


def test_parse_comments_and_blank_lines_are_ignored() -> None:
    m = mapfile.parse(b"# comment\n\n   \t\n  # indented comment\n\"/CN=A\" a # trailing\n")
    assert [(ln.lineno, ln.key, ln.mappings) for ln in m.lines] == [(5, "/CN=A", ("a",))]


def test_parse_escaped_quote_is_kept_in_key() -> None:
    m = mapfile.parse(b'"/CN=Quote\\"d" ojohn\n')
    assert m.lines[0].key == '/CN=Quote\\"d'
    assert m.find('/CN=Quote\\"d', wildcards=False) is not None
    assert m.find('/CN=Quote"d', wildcards=False) is None


def test_parse_unquoted_key_stops_at_blank() -> None:
    m = mapfile.parse(b"/CN=John Doe ojohn\n")
    assert m.lines[0].key == "/CN=John"
    assert m.lines[0].mappings == ("Doe", "ojohn")
    assert m.find("/CN=John Doe", wildcards=False) is None
    match = m.find("/CN=John", wildcards=False)
    assert match is not None and match.mapping == "Doe"


def test_parse_escapes_unescaped_in_mappings() -> None:
    m = mapfile.parse(b'"/CN=A" o\\,x\\ y\\#z\n')
    assert m.lines[0].mappings == ("o,x y#z",)


def test_parse_separators_commas_blanks_tabs() -> None:
    m = mapfile.parse(b'"/CN=A",,\t a,,b \t,c\n')
    assert m.lines[0].mappings == ("a", "b", "c")


def test_parse_cr_is_kept() -> None:
    m = mapfile.parse(b'"/CN=A" ojohn\r\n"/CN=B"\r\n')
    assert m.lines[0].mappings == ("ojohn\r",)
    assert m.lines[1].mappings == ("\r",)
    match = m.find("/CN=A", kind="local")
    assert match is not None and match.mapping == "ojohn\r"


def test_parse_split_on_newline_only() -> None:
    m = mapfile.parse(b'"/CN=A" a\r"/CN=B" b\n')
    assert len(m.lines) == 1
    assert m.lines[0].mappings == ("a\r\"/CN=B\"", "b")  # \r is not a line break
    assert m.lines[0].key == "/CN=A"


def test_parse_key_without_mappings() -> None:
    m = mapfile.parse(b'"/CN=Eve*"\n')
    assert m.lines[0].mappings == ()


def test_parse_error_unbalanced_quote_names_file_and_line(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=A" a\n\n"/CN=Broken a\n')
    with pytest.raises(MapfileParseError) as exc:
        lookup(path, "/CN=Other")
    assert str(exc.value) == f"{path}:3: unbalanced quote in key"


def test_parse_error_backslash_at_end_of_line(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=A" a\n"/CN=B\\')
    with pytest.raises(MapfileParseError, match=r":2: backslash at end of line$"):
        lookup(path, "/CN=Z")
    path = write(tmp_path, '"/CN=C" c\\\n', "g2")
    with pytest.raises(MapfileParseError, match=r"g2:1: backslash at end of line$"):
        lookup(path, "/CN=C")


def test_parse_error_after_match_is_not_reached(tmp_path: Path) -> None:
    # Like C: the scan stops at the first acceptable match (verified with the oracle).
    path = write(tmp_path, '"/CN=Q" .tpool\n"/CN=Bad\n')
    match = lookup(path, "/CN=Q", kind="pool")
    assert match is not None and match.pool == "tpool"


def test_backslash_before_comment_char_in_comment_is_fine() -> None:
    m = mapfile.parse(b'"/CN=A" a # comment ends with \\\n')
    assert m.error is None and m.lines[0].mappings == ("a",)


# --- matching and filters ------------------------------------------------------


def test_match_first_acceptable_line_wins(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=Two" .opool\n"/CN=Two" ojohn\n"/CN=Two" osecond\n')
    local = lookup(path, "/CN=Two", kind="local", wildcards=False)
    assert local is not None and local.mapping == "ojohn" and local.line.lineno == 2
    pool = lookup(path, "/CN=Two", kind="pool")
    assert pool is not None and pool.pool == "opool" and pool.is_pool


def test_match_first_acceptable_mapping_of_line(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=A" ojohn,.opool,ofred\n')
    assert lookup(path, "/CN=A", kind="pool").mapping == ".opool"  # type: ignore[union-attr]
    assert lookup(path, "/CN=A", kind="local").mapping == "ojohn"  # type: ignore[union-attr]


def test_match_requested_username_exact(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=A" ojohn,ofred\n"/CN=A" ofred2\n')
    assert lookup(path, "/CN=A", requested="ofred").mapping == "ofred"  # type: ignore[union-attr]
    match = lookup(path, "/CN=A", requested="ofred2")
    assert match is not None and match.line.lineno == 2
    assert lookup(path, "/CN=A", requested="ofre") is None


def test_match_line_without_mappings_is_skipped(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=A"\n"/CN=A" ojohn\n')
    assert lookup(path, "/CN=A").mapping == "ojohn"  # type: ignore[union-attr]


def test_match_is_case_sensitive(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=Alice" a\n')
    assert lookup(path, "/CN=alice") is None
    assert lookup(path, "/CN=alice", wildcards=False) is None


def test_match_wildcard_crosses_slash(tmp_path: Path) -> None:
    path = write(tmp_path, '"/dteam/*" .odteam\n')
    assert lookup(path, "/dteam/production/Role=NULL/Capability=NULL").pool == "odteam"  # type: ignore[union-attr]
    assert lookup(path, "/dteam") is None  # bare FQAN does not match "/dteam/*"


def test_match_without_wildcards_is_strcmp(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=Wild*" ojohn\n')
    assert lookup(path, "/CN=Wildcat", wildcards=False) is None
    assert lookup(path, "/CN=Wild*", wildcards=False).mapping == "ojohn"  # type: ignore[union-attr]
    assert lookup(path, "/CN=Wildcat").mapping == "ojohn"  # type: ignore[union-attr]


def test_ban_key_only(tmp_path: Path) -> None:
    path = write(tmp_path, '# bans\n"/DC=org/CN=Eve*"\n', "ban_users.db")
    assert mapfile.key_matches(path, "/DC=org/CN=Eve Evil")
    assert not mapfile.key_matches(path, "/DC=org/CN=Eve Evil", wildcards=False)
    assert not mapfile.key_matches(path, "/DC=org/CN=Bob")


def test_missing_file_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(MapfileMissing, match="cannot stat"):
        lookup(tmp_path / "nope", "/CN=A")
    with pytest.raises(MapfileMissing, match="is a directory"):
        lookup(tmp_path, "/CN=A")


def test_raw_utf8_bytes_round_trip(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=J\\xC3\\xBCrgen" .oextra\n"/CN=Jürgen" ojurgen\n')
    assert lookup(path, "/CN=J\\xC3\\xBCrgen").pool == "oextra"  # type: ignore[union-attr]
    assert lookup(path, "/CN=Jürgen").mapping == "ojurgen"  # type: ignore[union-attr]
    # C locale: "?" is one BYTE, so "ü" (2 bytes in UTF-8) needs "??"
    path = write(tmp_path, '"/CN=J?rgen" one\n"/CN=J??rgen" two\n', "bytes")
    assert lookup(path, "/CN=Jürgen").mapping == "two"  # type: ignore[union-attr]


def test_invalid_utf8_bytes_are_kept(tmp_path: Path) -> None:
    path = write(tmp_path, b'"/CN=\xff" o\xfe\n')
    match = lookup(path, "/CN=\udcff")
    assert match is not None and match.mapping == "o\udcfe"


# --- cache -------------------------------------------------------------------------


def test_cache_reuses_parse_until_file_changes(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=A" a\n')
    first = mapfile.load(path)
    assert mapfile.load(path) is first
    path.write_text('"/CN=A" b\n')  # same size, new mtime/ctime
    second = mapfile.load(path)
    assert second is not first
    assert second.find("/CN=A").mapping == "b"  # type: ignore[union-attr]


def test_cache_notices_replacement_with_same_mtime(tmp_path: Path) -> None:
    path = write(tmp_path, '"/CN=A" a\n')
    st = path.stat()
    assert mapfile.load(path).find("/CN=A").mapping == "a"  # type: ignore[union-attr]
    new = write(tmp_path, '"/CN=A" bb\n', "new")
    os.utime(new, ns=(st.st_atime_ns, st.st_mtime_ns))
    os.replace(new, path)  # other inode, size, same mtime
    assert mapfile.load(path).find("/CN=A").mapping == "bb"  # type: ignore[union-attr]


# --- glob: differential against glibc fnmatch(FNM_NOESCAPE) ------------------------

_libc = ctypes.CDLL(ctypes.util.find_library("c"))
_libc.fnmatch.argtypes = [ctypes.c_char_p, ctypes.c_char_p, ctypes.c_int]
FNM_NOESCAPE = 2


def c_fnmatch(pattern: str, value: str) -> bool:
    return _libc.fnmatch(pattern.encode(), value.encode(), FNM_NOESCAPE) == 0


GLOB_CASES = [
    ("/CN=*", "/CN=a/b/c", True),
    ("*", "", True),
    ("?", "/", True),
    ("a\\*", "a\\xyz", True),  # backslash is a literal, * still a wildcard
    ("a\\*", "a*", False),
    ("[!a]x", "bx", True),
    ("[!a]x", "ax", False),
    ("[^a]x", "bx", True),  # glibc: ^ negates too
    ("[]a]", "]", True),
    ("[!]a]", "]", False),
    ("[a-]", "-", True),
    ("[z-a]", "m", False),
    ("[", "[", True),  # unterminated bracket: literal [
    ("a[b", "a[b", True),
    ("[[:digit:]]*", "7up", True),
    ("[[:alpha:][:digit:]]", "_", False),
    ("[[:bogus:]]", "b", False),
    ("[\\]", "\\", True),
    ("[/]", "/", True),
    ("*[[:upper:]]", "abC", True),
    ("[[=a=]]", "a", True),
    ("[[.-.]]", "-", True),
    ("/dteam/*", "/dteam", False),
    ("*.*", "a.b", True),
    ("[a-c-e]", "d", False),
]


@pytest.mark.parametrize(("pattern", "value", "expected"), GLOB_CASES)
def test_glob_edge_cases_match_glibc(pattern: str, value: str, expected: bool) -> None:
    assert c_fnmatch(pattern, value) is expected, "test table disagrees with glibc"
    assert glob_match(pattern, value) is expected


_alphabet = st.sampled_from(list("ab/*?[]!^-\\:.Z9 "))


_values = st.sampled_from(list("ab/[]!^-\\:Z9 *?"))


@settings(max_examples=600, deadline=None)
@given(st.text(_alphabet, max_size=8), st.text(_values, max_size=6))
def test_glob_random_patterns_match_glibc(pattern: str, value: str) -> None:
    assert glob_match(pattern, value) is c_fnmatch(pattern, value)
