"""lcmaps-run and bad VOMS ACs: C LCMAPS ignores them and maps by DN; so do we by
default, while --strict-voms fails closed. Valid FQANs are used either way."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from fresh_imports import run_main

from testkit.pki import TestPKI, User

DTEAM = "/dteam/Role=NULL/Capability=NULL"


def _run(db: Path, pem: str, pki: TestPKI, *extra: str) -> tuple[int, dict, str]:
    proc = subprocess.run(
        [sys.executable, "-m", "lcmaps.cli", "--db", str(db), "--pem", pem,
         "--certdir", pki.certdir, "--vomsdir", pki.vomsdir, *extra],
        capture_output=True, text=True, timeout=60,
    )
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1]), proc.stderr


def _site(tmp_path: Path, user: User) -> Path:
    (tmp_path / "grid-mapfile").write_text(f'"{user.dn}" nobody\n')
    (tmp_path / "voms-mapfile").write_text(f'"{DTEAM}" nobody\n')
    db = tmp_path / "lcmaps.db"
    db.write_text(
        f'local = "lcmaps_localaccount.mod" "-gridmapfile {tmp_path}/grid-mapfile"\n'
        f'vomslocal = "lcmaps_voms_localaccount.mod" "-gridmapfile {tmp_path}/voms-mapfile"\n'
        'good = "lcmaps_dummy_good.mod"\n'
        "vomsonly:\nvomslocal -> good\n"
        "standard:\nlocal -> good\n"
    )
    return db


def test_lcmaps_run_bad_ac_ignored_like_c(pki: TestPKI, users: dict[str, User],
                                          tmp_path: Path) -> None:
    alice = users["alice"]
    db = _site(tmp_path, alice)
    forged = pki.proxy(alice, fqans=[DTEAM], ac_forged=True)
    code, out, err = _run(db, forged, pki, "--policy", "vomsonly")
    assert code == 1 and out["decision"] == "deny"  # the forged FQAN was not used
    code, out, err = _run(db, forged, pki)
    assert (code, out["decision"], out["username"]) == (0, "permit", "nobody")
    assert "VOMS attributes ignored" in err and "not signed by" in err
    code, out, _ = _run(db, forged, pki, "--strict-voms")
    assert code == 1 and "VOMS attributes rejected" in out["reason"]


def test_lcmaps_run_valid_ac_maps_by_fqan(pki: TestPKI, users: dict[str, User],
                                          tmp_path: Path) -> None:
    db = _site(tmp_path, users["alice"])
    good = pki.proxy(users["bob"], fqans=[DTEAM])  # bob is not in the grid-mapfile
    code, out, _ = _run(db, good, pki, "--strict-voms")
    assert (code, out["username"]) == (0, "nobody")


def test_lcmaps_run_voms_proxy_imports_only_what_it_uses(pki: TestPKI, users: dict[str, User],
                                                        tmp_path: Path) -> None:
    # Start-up is a feature of a one-shot: mapping a VOMS proxy with local plugins needs no
    # lease store, no key or serialization code, no pyasn1 and no entry-point scan.
    db = _site(tmp_path, users["bob"])
    good = pki.proxy(users["bob"], fqans=[DTEAM])
    argv = ["--db", str(db), "--pem", good, "--certdir", pki.certdir, "--vomsdir", pki.vomsdir,
            "--strict-voms"]
    unused = ("leases", "cryptography.hazmat.primitives.serialization", "pyasn1",
              "importlib.metadata", "logging")
    assert run_main("lcmaps.cli", argv, unused)[:2] == (0, [])
