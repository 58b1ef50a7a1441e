"""C and Python LCMAPS taking turns on ONE gridmapdir: they must agree and
never lease one account to two credentials."""

from __future__ import annotations

import os
from collections import Counter

import pytest
from oracle import run_oracle
from sitecfg import compared, cred_env, make_site, run_python

pytestmark = pytest.mark.slow


def _check_directory(gmd):
    """Every inode is linked at most twice: one account entry plus one lease."""
    inodes = Counter(os.lstat(gmd / n).st_ino for n in os.listdir(gmd))
    assert max(inodes.values()) <= 2
    for n in os.listdir(gmd):
        assert os.lstat(gmd / n).st_nlink <= 2


def test_mixed_fleet_alternating_leases_agree(oracle, creds, test_accounts, tmp_path):
    env = cred_env(creds.certdir, creds.vomsdir)
    cfg = make_site(tmp_path / "site", creds.certdir)
    gmd = tmp_path / "site" / "gridmapdir"

    def c(*a):
        return run_oracle(oracle, *a, config_dir=cfg, env=env)

    def py(*a):
        return run_python(cfg, *a, env=env)

    alice, bob, carol, dave = (str(creds.proxy(u)) for u in ("alice", "bob", "carol", "dave"))
    # first lease by C, reuse by Python
    rc1, first = c("--pem", alice)
    rc2, again = py("--pem", alice)
    assert (rc1, rc2) == (0, 0) and compared(first) == compared(again)
    # first lease by Python, reuse by C
    rc1, first = py("--pem", bob)
    rc2, again = c("--pem", bob)
    assert (rc1, rc2) == (0, 0) and compared(first) == compared(again)
    # the last free account goes to carol (C); both then see the pool exhausted
    rc, carol_out = c("--pem", carol)
    assert rc == 0 and carol_out["username"] not in (first["username"], again["username"])
    assert py("--pem", dave)[0] == 1
    assert c("--pem", dave)[0] == 1
    users = {py("--pem", p)[1]["username"] for p in (alice, bob, carol)}
    assert users == {"cpool001", "cpool002", "cpool003"}
    _check_directory(gmd)


def test_mixed_fleet_inconsistent_lease_refused_by_both(oracle, creds, test_accounts, tmp_path):
    env = cred_env(creds.certdir, creds.vomsdir)
    cfg = make_site(tmp_path / "site", creds.certdir)
    gmd = tmp_path / "site" / "gridmapdir"
    # alice's lease points into another pool (cdteam001): "wrong pool-entry"
    os.link(gmd / "cdteam001", gmd / "%2fdc%3dorg%2fdc%3dexample%2fo%3dusers%2fcn%3dalice%20smith")
    alice = str(creds.proxy("alice"))
    c_rc, c_out = run_oracle(oracle, "--pem", alice, "--policy", "standard", config_dir=cfg,
                             env=env)
    py_rc, py_out = run_python(cfg, "--pem", alice, "--policy", "standard", env=env)
    assert (c_rc, py_rc) == (1, 1)
    assert compared(c_out) == compared(py_out)
    _check_directory(gmd)
    assert os.lstat(gmd / "cdteam001").st_nlink == 2  # nobody "repaired" it
