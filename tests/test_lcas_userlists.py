"""userban, userallow and the example plugin, with real ban/allow files."""

from __future__ import annotations

from pathlib import Path

import pytest

from lcas.plugin_api import LcasUnavailable, PluginInitError, Request
from lcas.plugins.example import AlwaysAllow
from lcas.plugins.userallow import UserAllow
from lcas.plugins.userban import UserBan

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
BOB = "/DC=org/DC=example/O=Users/CN=Bob Jones"


def ban(tmp: Path, text: str | bytes, *flags: str) -> UserBan:
    path = tmp / "ban_users.db"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return UserBan(("lcas_userban.mod", str(path), *flags))


def allow(tmp: Path, text: str | bytes, *flags: str) -> UserAllow:
    path = tmp / "allowed_users.db"
    path.write_bytes(text.encode() if isinstance(text, str) else text)
    return UserAllow(("lcas_userallow.mod", str(path), *flags))


def allowed(plugin: UserBan | UserAllow | AlwaysAllow, dn: str) -> bool:
    return plugin.authorize(Request(dn)).allowed


def test_userban_denies_listed_allows_others(tmp_path: Path) -> None:
    plugin = ban(tmp_path, f'#\n# banned\n"{BOB}"\n#"{ALICE}"\n')
    assert not allowed(plugin, BOB)
    assert "banned" in plugin.authorize(Request(BOB)).reason
    assert allowed(plugin, ALICE)


def test_userban_is_case_sensitive_and_exact_without_wildcards(tmp_path: Path) -> None:
    plugin = ban(tmp_path, f'"{BOB.upper()}"\n"{BOB} "\n')
    assert allowed(plugin, BOB)


def test_userban_wildcards_by_default(tmp_path: Path) -> None:
    plugin = ban(tmp_path, '"/DC=org/DC=example/O=Users/CN=B*"\n"/CN=Ev?"\n')
    assert not allowed(plugin, BOB)
    assert not allowed(plugin, "/CN=Eve")
    assert allowed(plugin, ALICE)
    assert allowed(plugin, "/CN=Evelyn")


def test_userban_no_wildcard_matches_literally(tmp_path: Path) -> None:
    plugin = ban(tmp_path, '"/DC=org/DC=example/O=Users/CN=B*"\n', "-no_wildcard")
    assert allowed(plugin, BOB)
    assert not allowed(plugin, "/DC=org/DC=example/O=Users/CN=B*")


def test_userban_crlf_file_still_bans(tmp_path: Path) -> None:
    plugin = ban(tmp_path, f'"{BOB}"\r\n/CN=Unquoted\r\n'.encode())
    assert not allowed(plugin, BOB)
    assert not allowed(plugin, "/CN=Unquoted")


def test_userban_backslash_kept_verbatim_in_key(tmp_path: Path) -> None:
    # as in C: the escape protects the quote but stays part of the DN
    plugin = ban(tmp_path, '"/CN=Quote\\"d"\n', "-no_wildcard")
    assert not allowed(plugin, '/CN=Quote\\"d')
    assert allowed(plugin, '/CN=Quote"d')


def test_userban_unquoted_dn_stops_at_blank(tmp_path: Path) -> None:
    plugin = ban(tmp_path, "/CN=John Doe\n", "-no_wildcard")
    assert allowed(plugin, "/CN=John Doe")
    assert not allowed(plugin, "/CN=John")


def test_userban_utf8_oneline_escapes(tmp_path: Path) -> None:
    dn = "/DC=org/CN=J\\xC3\\xBCrgen"
    plugin = ban(tmp_path, f'"{dn}"\n', "-no_wildcard")
    assert not allowed(plugin, dn)


def test_userban_broken_file_refuses_init(tmp_path: Path) -> None:
    with pytest.raises(PluginInitError, match=r"ban_users\.db:2: unbalanced quote"):
        ban(tmp_path, f'"{BOB}"\n"/CN=broken\n')


def test_userban_file_broken_later_is_unavailable(tmp_path: Path) -> None:
    plugin = ban(tmp_path, f'"{BOB}"\n')
    (tmp_path / "ban_users.db").write_text('"/CN=x\n')
    with pytest.raises(LcasUnavailable, match=r"ban_users\.db:1: unbalanced quote"):
        plugin.authorize(Request(ALICE))


def test_userban_match_before_the_broken_line_still_bans(tmp_path: Path) -> None:
    # as C: the lookup stops at the first match, before reaching the bad line
    plugin = ban(tmp_path, f'"{BOB}"\n')
    (tmp_path / "ban_users.db").write_text(f'"{BOB}"\n"/CN=x\n')
    assert not allowed(plugin, BOB)
    with pytest.raises(LcasUnavailable, match=r"ban_users\.db:2: unbalanced quote"):
        plugin.authorize(Request(ALICE))


def test_userban_file_removed_later_is_unavailable(tmp_path: Path) -> None:
    plugin = ban(tmp_path, f'"{BOB}"\n')
    (tmp_path / "ban_users.db").unlink()
    with pytest.raises(LcasUnavailable, match=r"ban_users\.db: cannot stat: No such file"):
        plugin.authorize(Request(BOB))


def test_userallow_file_removed_later_is_unavailable(tmp_path: Path) -> None:
    plugin = allow(tmp_path, f'"{ALICE}"\n')
    (tmp_path / "allowed_users.db").unlink()
    (tmp_path / "allowed_users.db").mkdir()
    with pytest.raises(LcasUnavailable, match=r"allowed_users\.db: is a directory"):
        plugin.authorize(Request(ALICE))


def test_userban_change_on_disk_is_picked_up(tmp_path: Path) -> None:
    plugin = ban(tmp_path, "# nobody\n")
    assert allowed(plugin, ALICE)
    (tmp_path / "ban_users.db").write_text(f'"{ALICE}"  # added later\n')
    assert not allowed(plugin, ALICE)


@pytest.mark.parametrize(
    ("args", "reason"),
    [((), "no ban file given"), (("a", "b"), "more than one file"),
     (("-x",), "unknown argument '-x'")],
)
def test_userban_bad_arguments(args: tuple[str, ...], reason: str) -> None:
    with pytest.raises(PluginInitError, match=reason):
        UserBan(("lcas_userban.mod", *args))


def test_userallow_allows_listed_denies_others(tmp_path: Path) -> None:
    plugin = allow(tmp_path, f'# allowed\n\n"{ALICE}" alice\n')
    assert allowed(plugin, ALICE)
    verdict = plugin.authorize(Request(BOB))
    assert not verdict.allowed and "not in the allowed list" in verdict.reason


def test_userallow_exact_by_default_wildcard_on_request(tmp_path: Path) -> None:
    text = '"/DC=org/DC=example/O=Users/*"\n'
    assert not allowed(allow(tmp_path, text), ALICE)
    assert allowed(allow(tmp_path, text, "-wildcard"), ALICE)


def test_userallow_without_argument_reads_gridmapfile(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    gridmap = tmp_path / "grid-mapfile"
    gridmap.write_text(f'"{ALICE}" .dteam\n')
    monkeypatch.setenv("GRIDMAP", str(gridmap))
    plugin = UserAllow(("lcas_userallow.mod",))
    assert allowed(plugin, ALICE)
    assert not allowed(plugin, BOB)


def test_userallow_argument_wins_over_gridmapfile(tmp_path: Path,
                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    gridmap = tmp_path / "grid-mapfile"
    gridmap.write_text(f'"{BOB}" bob\n')
    monkeypatch.setenv("GRIDMAP", str(gridmap))
    plugin = allow(tmp_path, f'"{ALICE}"\n')
    assert allowed(plugin, ALICE)
    assert not allowed(plugin, BOB)


def test_userallow_relative_file_resolves_against_db_dir(tmp_path: Path) -> None:
    (tmp_path / "allowed_users.db").write_text(f'"{ALICE}"\n')
    plugin = UserAllow(("lcas_userallow.mod", "allowed_users.db"), db_dir=str(tmp_path))
    assert allowed(plugin, ALICE)


def test_userallow_missing_file_refuses_init(tmp_path: Path) -> None:
    with pytest.raises(PluginInitError, match="No such file"):
        UserAllow(("lcas_userallow.mod", str(tmp_path / "nope")))


def test_example_plugin_allows_anybody_with_any_arguments() -> None:
    assert allowed(AlwaysAllow(("lcas_plugin_example.mod", "Some", "bogus", "arguments")), BOB)
