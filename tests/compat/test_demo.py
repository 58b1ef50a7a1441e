"""Every LCMAPS case of the oracle's demo.sh, C and Python side by side.

Each implementation gets its own copy of the demo site (same file names,
created in the same order on the same file system, so ``readdir`` gives
both the same order; checked first). The cases run in demo order because
they build on each other's leases. Case A (LCAS) belongs to the LCAS tests.
"""

from __future__ import annotations

import os

import pytest
from oracle import run_oracle
from sitecfg import compared, cred_env, make_site, run_python  # type: ignore[attr-defined]


def _cases(creds, uids):
    p = creds.proxy
    zed = "/DC=org/DC=example/O=Users/CN=Zed"
    return [
        ("B1", ["--pem", str(p("alice"))]),
        ("B2", ["--pem", str(p("alice"))]),
        ("B3", ["--pem", str(p("bob"))]),
        ("B4", ["--pem", str(p("carol"))]),
        ("B5", ["--pem", str(p("dave"))]),
        ("C1", ["--pem", str(p("eve"))]),
        ("C2", ["--pem", str(p("bob", "voms_banned"))]),
        ("D1", ["--pem", str(p("frank"))]),
        ("E1", ["--pem", str(p("alice", "voms_prod_first"))]),
        ("E2", ["--pem", str(p("alice", "voms_dteam_first"))]),
        ("F1", ["--pem", str(p("alice", "voms_prod_first")), "--policy", "standard"]),
        ("F2", ["--pem", str(p("alice")), "--policy", "voms"]),
        ("F3", ["--pem", str(p("alice")), "--policy", "nosuch"]),
        ("G1", ["--policy", "fqan", "--dn", zed, "--fqan", "/dteam/Role=NULL/Capability=NULL"]),
        ("G2", ["--policy", "fqan", "--dn", zed, "--fqan", "/dteam"]),
        ("G3", ["--pem", str(p("frank")), "--policy", "enforce", "--policy", "standard"]),
        ("H1", ["--pem", str(p("jurgen"))]),
        ("P1", ["--pem", str(p("frank")), "--policy", "enforce"]),
    ]


EXPECTED = {  # what the demo shows, for the c-prefixed accounts
    "B1": "permit", "B2": "permit", "B3": "permit", "B4": "permit", "B5": "deny",
    "C1": "deny", "C2": "permit", "D1": "permit", "E1": "permit", "E2": "permit",
    "F1": "permit", "F2": "deny", "F3": "deny", "G1": "permit", "G2": "deny",
    "G3": "permit", "H1": "permit", "P1": "permit",
}


def test_demo_cases_match_c(oracle, creds, test_accounts, tmp_path):
    env = cred_env(creds.certdir, creds.vomsdir)
    c_cfg = make_site(tmp_path / "c", creds.certdir)
    py_cfg = make_site(tmp_path / "py", creds.certdir)
    assert os.listdir(tmp_path / "c" / "gridmapdir") == os.listdir(tmp_path / "py" / "gridmapdir")
    mismatches = []
    for label, args in _cases(creds, test_accounts):
        c_args = (["--no-lcas"] if "--dn" in args else []) + args
        c_rc, c_out = run_oracle(oracle, *c_args, config_dir=c_cfg, env=env)
        py_rc, py_out = run_python(py_cfg, *args, env=env)
        assert c_out.get("decision") == EXPECTED[label], (label, c_out)
        if (c_rc, compared(c_out)) != (py_rc, compared(py_out)):
            mismatches.append((label, c_out, py_out))
    assert mismatches == []
    # both gridmapdirs hold the same leases on the same accounts
    def leases(cfg):
        gmd = cfg.parent / "gridmapdir"
        return sorted((n, os.stat(gmd / n).st_nlink) for n in os.listdir(gmd))

    assert leases(c_cfg) == leases(py_cfg)


def test_demo_verification_mode_c8_decision(oracle, creds, test_accounts, tmp_path):
    """I1: C 1.7.1 denies a correct plain lease in verify mode (quirk C8); we
    verify the plain lease and permit. Both agree on a wrong uid (deny)."""
    env = cred_env(creds.certdir, creds.vomsdir)
    c_cfg = make_site(tmp_path / "c", creds.certdir)
    py_cfg = make_site(tmp_path / "py", creds.certdir)
    bob = str(creds.proxy("bob"))
    c_rc, c_lease = run_oracle(oracle, "--pem", bob, config_dir=c_cfg, env=env)
    py_rc, py_lease = run_python(py_cfg, "--pem", bob, env=env)
    assert (c_rc, py_rc) == (0, 0)
    assert c_lease["username"] == py_lease["username"]
    uid, gid = c_lease["uid"], c_lease["pgid"]
    spec = f"{uid}:{gid}:{gid}"
    _, c_out = run_oracle(oracle, "--pem", bob, "--verify", spec, config_dir=c_cfg, env=env)
    _, py_out = run_python(py_cfg, "--pem", bob, "--verify", spec, env=env)
    assert c_out["decision"] == "deny" and py_out["decision"] == "permit"
    assert {k: c_out[k] for k in ("uid", "username", "pgids", "sgids")} == {
        k: py_out[k] for k in ("uid", "username", "pgids", "sgids")}
    wrong = f"{test_accounts['cpool001'] if uid != test_accounts['cpool001'] else uid + 1}:{gid}:"
    assert run_oracle(oracle, "--pem", bob, "--verify", wrong, config_dir=c_cfg, env=env)[0] == 1
    assert run_python(py_cfg, "--pem", bob, "--verify", wrong, env=env)[0] == 1


pytestmark = pytest.mark.slow
