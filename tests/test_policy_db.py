"""lcmaps.db parsing: what C LCMAPS 1.6.6 accepts and refuses (file:line: reason)."""

from __future__ import annotations

import pytest

from lcmaps.policy_db import PolicyDbError, load_policy_db, parse_policy_db, tokenize_args

HEAD = 'path = /usr/lib/lcmaps\ngood = "lcmaps_dummy_good.mod"\nbad = lcmaps_dummy_bad.mod\n'


def parse(text: str):
    return parse_policy_db(text, "t.db")


def refuse(text: str) -> PolicyDbError:
    with pytest.raises(PolicyDbError) as ei:
        parse(text)
    return ei.value


def test_policy_db_demo_style_file_parses():
    db = parse(
        HEAD
        + 'pool = "lcmaps_poolaccount.mod"\n       "-gridmapfile /etc/gm"  # comment\n'
        + '       "-gridmapdir /gmd"\n'
        + "# comment line\nstandard:\nbad -> good | pool\npool -> good\n"
    )
    assert db.module_path == "/usr/lib/lcmaps"
    assert db.policy_names() == ["standard"]
    assert [p.module for p in db.plugins] == [
        "lcmaps_dummy_bad.mod", "lcmaps_dummy_good.mod", "lcmaps_poolaccount.mod",
    ]
    pool = db.plugins[2]
    assert pool.entry_point == "poolaccount"
    assert pool.argv == (
        "/usr/lib/lcmaps/lcmaps_poolaccount.mod", "-gridmapfile", "/etc/gm", "-gridmapdir", "/gmd",
    )
    rule = db.policies[0].rules[0]
    assert rule.state == "lcmaps_dummy_bad.mod" and rule.false_branch.startswith("lcmaps_pool")


def test_policy_db_string_concatenation_and_escaped_quotes():
    db = parse(
        'path = /usr/lib/lcmaps\n'
        'loc = "lcmaps_localaccount.mod" "-gridmapfile \\"/tmp/my dir/gm\\"" ""\n'
        "p:\nloc -> lcmaps_dummy_good.mod\n"
    )
    assert db.variables["loc"] == 'lcmaps_localaccount.mod -gridmapfile "/tmp/my dir/gm"'
    assert db.plugins[0].argv[1:] == ("-gridmapfile", "/tmp/my dir/gm")


def test_policy_db_unquoted_value_and_variable_chain():
    db = parse("path = /usr/lib/lcmaps\na = lcmaps_dummy_good.mod\nb = a\np:\nb -> a\n")
    assert db.policies[0].rules[0].state == "lcmaps_dummy_good.mod"
    assert len(db.plugins) == 1


def test_policy_db_relative_path_prefixed_and_second_path_ignored():
    db = parse('path = lcmaps\npath = /other\ng = "lcmaps_dummy_good.mod"\n'
               "p:\ng -> lcmaps_dummy_bad.mod\n")
    assert db.module_path == "/usr/lib/x86_64-linux-gnu/lcmaps"
    assert any("path already defined" in w for w in db.warnings)


def test_policy_db_path_with_dash_is_a_syntax_error():
    err = refuse('path = /usr/lib/x86_64-linux-gnu/lcmaps\ng = "lcmaps_dummy_good.mod"\n'
                 "p:\ng -> g2\n")
    assert str(err).startswith("t.db:1: syntax error")


def test_policy_db_quoted_path_accepted_quotes_skipped():
    db = parse('path = "/usr/lib/lcmaps"\ng = "lcmaps_dummy_good.mod"\n'
               "p:\ng -> lcmaps_dummy_bad.mod\n")
    assert db.module_path == "/usr/lib/lcmaps"


def test_policy_db_empty_path_ignored():
    db = parse('path =\ng = "lcmaps_dummy_good.mod"\np:\ng -> lcmaps_dummy_bad.mod\n')
    assert db.module_path is None
    assert db.plugins[0].argv[0].endswith("/lcmaps_dummy_good.mod")


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        (HEAD + "p:\ngood\n", 6, "syntax error"),  # bare plugin line
        (HEAD + "p:\ngood -> bad\nx = y\n", 6, "syntax error"),  # variable after a label
        (HEAD, 4, "contains no policy rules"),
        ("", 1, "empty"),
        (HEAD + "p:\n", 5, "no policy with rules"),
        (HEAD + "good = lcmaps_x.mod\np:\ngood -> bad\n", 4, "already defined"),
        (HEAD + "a = b\nb = a\np:\na -> bad\n", 5, "loop detected"),
        (HEAD + "a = a\np:\na -> bad\n", 4, "loop detected"),
        (HEAD + "p:\ngood -> bad\ngood -> x\n", 6, "already in use"),
        (HEAD + "p:\ngood -> bad\np:\nbad -> good\n", 6, "policy 'p' already defined"),
        (HEAD + "p:\ngood -> bad\nbad -> good\n", 5, "loop"),
        (HEAD + "p:\n~good -> good\n", 5, "loop"),
        (HEAD + "p:\ngood -> bad\nq:\np -> good\n", 7, "cannot be a policy"),
        (HEAD + "p:\ngood -> bad\nq:\ngood -> p\n", 7, "refers to policy"),
        (HEAD + "p:\ngood -> undefinedplugin\n", 5, "plugin undefinedplugin not found"),
        (HEAD + 'x = "lcmaps_dummy_good.mod -a"\np:\nx -> good\n', 6, "twice"),
        (HEAD + 'x = "lcmaps_x.mod \\"a"\np:\ngood -> x\n', 4, "unbalanced quotes"),
        (HEAD + 'x = "lcmaps_x.mod\np:\ngood -> x\n', 4, "unbalanced quotes"),
        (HEAD + "p:\n~good -> bad | good\n", 5, "syntax error"),
        (HEAD + "p:\ngood -> bad # comment without newline", 5, "unrecognized token '#'"),
        (HEAD + 'x = "lcmaps_localaccount.mod -gridmapfile \\"a b"\np:\ngood -> x\n', 4, "quote"),
        (HEAD + "p:\ngood - > bad\n", 5, "unrecognized token '-'"),
    ],
)
def test_policy_db_refused(text, line, reason):
    err = refuse(text)
    assert err.lineno == line, str(err)
    assert reason in err.reason, str(err)
    assert str(err).startswith(f"t.db:{line}: ")


def test_policy_db_label_without_rules_dropped_with_warning():
    db = parse(HEAD + "empty:\np:\ngood -> bad\nlast:\n")
    assert db.policy_names() == ["p"]
    assert sum("no rules specified" in w for w in db.warnings) == 2


def test_policy_db_unreachable_rule_warns():
    db = parse(HEAD + "p:\ngood -> bad\nlcmaps_dummy_x.mod -> good\n")
    assert any("not part of the chain" in w for w in db.warnings)


def test_policy_db_variable_whose_value_is_a_state_is_not_substituted():
    # C warns "points to state ... dangerous" and then uses the variable's
    # name as a module name, which is not found (checked against C).
    err = refuse(HEAD + "p:\ngood -> bad\nlcmaps_dummy_bad.mod -> good\n")
    assert err.reason == "plugin bad not found"


def test_policy_db_indented_label_keeps_its_blanks():
    # flex's label pattern includes the leading blanks (checked against C).
    db = parse(HEAD + "  p1:\ngood -> bad\n")
    assert db.policy_names() == ["  p1"]


def test_policy_db_same_module_same_args_is_one_plugin():
    db = parse(HEAD + 'g2 = "lcmaps_dummy_good.mod"\np:\nbad -> g2\nq:\nbad -> good\n')
    assert [p.module for p in db.plugins].count("lcmaps_dummy_good.mod") == 1


def test_policy_db_comment_anywhere_and_path_comment():
    db = parse("path = /usr/lib/lcmaps # where\ng = lcmaps_dummy_good.mod # c\n"
               "p: # c\ng -> lcmaps_dummy_bad.mod # c\n")
    assert db.policies[0].rules[0].true_branch == "lcmaps_dummy_bad.mod"


def test_policy_db_liblcmaps_so_and_absolute_names_select_entry_points():
    db = parse("p:\n/usr/lib/lcmaps/lcmaps_poolaccount.mod -> liblcmaps_dummy_good.so\n")
    assert [p.entry_point for p in db.plugins] == ["poolaccount", "dummy_good"]
    assert db.plugins[0].argv[0] == "/usr/lib/lcmaps/lcmaps_poolaccount.mod"


def test_tokenize_args_like_lcmaps_tokenize():
    assert tokenize_args('-a "b c"d\te\n') == ["-a", "b c", "d", "e"]
    assert tokenize_args(None) == []
    with pytest.raises(ValueError):
        tokenize_args('-a "b')
    with pytest.raises(ValueError):
        tokenize_args(" ".join(["x"] * 50))


def test_load_policy_db_missing_file(tmp_path):
    with pytest.raises(PolicyDbError) as ei:
        load_policy_db(str(tmp_path / "nope.db"))
    assert str(ei.value).startswith(f"{tmp_path}/nope.db:0: cannot read")
