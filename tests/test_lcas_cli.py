"""lcas-run as a real process: decisions, exit codes, --pem verification, errors."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from testkit.pki import TestPKI, User

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
BOB = "/DC=org/DC=example/O=Users/CN=Bob Jones"
DTEAM = "/dteam/Role=NULL/Capability=NULL"


def run(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "lcas.cli", *args], capture_output=True,
                          text=True, timeout=60)


def site(tmp: Path) -> Path:
    (tmp / "ban_users.db").write_text(f'"{BOB}"\n')
    (tmp / "vo.auth").write_text('"/dteam/*"\n')
    db = tmp / "lcas.db"
    db.write_text('pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n'
                  'pluginname=lcas_voms.mod,pluginargs="-authfile vo.auth"\n')
    return db


def test_cli_allow_exit_0(tmp_path: Path) -> None:
    proc = run("--db", str(site(tmp_path)), "--dn", ALICE, "--fqan", DTEAM)
    assert (proc.returncode, proc.stdout) == (0, "allow\n")


def test_cli_deny_names_plugin_and_reason(tmp_path: Path) -> None:
    proc = run("--db", str(site(tmp_path)), "--dn", BOB, "--fqan", DTEAM)
    assert proc.returncode == 1
    assert proc.stdout.startswith("deny: lcas_userban.mod: user is banned")


def test_cli_json_deny(tmp_path: Path) -> None:
    proc = run("--db", str(site(tmp_path)), "--dn", ALICE, "--fqan", "/atlas", "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 1
    assert out["decision"] == "deny" and out["plugin"] == "lcas_voms.mod"
    assert out["fqans"] == ["/atlas"] and "no FQAN is authorised" in out["reason"]


def test_cli_malformed_db_exit_2(tmp_path: Path) -> None:
    db = tmp_path / "lcas.db"
    db.write_text('# x\npluginname="lcas_userban.mod",pluginargs="ban\n')
    proc = run("--db", str(db), "--dn", ALICE)
    assert proc.returncode == 2
    assert f"{db}:2: missing closing quote" in proc.stderr
    assert proc.stdout == ""


def test_cli_missing_db_exit_2(tmp_path: Path) -> None:
    proc = run("--db", str(tmp_path / "none.db"), "--dn", ALICE, "--json")
    assert proc.returncode == 2
    assert json.loads(proc.stdout)["decision"] == "error"


def test_cli_empty_db_denies(tmp_path: Path) -> None:
    db = tmp_path / "lcas.db"
    db.write_text("")
    proc = run("--db", str(db), "--dn", ALICE)
    assert proc.returncode == 1 and "no authorization modules" in proc.stdout


def test_cli_now_drives_timeslots(tmp_path: Path) -> None:
    (tmp_path / "ts.db").write_text("0-0 8-18 * * * 1-5\n")
    db = tmp_path / "lcas.db"
    db.write_text('pluginname=lcas_timeslots.mod,pluginargs=ts.db\n')
    assert run("--db", str(db), "--dn", ALICE, "--now", "2024-05-06T09:00").returncode == 0
    late = run("--db", str(db), "--dn", ALICE, "--now", "2024-05-06T19:00")
    assert late.returncode == 1 and "outside every time slot" in late.stdout
    assert run("--db", str(db), "--dn", ALICE, "--now", "tomorrow").returncode == 2


def test_cli_pem_verified_fqans_from_proxy(tmp_path: Path, pki: TestPKI,
                                           users: dict[str, User]) -> None:
    db = site(tmp_path)
    proxy = pki.proxy(users["alice"], fqans=(DTEAM,), vo="dteam")
    proc = run("--db", str(db), "--pem", proxy, "--certdir", pki.certdir,
               "--vomsdir", pki.vomsdir, "--json")
    out = json.loads(proc.stdout)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert out["dn"] == ALICE and out["fqans"] == [DTEAM]
    banned = run("--db", str(db), "--pem", pki.proxy(users["bob"], fqans=(DTEAM,)),
                 "--certdir", pki.certdir, "--vomsdir", pki.vomsdir)
    assert banned.returncode == 1 and "lcas_userban.mod" in banned.stdout


def test_cli_pem_untrusted_is_a_deny(tmp_path: Path, pki: TestPKI,
                                     users: dict[str, User]) -> None:
    proxy = pki.proxy(users["alice"], fqans=(DTEAM,))
    proc = run("--db", str(site(tmp_path)), "--pem", proxy, "--certdir", str(tmp_path),
               "--vomsdir", pki.vomsdir)
    assert proc.returncode == 1 and proc.stdout.startswith("deny: credential refused:")


def test_cli_unreadable_pem_exit_2(tmp_path: Path) -> None:
    bad = tmp_path / "proxy.pem"
    bad.write_text("not a certificate")
    proc = run("--db", str(site(tmp_path)), "--pem", str(bad))
    assert proc.returncode == 2 and "cannot read credential" in proc.stderr


def test_cli_fqan_with_pem_is_usage_error(tmp_path: Path) -> None:
    proc = run("--db", str(site(tmp_path)), "--pem", "x", "--fqan", DTEAM)
    assert proc.returncode == 2
