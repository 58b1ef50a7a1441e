"""lcas-run as a real process: decisions, exit codes, --pem verification, errors."""

from __future__ import annotations

import errno
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from fresh_imports import run_main

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


def _open_fifo_for_writing(fifo: Path, proc: subprocess.Popen[str]) -> int:
    """Wait until ``proc`` opens ``fifo`` for reading; it has loaded lcas.db by then."""
    deadline = time.monotonic() + 30
    while True:
        try:
            fd = os.open(fifo, os.O_WRONLY | os.O_NONBLOCK)
        except OSError as exc:
            if exc.errno != errno.ENXIO:  # ENXIO: no reader yet
                raise
        else:
            os.set_blocking(fd, True)
            return fd
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            out, err = proc.communicate()
            pytest.fail(f"lcas-run never read its --pem: {out}{err}")
        time.sleep(0.02)


@pytest.mark.parametrize("as_json", [False, True], ids=["text", "json"])
def test_cli_ban_file_gone_at_decision_time_is_error_exit_2(
    tmp_path: Path, pki: TestPKI, users: dict[str, User], as_json: bool,
) -> None:
    """The ban file is there when lcas.db is loaded and gone when the plugin decides.

    ``--pem`` is a FIFO: lcas-run loads the chain, then blocks reading the proxy
    while the test removes the ban file; only then is the proxy written."""
    db = site(tmp_path)
    fifo = tmp_path / "proxy.fifo"
    os.mkfifo(fifo)
    proxy = Path(pki.proxy(users["alice"], fqans=(DTEAM,), vo="dteam")).read_bytes()
    args = ["--db", str(db), "--pem", str(fifo), "--certdir", pki.certdir,
            "--vomsdir", pki.vomsdir] + (["--json"] if as_json else [])
    proc = subprocess.Popen([sys.executable, "-m", "lcas.cli", *args], text=True,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        fd = _open_fifo_for_writing(fifo, proc)
        ban = tmp_path / "ban_users.db"
        ban.unlink()
        with os.fdopen(fd, "wb") as fh:
            fh.write(proxy)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    reason = f"LCAS unavailable: lcas_userban.mod: {ban}: cannot stat: No such file or directory"
    assert proc.returncode == 2, out + err
    assert err == f"lcas-run: {reason}\n"
    if as_json:
        assert json.loads(out) == {"decision": "error", "reason": reason}
    else:
        assert out == ""


def test_cli_real_ban_still_denies_exit_1(tmp_path: Path) -> None:
    proc = run("--db", str(site(tmp_path)), "--dn", BOB, "--fqan", DTEAM, "--json")
    out = json.loads(proc.stdout)
    assert (proc.returncode, out["decision"], out["plugin"]) == (1, "deny", "lcas_userban.mod")
    assert proc.stderr == ""


def test_cli_init_failure_is_still_a_deny_exit_1(tmp_path: Path) -> None:
    db = site(tmp_path)
    (tmp_path / "ban_users.db").unlink()
    proc = run("--db", str(db), "--dn", ALICE, "--fqan", DTEAM)
    assert proc.returncode == 1
    assert proc.stdout.startswith("deny: lcas_userban.mod: LCAS initialisation failed:")


def test_cli_pem_private_key_is_never_read(tmp_path: Path, pki: TestPKI,
                                           users: dict[str, User]) -> None:
    # As C LCAS: deciding needs the certificates only, so a proxy file whose key block is
    # unreadable is decided like the intact one (and verified all the same).
    proxy = Path(pki.proxy(users["alice"], fqans=(DTEAM,)))
    text = proxy.read_text()
    head = "-----BEGIN RSA PRIVATE KEY-----\n"
    begin = text.index(head) + len(head)
    broken = tmp_path / "broken.pem"
    broken.write_text(text[:begin] + "AAAA\n" + text[text.index("-----END RSA PRIVATE KEY"):])
    for pem in (proxy, broken):
        proc = run("--db", str(site(tmp_path)), "--pem", str(pem), "--certdir", pki.certdir,
                   "--vomsdir", pki.vomsdir, "--json")
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert json.loads(proc.stdout)["fqans"] == [DTEAM]
    untrusted = run("--db", str(site(tmp_path)), "--pem", str(broken), "--certdir",
                    str(tmp_path), "--vomsdir", pki.vomsdir)
    assert untrusted.returncode == 1 and "credential refused" in untrusted.stdout


def test_cli_dn_run_reads_no_plugin_metadata(tmp_path: Path) -> None:
    # The built-in plugins are found without scanning installed distributions, a --dn run
    # loads no credential code, and a plain (not GACL) VOMS auth file needs no XML parser.
    argv = ["--db", str(site(tmp_path)), "--dn", ALICE, "--fqan", DTEAM]
    heavy = ("importlib.metadata", "credentials", "cryptography", "OpenSSL", "lxml")
    _, loaded, printed = run_main("lcas.cli", argv, heavy)
    assert (printed, loaded) == (["allow"], [])
