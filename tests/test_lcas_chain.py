"""The LCAS framework: AND over plugins, empty chain, init failures, plugin faults."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from pathlib import Path

import pytest

from lcas.chain import Chain, LcasConfigError, LoadedPlugin, authorize, load_chain
from lcas.db import DbEntry
from lcas.plugin_api import LcasUnavailable, Plugin, Request, Verdict

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
MALLORY = "/DC=org/DC=example/O=Users/CN=Mallory"


def write(tmp: Path, name: str, text: str) -> Path:
    path = tmp / name
    path.write_text(text)
    return path


@pytest.fixture
def site(tmp_path: Path) -> Path:
    write(tmp_path, "ban_users.db", f'# banned\n"{MALLORY}"\n')
    write(tmp_path, "allowed_users.db", f'"{ALICE}"\n"{MALLORY}"\n')
    return tmp_path


def test_chain_all_plugins_allow(site: Path) -> None:
    db = write(site, "lcas.db", 'pluginname="lcas_userallow.mod",pluginargs="allowed_users.db"\n'
                                'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    verdict = authorize(load_chain(db), ALICE)
    assert verdict.allowed and verdict.plugin is None


def test_chain_first_refusal_names_plugin_and_reason(site: Path) -> None:
    db = write(site, "lcas.db", 'pluginname="lcas_userallow.mod",pluginargs="allowed_users.db"\n'
                                'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    verdict = authorize(load_chain(db), MALLORY)
    assert not verdict.allowed
    assert verdict.plugin == "lcas_userban.mod"
    assert "banned" in verdict.reason


def test_chain_and_refuses_when_only_one_plugin_refuses(site: Path) -> None:
    db = write(site, "lcas.db", 'pluginname="lcas_plugin_example.mod"\n'
                                'pluginname="lcas_userallow.mod",pluginargs="allowed_users.db"\n'
                                'pluginname="lcas_plugin_example.mod"\n')
    verdict = authorize(load_chain(db), "/CN=Stranger")
    assert (verdict.allowed, verdict.plugin) == (False, "lcas_userallow.mod")


def test_chain_empty_denies(site: Path) -> None:
    db = write(site, "lcas.db", "# no plugins\n")
    verdict = authorize(load_chain(db), ALICE)
    assert not verdict.allowed
    assert "no authorization modules" in verdict.reason


def test_chain_plugin_init_failure_denies_everybody(site: Path) -> None:
    db = write(site, "lcas.db", 'pluginname="lcas_plugin_example.mod"\n'
                                'pluginname="lcas_userban.mod",pluginargs="missing.db"\n')
    chain = load_chain(db)
    assert [n for n, _ in chain.init_failures] == ["lcas_userban.mod"]
    verdict = authorize(chain, ALICE)
    assert not verdict.allowed
    assert verdict.plugin == "lcas_userban.mod"
    assert "missing.db" in verdict.reason and "No such file" in verdict.reason


def test_chain_unknown_plugin_denies_with_reason(site: Path) -> None:
    db = write(site, "lcas.db", 'pluginname="/usr/lib/lcas/lcas_nosuch.mod"\n')
    verdict = authorize(load_chain(db), ALICE)
    assert not verdict.allowed
    assert verdict.plugin == "/usr/lib/lcas/lcas_nosuch.mod"
    assert "plugin not found" in verdict.reason and "'nosuch'" in verdict.reason


def test_chain_bad_plugin_arguments_deny(site: Path) -> None:
    db = write(site, "lcas.db", 'pluginname="lcas_voms.mod",pluginargs="-authfile"\n')
    verdict = authorize(load_chain(db), ALICE)
    assert not verdict.allowed and "-authfile needs to be followed by a value" in verdict.reason


def test_chain_malformed_db_raises_and_builds_nothing(site: Path) -> None:
    db = write(site, "lcas.db", 'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n'
                                'pluginname="lcas_plugin_example.mod",pluginargs="oops\n')
    with pytest.raises(LcasConfigError, match=r"lcas\.db:2: missing closing quote"):
        load_chain(db)


def test_chain_relative_files_resolve_next_to_lcas_db(site: Path, tmp_path_factory:
                                                       pytest.TempPathFactory,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    db = write(site, "lcas.db", 'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    monkeypatch.chdir(tmp_path_factory.mktemp("elsewhere"))
    assert not authorize(load_chain(db), MALLORY).allowed


class Recorder(Plugin):
    """A site plugin that remembers whom it was asked about."""

    name = "recorder"

    def __init__(self, argv: Sequence[str], *, db_dir: str = ".") -> None:
        super().__init__(argv, db_dir=db_dir)
        self.asked: list[Request] = []

    def authorize(self, request: Request) -> Verdict:
        self.asked.append(request)
        if "deny" in self.argv:
            return Verdict.deny("told to deny")
        if "crash" in self.argv:
            raise RuntimeError("disk on fire\nFAKE LOG LINE")
        if "oserror" in self.argv:
            raise FileNotFoundError(2, "No such file or directory", "/etc/lcas/gone.db")
        if "unavailable" in self.argv:
            raise LcasUnavailable("directory server down")
        return Verdict.allow()


def loaded(*argvs: tuple[str, ...]) -> list[LoadedPlugin]:
    return [LoadedPlugin(DbEntry(i + 1, a[0], " ".join(a[1:])), Recorder(a))
            for i, a in enumerate(argvs)]


def test_chain_stops_at_first_refusal() -> None:
    plugins = loaded(("one",), ("two", "deny"), ("three",))
    verdict = authorize(Chain("x", plugins), ALICE, ["/dteam/Role=NULL/Capability=NULL"])
    assert verdict.plugin == "two"
    asked = [len(p.plugin.asked) for p in plugins if isinstance(p.plugin, Recorder)]
    assert asked == [1, 1, 0]


def test_chain_passes_dn_fqans_and_now_to_plugins() -> None:
    plugins = loaded(("one",))
    when = datetime(2024, 5, 1, 12, 0)
    authorize(Chain("x", plugins), ALICE, ["/a", "/b"], now=when)
    assert isinstance(plugins[0].plugin, Recorder)
    req = plugins[0].plugin.asked[0]
    assert (req.dn, req.fqans, req.now, req.credential) == (ALICE, ("/a", "/b"), when, None)


def test_chain_plugin_crash_is_unavailable_not_deny(caplog: pytest.LogCaptureFixture) -> None:
    plugins = loaded(("one",), ("boom", "crash"), ("three",))
    with pytest.raises(LcasUnavailable) as err:
        authorize(Chain("x", plugins), ALICE)
    assert err.value.reason == "boom crashed: RuntimeError: disk on fire?FAKE LOG LINE"
    assert str(err.value) == err.value.reason
    asked = [len(p.plugin.asked) for p in plugins if isinstance(p.plugin, Recorder)]
    assert asked == [1, 1, 0]
    assert "LCAS plugin boom crashed" in caplog.text and "Traceback" in caplog.text


def test_chain_plugin_oserror_is_unavailable_with_file_name() -> None:
    with pytest.raises(LcasUnavailable) as err:
        authorize(Chain("x", loaded(("io", "oserror"))), ALICE)
    assert err.value.reason == "io: /etc/lcas/gone.db: No such file or directory"


def test_chain_plugin_unavailable_is_prefixed_with_plugin_name() -> None:
    with pytest.raises(LcasUnavailable, match=r"^ldap: directory server down$"):
        authorize(Chain("x", loaded(("one",), ("ldap", "unavailable"))), ALICE)


def test_chain_refusal_before_a_fault_is_still_a_deny() -> None:
    # C stops at the first refusal: the crashing plugin is never asked
    plugins = loaded(("one", "deny"), ("boom", "crash"))
    verdict = authorize(Chain("x", plugins), ALICE)
    assert (verdict.allowed, verdict.plugin, verdict.reason) == (False, "one", "told to deny")
    assert isinstance(plugins[1].plugin, Recorder) and plugins[1].plugin.asked == []


def ban_chain(site: Path) -> Chain:
    db = write(site, "lcas.db", 'pluginname="lcas_plugin_example.mod"\n'
                                'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    chain = load_chain(db)
    assert chain.init_failures == ()
    return chain


def test_chain_ban_file_deleted_after_load_is_unavailable(site: Path) -> None:
    chain = ban_chain(site)
    assert not authorize(chain, MALLORY).allowed  # a real ban still denies
    (site / "ban_users.db").unlink()
    for dn in (ALICE, MALLORY):
        with pytest.raises(LcasUnavailable) as err:
            authorize(chain, dn)
        assert err.value.reason == (f"lcas_userban.mod: {site / 'ban_users.db'}: cannot stat: "
                                    "No such file or directory")


def test_chain_ban_file_replaced_by_directory_is_unavailable(site: Path) -> None:
    chain = ban_chain(site)
    (site / "ban_users.db").unlink()
    (site / "ban_users.db").mkdir()
    with pytest.raises(LcasUnavailable, match=r"^lcas_userban\.mod: .*ban_users\.db: is a "
                                              r"directory$"):
        authorize(chain, ALICE)


def test_chain_ban_file_broken_after_load_is_unavailable(site: Path) -> None:
    chain = ban_chain(site)
    write(site, "ban_users.db", '"/CN=someone else"\n"/CN=unterminated\n')
    with pytest.raises(LcasUnavailable, match=r"ban_users\.db:2: unbalanced quote"):
        authorize(chain, ALICE)


def test_chain_ban_file_restored_decides_again(site: Path) -> None:
    chain = ban_chain(site)
    text = (site / "ban_users.db").read_text()
    (site / "ban_users.db").unlink()
    with pytest.raises(LcasUnavailable):
        authorize(chain, MALLORY)
    write(site, "ban_users.db", text)
    verdict = authorize(chain, MALLORY)
    assert (verdict.allowed, verdict.plugin) == (False, "lcas_userban.mod")
    assert authorize(chain, ALICE).allowed


def test_chain_reason_is_one_printable_line() -> None:
    class Liar(Recorder):
        def authorize(self, request: Request) -> Verdict:
            return Verdict.deny("line1\nFAKE LOG LINE")

    chain = Chain("x", [LoadedPlugin(DbEntry(1, "liar"), Liar(("liar",)))])
    assert authorize(chain, ALICE).reason == "line1?FAKE LOG LINE"
