"""lcas.db grammar: what is accepted, what is refused (file:line: reason)."""

from __future__ import annotations

from pathlib import Path

import pytest

from lcas.db import LcasConfigError, LcasDbError, entry_point_name, load_db, parse_db


def one(text: str) -> tuple[str, str]:
    entries = parse_db(text, "lcas.db")
    assert len(entries) == 1
    return entries[0].pluginname, entries[0].pluginargs


def test_db_shipped_example_line() -> None:
    assert one('pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n') == (
        "lcas_userban.mod", "ban_users.db")


def test_db_pairs_in_any_order_with_blanks() -> None:
    assert one('  pluginargs = "-a x" ,\tpluginname = /usr/lib/lcas/lcas_voms.mod  ') == (
        "/usr/lib/lcas/lcas_voms.mod", "-a x")


def test_db_quoted_value_keeps_commas_and_blanks() -> None:
    assert one('pluginname=m.mod,pluginargs="-a x,y  z"') == ("m.mod", "-a x,y  z")


def test_db_unquoted_values_and_missing_args() -> None:
    assert one("pluginname=m.mod") == ("m.mod", "")
    assert one("pluginname=m.mod,pluginargs=") == ("m.mod", "")
    assert one("pluginname=m.mod,pluginargs=-x") == ("m.mod", "-x")


def test_db_unquoted_hash_is_part_of_the_value() -> None:
    assert one("pluginname=m#1.mod") == ("m#1.mod", "")


def test_db_comments_blank_lines_crlf_and_trailing_comment() -> None:
    text = ('# header\r\n\r\n   \t\n  # indented comment\n'
            'pluginname="a.mod",pluginargs="x" # why\r\n'
            'pluginname=b.mod, # no args\n'
            'pluginname=c.mod,,pluginargs="y",\n')
    entries = parse_db(text, "lcas.db")
    assert [(e.lineno, e.pluginname, e.pluginargs) for e in entries] == [
        (5, "a.mod", "x"), (6, "b.mod", ""), (7, "c.mod", "y")]


def test_db_argv_splits_args_on_blanks() -> None:
    (entry,) = parse_db('pluginname=v.mod,pluginargs=" -authfile  a\tb "')
    assert entry.argv == ("v.mod", "-authfile", "a", "b")


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ('pluginname=m.mod,pluginargs="x', "missing closing quote in the value of 'pluginargs'"),
        ("pluginname=m.mod,pluginargs=-a b", "unexpected text after the value of 'pluginargs'"),
        ('pluginname=m.mod pluginargs="x"', "unexpected text after the value of 'pluginname'"),
        ('pluginname=m.mod,foo="x"', "unknown variable 'foo'"),
        ('pluginname=m.mod,pluginname="n.mod"', "'pluginname' given twice"),
        ('pluginargs="x"', "no pluginname on this line"),
        ('pluginname=,pluginargs="x"', "empty pluginname"),
        ('pluginname="a.mod",pluginargs="a \\"b\\""', "escaped quote"),
        ("pluginname", "missing '=' after 'pluginname'"),
        ('pluginname=a"b', "stray quote"),
        ("=x", "expected a variable name"),
    ],
)
def test_db_malformed_line_names_file_and_line(line: str, reason: str) -> None:
    text = f"# ok\npluginname=good.mod\n{line}\n"
    with pytest.raises(LcasDbError) as info:
        parse_db(text, "/etc/lcas/lcas.db")
    assert str(info.value).startswith("/etc/lcas/lcas.db:3: ")
    assert reason in str(info.value)
    assert "\n" not in str(info.value)


def test_db_empty_file_is_an_empty_list() -> None:
    assert parse_db("# nothing\n\n") == []


def test_db_missing_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(LcasConfigError, match=r"nosuch\.db: cannot read: No such file"):
        load_db(tmp_path / "nosuch.db")


def test_db_load_reads_bytes_with_non_utf8(tmp_path: Path) -> None:
    db = tmp_path / "lcas.db"
    db.write_bytes(b'pluginname=m.mod,pluginargs="/data/\xff"\n')
    (entry,) = load_db(db)
    assert entry.pluginargs.encode("utf-8", "surrogateescape") == b"/data/\xff"


@pytest.mark.parametrize(
    ("name", "entry_point"),
    [
        ("lcas_userban.mod", "userban"),
        ("/usr/lib/lcas/lcas_userban.mod", "userban"),
        ("/opt/glite/lib/liblcas_timeslots.so", "timeslots"),
        ("lcas_plugin_example.mod", "plugin_example"),
        ("userallow", "userallow"),
        ("lcas_voms.mod", "voms"),
    ],
)
def test_db_plugin_names_map_to_entry_points(name: str, entry_point: str) -> None:
    assert entry_point_name(name) == entry_point
