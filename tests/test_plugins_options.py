"""Plugin argument handling: C's spellings accepted, unknown ones and conflicts refused."""

from __future__ import annotations

import pytest

from lcmaps.plugin_api import PluginInitError
from lcmaps.plugins.ban import BanDn
from lcmaps.plugins.dummy import DummyGood
from lcmaps.plugins.poolaccount import PoolAccount
from lcmaps.plugins.posix_enf import PosixEnf
from lcmaps.plugins.verify_proxy import VerifyProxy, parse_period
from lcmaps.plugins.voms_account import VomsLocalAccount, VomsPoolAccount
from lcmaps.plugins.voms_group import VomsLocalGroup, VomsPoolGroup

A0 = "/usr/lib/lcmaps/x.mod"


@pytest.mark.parametrize(
    ("cls", "args"),
    [
        (PoolAccount, ["-GRIDMAP", "/gm", "-GRIDMAPDIR", "/d", "-OVERRIDE_INCONSISTENCY",
                       "-max_mappings_per_credential", "9999", "-strict_poolprefix_match", "no",
                       "--disablewildcards"]),
        (BanDn, ["-BAN_MAPFILE", "/b", "-no_wildcard"]),
        (VomsLocalGroup, ["-groupmap", "/g", "-mapmin", "2", "-mapall",
                          "--map-to-secondary-groups"]),
        (VomsPoolGroup, ["-GROUPMAPFILE", "/g", "-GROUPMAPDIR", "/d", "-override_inconsistency",
                         "-strict_poolprefix_match", "yes"]),
        (VomsPoolAccount, ["-gridmapdir", "/d", "--do-not-use-secondary-gids",
                           "--require-primary-gid", "--use-account-gid"]),
        (PosixEnf, ["-MAXUID", "1", "-maxpgid", "1", "-maxsgid", "32", "-set_only_euid", "no"]),
        (VerifyProxy, ["-CERTDIR", "/", "--Disallow-Limited-Proxy", "--max-voms-ttl", "1d-00:00",
                       "--max-proxy-level-ttl=L", "12:00", "--max-proxy-level-ttl=1", "2:00",
                       "--only-enforce-lifetime-checks", "--never_discard_private_key_absence"]),
    ],
)
def test_plugins_accept_c_spellings(cls, args):
    cls([A0, *args])


@pytest.mark.parametrize(
    ("cls", "args", "needle"),
    [
        (PoolAccount, ["-bogus"], "unknown argument '-bogus'"),
        (PoolAccount, ["-gridmapdir", "rel/dir"], "absolute"),
        (PoolAccount, ["-max_mappings_per_credential", "10000"], "1-9999"),
        (PoolAccount, ["-strict_poolprefix_match", "YES"], '"yes" or "no"'),
        (PoolAccount, ["-gridmapfile"], "needs to be followed"),
        (BanDn, ["--gridmapfile", "/x"], "unknown argument"),
        (VomsLocalGroup, ["-mapmin", "1"], "no group-mapfile"),
        (VomsLocalGroup, ["-groupmapfile", "/g", "-mapmin", "-1"], ">= 0"),
        (VomsLocalGroup, ["-groupmapfile", "/g", "-groupmapdir", "/d"], "unknown argument"),
        (VomsLocalAccount, ["--use-voms-gid", "--use-account-gid"], "cannot specify both"),
        (VomsLocalAccount, ["--add-primary-gid-from-mapped-account",
                            "--do-not-add-primary-gid-from-mapped-account"], "cannot specify"),
        (VomsLocalAccount, ["-gridmapdir", "/d"], "unknown argument"),
        (VomsPoolAccount, ["--require-primary-gid", "--do-not-require-primary-gid"], "both"),
        (PosixEnf, ["-maxuid", "x"], "needs a number"),
        (VerifyProxy, ["--max-voms-ttl", "25"], "bad period"),
        (VerifyProxy, ["--require-limited-proxy", "--disallow-limited-proxy"], "limited"),
        (VerifyProxy, ["-certdir", "/nonexistent-dir"], "does not exist"),
        (VerifyProxy, ["--max-proxy-level-ttl=2000", "1:00"], "bad proxy level"),
        (DummyGood, ["--dummy-uid", "12a"], "needs a number"),
    ],
)
def test_plugins_refuse_bad_arguments(cls, args, needle):
    with pytest.raises(PluginInitError) as ei:
        cls([A0, *args])
    assert needle in ei.value.reason


def test_plugins_gid_flags_resolution():
    assert (VomsLocalAccount([A0]).pgid_bits, VomsLocalAccount([A0]).add_sgids) == (1, True)
    assert (VomsPoolAccount([A0]).pgid_bits, VomsPoolAccount([A0]).add_sgids) == (0, False)
    p = VomsPoolAccount([A0, "--add-primary-gid-as-secondary-gid-from-mapped-account"])
    assert (p.pgid_bits, p.add_sgids) == (2, False)
    p = VomsLocalAccount([A0, "--use-voms-gid", "--add-secondary-gids-from-mapped-account"])
    assert (p.pgid_bits, p.add_sgids) == (0, True)


def test_plugins_dummy_good_is_lenient_like_c():
    d = DummyGood([A0, "--DUMMY-UID", "5", "--whatever", "--dummy-gid"])
    assert (d.uid, d.gid) == (5, None)


def test_verify_proxy_period_format():
    assert parse_period("2d-13:37").total_seconds() == 2 * 86400 + 13 * 3600 + 37 * 60
    assert parse_period("1:05").total_seconds() == 3900
    assert parse_period("00:00") is None and parse_period("1d-1:00") is None


def _declared(group: str) -> dict[str, str]:
    import tomllib
    from pathlib import Path

    with open(Path(__file__).resolve().parent.parent / "pyproject.toml", "rb") as fh:
        return dict(tomllib.load(fh)["project"]["entry-points"][group])


def test_builtin_plugin_tables_are_the_declared_entry_points():
    # The static tables spare one-shot commands the entry-point scan; they must name exactly
    # what pyproject.toml declares, or a plugin would load differently in the two ways.
    from lcas import chain
    from lcmaps import evaluation

    assert dict(evaluation.BUILTIN_PLUGINS) == _declared(evaluation.ENTRY_POINT_GROUP)
    assert dict(chain.BUILTIN_PLUGINS) == _declared(chain.ENTRY_POINT_GROUP)
    for name in evaluation.BUILTIN_PLUGINS:
        assert evaluation.plugin_class(name) is not None, name
    for name in chain.BUILTIN_PLUGINS:
        assert chain.plugin_class(name) is not None, name


def test_names_not_built_in_are_looked_up_in_entry_points_once():
    # A site's own plugin is an entry point: a name missing from the table is found there
    # (here a real installed entry point, with an empty table), and the scan happens once.
    import subprocess
    import sys

    code = (
        "import importlib.metadata as md, sys\n"
        "calls = []\n"
        "real = md.entry_points\n"
        "md.entry_points = lambda **kw: calls.append(kw) or real(**kw)\n"
        "from sitefiles.plugins import load_plugin_class\n"
        "g = 'scas_stack.lcmaps_plugins'\n"
        "a = load_plugin_class(g, 'localaccount', {})\n"
        "b = load_plugin_class(g, 'poolaccount', {})\n"
        "c = load_plugin_class(g, 'no_such_plugin', {})\n"
        "d = load_plugin_class(g, 'dummy_good', {'dummy_good': 'lcmaps.plugins.dummy:DummyBad'})\n"
        "print(a.__name__, b.__name__, c, d.__name__, len(calls))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.stdout.split() == ["LocalAccount", "PoolAccount", "None", "DummyBad", "1"], (
        out.stderr)


def test_lazy_logger_records_reach_handlers_from_the_callers_line(caplog):
    # Once logging is in use (the service configures it), records arrive as from a Logger,
    # attributed to the line that logged them, tracebacks included.
    import logging

    from sitefiles.plugins import LazyLogger

    log = LazyLogger("scas.test.lazy")
    with caplog.at_level(logging.DEBUG, logger="scas.test.lazy"):
        log.debug("hello %s", "there")
        here = test_lazy_logger_records_reach_handlers_from_the_callers_line.__code__
        try:
            raise ValueError("boom")
        except ValueError:
            log.exception("crashed")
    first, second = caplog.records
    assert (first.getMessage(), first.levelname, first.filename) == (
        "hello there", "DEBUG", "test_plugins_options.py")
    assert first.funcName == here.co_name
    assert second.levelname == "ERROR" and second.exc_info and "boom" in caplog.text


def test_lazy_logger_in_a_one_shot_imports_logging_only_to_warn():
    # Nothing configured logging, so INFO is dropped without importing it; a warning still
    # goes to stderr through logging's last-resort handler.
    import subprocess
    import sys

    code = ("import sys\nfrom sitefiles.plugins import LazyLogger\nlog = LazyLogger('x')\n"
            "log.info('quiet')\nprint('logging' in sys.modules)\n"
            "log.warning('loud %d', 1)\nprint('logging' in sys.modules)\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert (out.stdout.split(), out.stderr) == (["False", "True"], "loud 1\n")
