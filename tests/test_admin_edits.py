"""``scas-admin ban|unban|bans|map add|map rm|maps`` on real site files (no server running).

The live-server side (reload, rejection, policy in force) is tests/test_admin_reload.py.
Here: which files are edited, that nothing but the edit changes (byte for byte), that a
bad edit writes nothing, that the lock makes concurrent admins lose nothing, and that the
real C LCMAPS reads every edited file as the Python server does.
"""

from __future__ import annotations

import fcntl
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from server_harness import Site

from site_admin.cli import main

HERE = Path(__file__).resolve().parent
SCAS_ADMIN = os.path.join(os.path.dirname(sys.executable), "scas-admin")
CAROL = "/DC=org/DC=example/O=Users/CN=Carol Client"
EVE = "/DC=org/DC=example/O=Users/CN=Eve Intruder"

# What a site already has: comments, blank lines, quoted and unquoted keys, a trailing
# comment, tabs, a wildcard, and a last line without a newline.
BAN_USERS = (b"# LCAS ban list, managed by hand\n\n"
             b'"/DC=org/DC=example/CN=Old Ban"   # kept forever\n'
             b"\t/DC=org/DC=example/CN=Unquoted\n"
             b'"/DC=org/DC=example/O=Evil/*"')
BAN_DN = b"# LCMAPS DN bans\n"
BAN_FQAN = b'# FQAN bans\n"/dteam/Role=banned/Capability=NULL"\n'
GRID_MAPFILE = (b"# grid-mapfile\n"
                b'"/DC=org/DC=example/CN=Alice" daemon\n'
                b'"/DC=org/DC=example/CN=Pooled" .cpool # a pool\n')
POOL_MAPFILE = b"# pool accounts\n"


class AdminSite(Site):
    """A harness site whose lcas.db and lcmaps.db name real ban files and grid-mapfiles.

    ``wn``/``execute-now`` runs ban_dn, ban_fqan, then a fixed account (uid 40001);
    ``ce``/``queue`` maps through the grid-mapfile (localaccount).
    """

    def __post_init__(self) -> None:
        super().__post_init__()
        d = Path(self.directory)
        for name, data in (("ban_users.db", BAN_USERS), ("ban_dn.db", BAN_DN),
                           ("ban_fqan.db", BAN_FQAN), ("grid-mapfile", GRID_MAPFILE),
                           ("pool-mapfile", POOL_MAPFILE)):
            (d / name).write_bytes(data)
        (d / "gridmapdir").mkdir()
        (d / "lcas.db").write_text('pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
        self.write_lcmaps_db()

    def write_lcmaps_db(self, uid: str = "40001") -> None:
        d = self.directory
        Path(d, "lcmaps.db").write_text(f"""\
# site lcmaps.db
good = "lcmaps_dummy_good.mod --dummy-uid {uid} --dummy-gid 4000 --dummy-sec-gid 4001"
bandn = "lcmaps_ban_dn.mod -banmapfile {d}/ban_dn.db"
banfqan = "lcmaps_ban_fqan.mod -banmapfile {d}/ban_fqan.db"
local = "lcmaps_localaccount.mod -gridmapfile {d}/grid-mapfile"
pool = "lcmaps_poolaccount.mod -gridmapfile {d}/pool-mapfile -gridmapdir {d}/gridmapdir"
noop = "lcmaps_voms.mod"

glexec_get_account:
noop -> bandn
bandn -> banfqan
banfqan -> good

gatekeeper:
noop -> local

pooled:
noop -> pool
""")

    def path(self, name: str) -> Path:
        return Path(self.directory, name)

    def snapshot(self) -> dict[str, bytes]:
        names = ("ban_users.db", "ban_dn.db", "ban_fqan.db", "grid-mapfile", "pool-mapfile")
        return {n: self.path(n).read_bytes() for n in names}


@pytest.fixture
def site(tmp_path: Path) -> AdminSite:
    s = AdminSite(str(tmp_path))
    s.write_config()
    return s


def admin(site: Site, *argv: str, capsys: pytest.CaptureFixture[str]) -> tuple[int, str, str]:
    """Run ``scas-admin ARGV --config SITE`` in this process: (exit code, stdout, stderr)."""
    capsys.readouterr()
    code = main([*argv, "--config", site.config_path])
    out, err = capsys.readouterr()
    return code, out, err


def test_admin_ban_appends_note_and_entry_and_keeps_every_other_byte(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    before = site.snapshot()
    code, out, err = admin(site, "ban", "--dn", CAROL, "--reason", "stolen key\nrm -rf",
                           capsys=capsys)
    assert code == 0, err
    assert "server not running; the change takes effect at its next start" in out
    after = site.snapshot()
    for name in ("ban_users.db", "ban_dn.db"):  # every DN ban file, LCAS and LCMAPS
        old, new = before[name], after[name]
        base = old if old.endswith(b"\n") else old + b"\n"
        assert new.startswith(base)
        note, entry, end = new[len(base):].split(b"\n")
        assert note.startswith(b"# banned by ") and note.endswith(b": stolen key?rm -rf")
        assert entry == f'"{CAROL}"'.encode() and end == b""
    for name in ("ban_fqan.db", "grid-mapfile", "pool-mapfile"):
        assert after[name] == before[name]
    assert f"{site.directory}/ban_users.db:7" in out and f"{site.directory}/ban_dn.db:3" in out


def test_admin_unban_restores_the_file_byte_for_byte(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    site.path("ban_users.db").write_bytes(BAN_USERS + b"\n")
    before = site.snapshot()
    assert admin(site, "ban", "--dn", CAROL, "--reason", "test", capsys=capsys)[0] == 0
    assert admin(site, "ban", "--fqan", "/dteam/Role=pilot", capsys=capsys)[0] == 0
    assert site.snapshot() != before
    code, _out, err = admin(site, "unban", "--dn", CAROL, capsys=capsys)
    assert code == 0, err
    assert admin(site, "unban", "--fqan", "/dteam/Role=pilot", capsys=capsys)[0] == 0
    assert site.snapshot() == before
    # an entry the site wrote itself goes without touching its neighbours
    assert admin(site, "unban", "--dn", "/DC=org/DC=example/CN=Unquoted", capsys=capsys)[0] == 0
    assert site.path("ban_users.db").read_bytes() == (
        BAN_USERS.replace(b"\t/DC=org/DC=example/CN=Unquoted\n", b"") + b"\n")


def test_admin_ban_twice_or_unban_absent_is_refused_and_writes_nothing(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    # listed in the LCAS file only: the ban completes the other DN ban file
    old_ban = "/DC=org/DC=example/CN=Old Ban"
    code, out, _ = admin(site, "ban", "--dn", old_ban, capsys=capsys)
    assert code == 0 and "ban_dn.db:2" in out and "ban_users.db" not in out
    before = site.snapshot()
    code, _, err = admin(site, "ban", "--dn", old_ban, capsys=capsys)
    assert code == 1 and "is already banned in" in err
    code, _, err = admin(site, "unban", "--dn", CAROL, capsys=capsys)
    assert code == 1 and "is not banned in" in err
    assert err.count("\n") == 1 and err.startswith("scas-admin: ")
    assert site.snapshot() == before


def test_admin_ban_of_a_kind_without_ban_file_is_refused(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    text = site.path("lcmaps.db").read_text()
    site.path("lcmaps.db").write_text(text.replace("bandn -> banfqan\nbanfqan -> good",
                                                   "bandn -> good"))
    code, _, err = admin(site, "ban", "--fqan", "/dteam/Role=pilot", capsys=capsys)
    assert code == 1 and "no FQAN ban file is configured" in err


def test_admin_fqan_ban_goes_to_the_fqan_file_only(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    before = site.snapshot()
    code, _, err = admin(site, "ban", "--fqan", "/dteam/Role=pilot", capsys=capsys)
    assert code == 0, err
    after = site.snapshot()
    assert after["ban_fqan.db"] == before["ban_fqan.db"] + b'"/dteam/Role=pilot"\n'
    assert {n for n in after if after[n] != before[n]} == {"ban_fqan.db"}


@pytest.mark.parametrize("dn", ['/DC=org/CN=Quote" and blank', "/DC=org/CN=ends\\",
                                "/DC=org/CN=two\nlines", "/DC=org/CN=x [y]"])
def test_admin_ban_that_cannot_be_written_is_refused_and_writes_nothing(
    site: AdminSite, capsys: pytest.CaptureFixture[str], dn: str
) -> None:
    before = site.snapshot()
    listing = sorted(os.listdir(site.directory))
    code, _, err = admin(site, "ban", "--dn", dn, capsys=capsys)
    assert code == 1, err
    assert "nothing written" in err or "line break" in err
    assert err.count("\n") == 1
    assert site.snapshot() == before
    assert [n for n in sorted(os.listdir(site.directory)) if not n.endswith(".lock")] == listing


def test_admin_dn_with_a_quote_and_no_blank_is_written_unquoted(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    dn = '/DC=org/CN=O"Brien'
    assert admin(site, "ban", "--dn", dn, capsys=capsys)[0] == 0
    assert site.path("ban_dn.db").read_bytes().endswith(f"\n{dn}\n".encode())
    _code, out, _ = admin(site, "bans", "--json", capsys=capsys)
    keys = [e["key"] for f in json.loads(out)["files"] for e in f["entries"]]
    assert keys.count(dn) == 2


def test_admin_edit_of_a_file_that_does_not_parse_is_refused(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    site.path("ban_dn.db").write_bytes(b'# broken\n"/DC=org/CN=unclosed\n')
    before = site.snapshot()
    code, _, err = admin(site, "ban", "--dn", CAROL, capsys=capsys)
    assert code == 1
    assert f"{site.directory}/ban_dn.db:2: unbalanced quote in key" in err
    assert site.snapshot() == before  # the good LCAS file is not edited alone either
    code, _out, err = admin(site, "bans", capsys=capsys)
    assert code == 1 and "ban_dn.db:2: unbalanced quote" in err


def test_admin_map_add_routes_by_kind_and_map_rm_restores(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    before = site.snapshot()
    code, out, err = admin(site, "map", "add", CAROL, "bin", capsys=capsys)
    assert code == 0, err
    code, out, err = admin(site, "map", "add", CAROL, ".cpool", capsys=capsys)
    assert code == 0, err
    after = site.snapshot()
    assert after["grid-mapfile"] == before["grid-mapfile"] + f'"{CAROL}" bin\n'.encode()
    assert after["pool-mapfile"] == before["pool-mapfile"] + f'"{CAROL}" .cpool\n'.encode()
    code, _, err = admin(site, "map", "add", CAROL, "daemon", capsys=capsys)
    assert code == 1 and "already has a local mapping" in err
    code, out, _ = admin(site, "maps", "--json", capsys=capsys)
    files = {f["path"]: f for f in json.loads(out)["files"]}
    local = files[str(site.path("grid-mapfile"))]
    assert local["kinds"] == ["local"]
    assert {"key": CAROL, "line": 4, "mappings": ["bin"], "note": None} in local["entries"]
    code, out, err = admin(site, "map", "rm", CAROL, capsys=capsys)
    assert code == 0, err
    assert "grid-mapfile:4" in out and "pool-mapfile:2" in out
    assert site.snapshot() == before
    code, _, err = admin(site, "map", "rm", CAROL, capsys=capsys)
    assert code == 1 and "is not in" in err


@pytest.mark.parametrize("account", ["two words", "a,b", "#x", ".", "x\\y", ""])
def test_admin_map_add_bad_account_is_a_usage_error(
    site: AdminSite, capsys: pytest.CaptureFixture[str], account: str
) -> None:
    before = site.snapshot()
    code, _, err = admin(site, "map", "add", CAROL, account, capsys=capsys)
    assert code == 2 and "not an account or .pool name" in err
    assert site.snapshot() == before


def test_admin_write_is_a_rename_that_keeps_mode_and_owner(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    path = site.path("ban_dn.db")
    os.chmod(path, 0o640)
    if os.geteuid() == 0:
        os.chown(path, 1, 1)
    st = os.stat(path)
    assert admin(site, "ban", "--dn", CAROL, capsys=capsys)[0] == 0
    new = os.stat(path)
    assert new.st_ino != st.st_ino  # a new inode renamed over: readers see old or new
    assert (new.st_mode, new.st_uid, new.st_gid) == (st.st_mode, st.st_uid, st.st_gid)
    assert not [n for n in os.listdir(site.directory) if n.endswith(".tmp")]


def test_admin_edit_waits_for_the_lock_held_by_another_admin(site: AdminSite) -> None:
    lock = site.path(".ban_dn.db.lock")
    fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.lockf(fd, fcntl.LOCK_EX)
    try:
        proc = subprocess.Popen([SCAS_ADMIN, "ban", "--dn", CAROL, "--config", site.config_path],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        time.sleep(2.0)
        assert proc.poll() is None, proc.communicate()
        assert site.path("ban_dn.db").read_bytes() == BAN_DN
        assert site.path("ban_users.db").read_bytes() == BAN_USERS  # all or nothing
    finally:
        os.close(fd)
    _out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert site.path("ban_dn.db").read_bytes() == BAN_DN + f'"{CAROL}"\n'.encode()


def _ban_many(site: Site, prefix: str, count: int) -> subprocess.Popen[str]:
    script = (
        "import sys\nfrom site_admin.cli import main\n"
        f"for i in range({count}):\n"
        f"    code = main(['ban', '--dn', '{prefix}%02d' % i, '--no-reload', '--config', "
        f"{site.config_path!r}])\n"
        "    if code:\n        sys.exit(code)\n"
    )
    return subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.DEVNULL,
                            stderr=subprocess.PIPE, text=True)


def test_admin_concurrent_bans_from_two_processes_all_land(site: AdminSite) -> None:
    from sitefiles import mapfile

    procs = [_ban_many(site, f"/DC=org/DC=example/CN=Admin{n} User", 20) for n in "AB"]
    for proc in procs:
        _, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
    expected = {f"/DC=org/DC=example/CN=Admin{n} User{i:02d}" for n in "AB" for i in range(20)}
    for name, head in (("ban_users.db", BAN_USERS + b"\n"), ("ban_dn.db", BAN_DN)):
        data = site.path(name).read_bytes()
        assert data.startswith(head)
        parsed = mapfile.parse(data, name)
        assert parsed.error is None
        keys = [line.key for line in parsed.lines]
        assert len(keys) == len(set(keys))
        assert expected <= set(keys)
        assert len(data.split(b"\n")) == len(head.split(b"\n")) + 40


def test_admin_stale_pidfile_naming_another_process_is_not_signalled(
    site: AdminSite, capsys: pytest.CaptureFixture[str]
) -> None:
    """After a crash the pid may be reused: SIGHUP would kill it. Nothing is written."""
    pidfile = site.path("scas.pid")
    site.write_config(pidfile=str(pidfile))
    stranger = subprocess.Popen(["sleep", "60"])
    try:
        pidfile.write_text(f"{stranger.pid}\n")
        before = site.snapshot()
        code, _, err = admin(site, "ban", "--dn", CAROL, capsys=capsys)
        assert code == 2 and "not signalling" in err
        assert stranger.poll() is None
        assert site.snapshot() == before
    finally:
        stranger.kill()
        stranger.wait()
    code, out, err = admin(site, "ban", "--dn", CAROL, capsys=capsys)  # pid now dead
    assert code == 0, err
    assert "server not running" in out


def test_admin_json_output_of_an_edit(site: AdminSite, capsys: pytest.CaptureFixture[str]
                                      ) -> None:
    code, out, _ = admin(site, "ban", "--dn", CAROL, "--json", capsys=capsys)
    assert code == 0
    doc = json.loads(out)
    assert doc["action"] == "ban" and doc["kind"] == "dn" and doc["value"] == CAROL
    assert {f["path"] for f in doc["files"]} == {str(site.path("ban_users.db")),
                                                 str(site.path("ban_dn.db"))}
    assert doc["reload"] == {"live": False, "pid": None, "generation": None}
    code, out, _ = admin(site, "unban", "--dn", CAROL, "--json", "--no-reload", capsys=capsys)
    assert code == 0 and json.loads(out)["reload"] is None


# --- the C oracle reads what we wrote ----------------------------------------------------

sys.path.insert(0, str(HERE / "compat"))
from oracle import Oracle, build_oracle, missing_reason, run_oracle  # noqa: E402

WILD = "/DC=org/DC=example/O=Wild/*"


Verdict = tuple[str, str | None]


def _c_and_python(oracle: Oracle, cfg_dir: Path, dn: str, fqans: tuple[str, ...]
                  ) -> tuple[Verdict, Verdict]:
    """(decision, username) from C LCMAPS and from lcmaps-run on the same lcmaps.db."""
    args = ["--dn", dn, *[a for f in fqans for a in ("--fqan", f)]]
    _, c_out = run_oracle(oracle, "--no-lcas", *args, config_dir=cfg_dir)
    py = subprocess.run([os.path.join(os.path.dirname(sys.executable), "lcmaps-run"), "--db",
                         str(cfg_dir / "lcmaps.db"), *args, "--json"],
                        capture_output=True, text=True, timeout=60)
    py_out = json.loads(py.stdout)
    return (c_out["decision"], c_out.get("username")), (py_out["decision"], py_out["username"])


@pytest.mark.skipif(missing_reason() is not None, reason=f"C oracle: {missing_reason()}")
def test_admin_edited_files_read_the_same_by_c_lcmaps(
    site: AdminSite, capsys: pytest.CaptureFixture[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    quoted, backslash = '/DC=org/CN=O"Brien', "/DC=org/CN=Back\\slash"
    wild_user = "/DC=org/DC=example/O=Wild/CN=Any"
    unquoted = "/DC=org/DC=example/CN=Unquoted"
    edits = [("ban", "--dn", EVE, "--reason", "compromised"), ("ban", "--dn", quoted),
             ("ban", "--dn", WILD), ("ban", "--fqan", "/dteam/Role=pilot"),
             ("unban", "--dn", unquoted), ("map", "add", CAROL, "bin"),
             *[("map", "add", dn, "daemon") for dn in (EVE, quoted, wild_user, unquoted,
                                                       backslash)]]
    for argv in edits:
        code, _, err = admin(site, *argv, capsys=capsys)
        assert code == 0, f"{argv}: {err}"
    oracle = build_oracle(tmp_path_factory.mktemp("oracle-build"))
    probes: list[tuple[str, tuple[str, ...]]] = [
        (EVE, ()), (quoted, ()), (wild_user, ()), (unquoted, ()), (CAROL, ()),
        (CAROL, ("/dteam/Role=pilot",)), (backslash, ()), ("/DC=org/DC=example/CN=Alice", ())]
    seen: dict[str, dict[tuple[str, tuple[str, ...]], Verdict]] = {}
    # each edited ban file read by C's lcmaps_ban_*.mod, then the edited grid-mapfile
    for name, module in (("ban_users.db", "lcmaps_ban_dn.mod"),
                         ("ban_dn.db", "lcmaps_ban_dn.mod"),
                         ("ban_fqan.db", "lcmaps_ban_fqan.mod")):
        cfg_dir = tmp_path_factory.mktemp(name.replace(".", "-"))
        (cfg_dir / "lcmaps.db").write_text(
            "path = /usr/lib/lcmaps\n"
            f'ban = "{module} -banmapfile {site.path(name)}"\n'
            f'local = "lcmaps_localaccount.mod -gridmapfile {site.path("grid-mapfile")}"\n'
            'good = "lcmaps_dummy_good.mod"\np:\nban -> local\nlocal -> good\n')
        seen[name] = {}
        for probe in probes:
            c, py = _c_and_python(oracle, cfg_dir, *probe)
            assert c == py, f"{name}: {probe}: C {c}, Python {py}"
            seen[name][probe] = c
    denied, daemon = ("deny", None), ("permit", "daemon")
    for name in ("ban_users.db", "ban_dn.db"):  # banned DNs are refused by C too
        assert seen[name][(EVE, ())] == seen[name][(quoted, ())] == denied
        assert seen[name][(wild_user, ())] == denied
        assert seen[name][(CAROL, ("/dteam/Role=pilot",))] == ("permit", "bin")
        assert seen[name][(unquoted, ())] == daemon  # unbanned
    fqan = seen["ban_fqan.db"]  # DN bans are not there: the mapped DNs map in C
    assert fqan[(EVE, ())] == fqan[(quoted, ())] == fqan[(wild_user, ())] == daemon
    assert fqan[(backslash, ())] == daemon
    assert fqan[(CAROL, ())] == ("permit", "bin")
    assert fqan[(CAROL, ("/dteam/Role=pilot",))] == denied
