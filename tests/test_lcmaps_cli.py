"""lcmaps-run as a user runs it: one JSON line, exit 0/1/2."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fresh_imports import run_main

DB = (
    "path = /usr/lib/lcmaps\n"
    'acct = "lcmaps_dummy_good.mod --dummy-uid 0 --dummy-gid 0"\n'
    "bad = lcmaps_dummy_bad.mod\n"
    "ok:\nacct -> lcmaps_voms.mod\n"
    "no:\nbad -> acct\n"
)


def run(*args: str) -> tuple[int, dict | None, str]:
    p = subprocess.run([sys.executable, "-m", "lcmaps.cli", *args], capture_output=True,
                       text=True, timeout=60)
    out = p.stdout.strip()
    return p.returncode, (json.loads(out) if out else None), p.stderr


def test_lcmaps_cli_permit_prints_account(tmp_path):
    (tmp_path / "lcmaps.db").write_text(DB)
    rc, out, _ = run("--db", str(tmp_path / "lcmaps.db"), "--dn", "/CN=a", "--json")
    assert rc == 0
    assert out == {"decision": "permit", "uid": 0, "username": "root", "pgid": 0,
                   "pgids": [0], "sgids": [], "poolindex": "dummy%200%200", "reason": None}


def test_lcmaps_cli_deny_exit_1(tmp_path):
    (tmp_path / "lcmaps.db").write_text(DB)
    rc, out, _ = run("--db", str(tmp_path / "lcmaps.db"), "--dn", "/CN=a", "--policy", "no")
    assert rc == 1 and out is not None
    assert out["decision"] == "deny" and out["uid"] is None and out["reason"]


def test_lcmaps_cli_malformed_db_exit_2_with_file_line(tmp_path):
    db = tmp_path / "lcmaps.db"
    db.write_text(DB + "x = y\n")
    rc, out, err = run("--db", str(db), "--dn", "/CN=a")
    assert rc == 2
    assert err.strip() == f"{db}:8: syntax error near '='"
    assert out is not None and out["decision"] == "error"


def test_lcmaps_cli_unknown_plugin_argument_exit_2(tmp_path):
    db = tmp_path / "lcmaps.db"
    db.write_text('l = "lcmaps_localaccount.mod -gridmapfile /x -bogus"\np:\n'
                  "l -> lcmaps_voms.mod\n")
    rc, _, err = run("--db", str(db), "--dn", "/CN=a")
    assert rc == 2 and "unknown argument '-bogus'" in err and err.startswith(f"{db}:3: ")


def test_lcmaps_cli_usage_errors_exit_2(tmp_path):
    assert run("--dn", "/CN=a")[0] == 2  # no --db
    assert run("--db", "x", "--dn", "/CN=a", "--pem", "p")[0] == 2
    assert run("--db", "x", "--dn", "/CN=a", "--verify", "1:2:3")[0] == 2


def test_lcmaps_cli_unreadable_pem_is_error(tmp_path):
    (tmp_path / "lcmaps.db").write_text(DB)
    (tmp_path / "p.pem").write_text("not a pem")
    rc, out, _ = run("--db", str(tmp_path / "lcmaps.db"), "--pem", str(tmp_path / "p.pem"))
    assert rc == 2 and out is not None and out["decision"] == "error"


def test_lcmaps_cli_import_is_lean():
    code = ("import sys, lcmaps.cli; bad = [m for m in ('flask', 'zeep', 'requests', "
            "'OpenSSL', 'cryptography') if m in sys.modules]; print(bad)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.stdout.strip() == "[]"


def _lean_run(*argv: str) -> list[str]:
    """The heavy modules one lcmaps-run in a fresh interpreter imported."""
    heavy = ("importlib.metadata", "credentials", "cryptography", "OpenSSL", "pyasn1", "logging",
             "leases", "lcmaps.plugins.scas_client", "lcmaps.plugins.ldap_enf", "client")
    return run_main("lcmaps.cli", argv, heavy)[1]


def test_lcmaps_cli_dn_run_imports_only_what_it_uses(tmp_path):
    # The built-in plugins need no entry-point scan, and nothing loads credential code or a
    # plugin lcmaps.db does not name.
    (tmp_path / "lcmaps.db").write_text(DB)
    assert _lean_run("--db", str(tmp_path / "lcmaps.db"), "--dn", "/CN=a") == []


def _proxy_with(pem: str, key_block: str | None) -> str:
    text = Path(pem).read_text()
    begin = text.index("-----BEGIN RSA PRIVATE KEY-----")
    end = text.index("-----END RSA PRIVATE KEY-----") + len("-----END RSA PRIVATE KEY-----\n")
    out = Path(f"{pem}.edited")
    out.write_text(text[:begin] + (key_block or "") + text[end:])
    return str(out)


def test_lcmaps_cli_never_reads_the_private_key(tmp_path, pki, users):
    # C LCMAPS maps a proxy file without reading its key; so does lcmaps-run: a key that
    # cannot be parsed, a key of another proxy, or none at all change nothing.
    alice = users["alice"]
    (tmp_path / "grid-mapfile").write_text(f'"{alice.dn}" nobody\n')
    db = tmp_path / "lcmaps.db"
    db.write_text(f'local = "lcmaps_localaccount.mod" "-gridmapfile {tmp_path}/grid-mapfile"\n'
                  "p:\nlocal -> lcmaps_dummy_good.mod\n")
    proxy = pki.proxy(alice)
    other = Path(pki.proxy(alice)).read_text()
    other_key = other[other.index("-----BEGIN RSA"):other.index("-----END RSA PRIVATE KEY")]
    for pem in (proxy, _proxy_with(proxy, "-----BEGIN RSA PRIVATE KEY-----\nAAAA\n"
                                          "-----END RSA PRIVATE KEY-----\n"),
                _proxy_with(proxy, other_key + "-----END RSA PRIVATE KEY-----\n"),
                _proxy_with(proxy, None)):
        rc, out, err = run("--db", str(db), "--pem", pem)
        assert (rc, out["username"]) == (0, "nobody"), err
    rc, out, err = run("--db", str(db), "--pem", str(tmp_path / "missing.pem"))
    assert rc == 2 and out["reason"].startswith("cannot read credential: ")
    assert "missing.pem: cannot read (No such file or directory)" in out["reason"]
