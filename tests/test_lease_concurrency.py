"""Leases made by many real processes at once, and by a process killed mid-run.

Invariants checked on the directory afterwards (what a C host sharing it
relies on): every pool entry has link count <= 2, every lease file is hard
linked to exactly one pool entry, and no account is handed to two DNs.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path

import pytest

from leases.gridmapdir import GridmapDir, in_pool, lease_name

pytestmark = pytest.mark.slow

WORKER = r"""
import json, os, sys, time
from leases.gridmapdir import GridmapDir, GridmapDirError, LeaseRace, PoolExhausted
path, go, first, last, step = sys.argv[1], sys.argv[2], *map(int, sys.argv[3:6])
while not os.path.exists(go):
    time.sleep(0.001)
gmd = GridmapDir(path)
for i in range(first, last, step):
    dn = f"/DC=org/DC=example/CN=User {i}"
    for _ in range(100):
        try:
            result = gmd.acquire("opool", dn).account
        except PoolExhausted:
            result = "EXHAUSTED"
        except LeaseRace:
            continue  # both racers backed out: ask again, as a client would
        except GridmapDirError as exc:
            result = f"ERROR {exc}"
        break
    else:
        result = "RACE"
    print(json.dumps([dn, result]), flush=True)
"""


def make_pool(tmp_path: Path, size: int) -> Path:
    d = tmp_path / "gridmapdir"
    d.mkdir()
    for i in range(1, size + 1):
        (d / f"opool{i:04d}").touch()
    (d / "root").touch()
    (d / "odteam0001").touch()
    return d


def spawn(d: Path, go: Path, first: int, last: int, step: int) -> subprocess.Popen[str]:
    args = [sys.executable, "-c", WORKER, str(d), str(go), str(first), str(last), str(step)]
    return subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def check_consistent(d: Path) -> dict[str, str]:
    """Assert the link-count invariants; return lease name -> pool entry."""
    by_inode: dict[int, list[str]] = {}
    for name in os.listdir(d):
        st = os.lstat(d / name)
        assert st.st_nlink <= 2, f"{name} has link count {st.st_nlink}"
        by_inode.setdefault(st.st_ino, []).append(name)
    owner: dict[str, str] = {}
    for names in by_inode.values():
        leases = [n for n in names if n.startswith("%")]
        entries = [n for n in names if not n.startswith("%")]
        assert len(entries) == 1, f"inode shared by {names}"
        assert len(leases) <= 1, f"account {entries[0]} leased twice: {leases}"
        if leases:
            assert in_pool(entries[0], "opool")
            owner[leases[0]] = entries[0]
    return owner


def test_concurrent_processes_never_share_an_account(tmp_path: Path) -> None:
    d = make_pool(tmp_path, 400)
    go = tmp_path / "go"
    procs = [spawn(d, go, k, 500, 8) for k in range(8)]
    time.sleep(0.5)  # let every interpreter start, then release them together
    go.touch()
    results: list[tuple[str, str]] = []
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        results += [tuple(json.loads(line)) for line in out.splitlines()]
    assert len(results) == 500
    assert [r for r in results if r[1].startswith("ERROR")] == []
    outcome = Counter("EXHAUSTED" if acc == "EXHAUSTED" else "leased" for _, acc in results)
    assert outcome == {"leased": 400, "EXHAUSTED": 100}
    accounts = [acc for _, acc in results if acc != "EXHAUSTED"]
    assert len(set(accounts)) == 400  # every account leased at most once
    owner = check_consistent(d)
    assert len(owner) == 400
    for dn, acc in results:
        if acc != "EXHAUSTED":
            assert owner[lease_name(dn)] == acc


def test_sigkill_mid_run_leaves_a_consistent_directory(tmp_path: Path) -> None:
    d = make_pool(tmp_path, 700)
    go = tmp_path / "go"
    victim = spawn(d, go, 0, 800, 1)
    rival = spawn(d, go, 799, -1, -1)  # same DNs from the other end: races and reuse
    time.sleep(0.5)
    go.touch()
    time.sleep(0.4)
    victim.send_signal(signal.SIGKILL)
    victim_out, _ = victim.communicate(timeout=30)
    assert victim.returncode == -signal.SIGKILL
    done = len(victim_out.splitlines())
    assert 0 < done < 800, f"victim was not killed mid-run ({done} leases done)"
    out, err = rival.communicate(timeout=120)
    assert rival.returncode == 0, err[-600:]
    assert "ERROR" not in out
    owner = check_consistent(d)
    assert 0 < len(owner) <= 700
    # Every lease either process reported is still what the directory says.
    for line in victim_out.splitlines() + out.splitlines():
        dn, account = json.loads(line)
        if account != "EXHAUSTED":
            assert owner[lease_name(dn)] == account
    # Whatever the killed process left is a valid lease: the DN gets the same account.
    gmd = GridmapDir(d)
    for i in range(800):
        dn = f"/DC=org/DC=example/CN=User {i}"
        if lease_name(dn) in owner:
            assert gmd.acquire("opool", dn).account == owner[lease_name(dn)]
