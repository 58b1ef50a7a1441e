"""The commented examples in conf/ must load with the project's own parsers: an example
that does not parse teaches admins the wrong thing."""

from __future__ import annotations

import configparser
from pathlib import Path

import pytest

from lcas.db import load_db
from lcas.plugins.timeslots import parse_timeslots
from lcmaps.policy_db import load_policy_db
from sitefiles import mapfile

CONF = Path(__file__).resolve().parents[1] / "conf"


def test_conf_lcmaps_db_parses_with_both_policies() -> None:
    db = load_policy_db(str(CONF / "lcmaps.db"))
    assert db.policy_names() == ["glexec_get_account", "gatekeeper"]
    assert db.warnings == ()


def test_conf_lcas_db_parses() -> None:
    names = [entry.pluginname for entry in load_db(CONF / "lcas.db")]
    assert names == ["lcas_userban.mod", "lcas_timeslots.mod", "lcas_voms.mod"]


@pytest.mark.parametrize("name", ["grid-mapfile", "groupmapfile", "ban_users.db",
                                  "ban_fqans.db", "voms_allowed.db"])
def test_conf_mapfiles_parse(name: str) -> None:
    parsed = mapfile.load(CONF / name)
    assert parsed.error is None and parsed.lines


def test_conf_grid_mapfile_examples_map_as_commented() -> None:
    gm = mapfile.load(CONF / "grid-mapfile")
    jurgen = "/DC=org/DC=example/O=Users/CN=J\\xC3\\xBCrgen M\\xC3\\xBCller"
    assert gm.find(jurgen, kind="pool").mapping == ".pool"  # type: ignore[union-attr]
    assert gm.find("/dteam/Role=pilot/Capability=NULL", kind="pool").mapping == ".dtpilot"  # type: ignore[union-attr]
    assert gm.find("/DC=org/DC=example/O=Users/CN=Frank Local", wildcards=False,
                   kind="local").mapping == "frank"  # type: ignore[union-attr]


def test_conf_timeslots_and_glexec_conf_parse() -> None:
    assert parse_timeslots((CONF / "timeslots.db").read_bytes(), "timeslots.db")
    parser = configparser.ConfigParser()
    parser.read(CONF / "glexec.conf")
    assert parser.has_section("glexec") and parser["glexec"]["linger"] == "yes"
