"""10,000 concurrent mappings on one gridmapdir, C LCMAPS (the oracle) among the writers.

Each round leases a pool exactly as large as its users from scratch: two Python processes
(four threads each, the real LCMAPS engine and plugins) and two C callers ask for the same
DNs at once, in random orders. After every round: no account has two leases, no DN has two
accounts, and every caller, C or Python, was told the account its lease points to.
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from oracle import Oracle

from tests.unix_accounts import unix_accounts

pytestmark = pytest.mark.slow

POOL = 24
ACCOUNTS = tuple(f"crace{i:03d}" for i in range(1, POOL + 1))
DNS = tuple(f"/DC=org/DC=example/CN=Racer {i}" for i in range(POOL))
ROUNDS, PER_ROUND, C_SHARE = 25, 400, 0.2

PY_WORKER = r"""
import json, random, sys, threading
from lcmaps.evaluation import Engine, MappingUnavailable, map_credential
from lcmaps.policy_db import load_policy_db
db, seed, n = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dns = json.loads(sys.argv[4])
engine = Engine(load_policy_db(db))
out, lock = [], threading.Lock()
def run(k):
    rng = random.Random(seed * 10 + k)
    for _ in range(n):
        dn = rng.choice(dns)
        for _ in range(20):
            try:
                r = map_credential(engine, dn)
                break
            except MappingUnavailable:  # a race lost after retries: a client retries
                continue
        with lock:
            out.append([dn, r.username if r.permitted else "DENY:" + str(r.reason)])
threads = [threading.Thread(target=run, args=(k,)) for k in range(4)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.fixture(scope="module")
def race_accounts() -> Iterator[None]:
    with unix_accounts(ACCOUNTS):
        yield


def make_site(root: Path) -> tuple[Path, Path]:
    cfg, gmd = root / "etc", root / "gridmapdir"
    cfg.mkdir(parents=True)
    gmd.mkdir()
    for name in ACCOUNTS:
        (gmd / name).touch()
    (cfg / "grid-mapfile").write_text('"/DC=org/DC=example/CN=Racer *" .crace\n')
    (cfg / "lcmaps.db").write_text(f"""path = /usr/lib/lcmaps
pool = "lcmaps_poolaccount.mod" "-gridmapfile {cfg}/grid-mapfile" "-gridmapdir {gmd}"
good = "lcmaps_dummy_good.mod"

race:
pool -> good
""")
    return cfg, gmd


def c_map(oracle: Oracle, cfg: Path, dn: str) -> tuple[str, str]:
    """C gives up when it loses a race (a deny); like a real client, ask again."""
    for _ in range(10):
        proc = subprocess.run(
            [str(oracle.binary), "--no-lcas", "--dn", dn, "--config-dir", str(cfg),
             "--debug", "0", "--log", "/dev/null"], capture_output=True, text=True, timeout=60)
        out = json.loads(proc.stdout.strip().splitlines()[-1])
        if out["decision"] == "permit":
            return dn, out["username"]
    return dn, f"DENY:{out}"


def lease_owners(gmd: Path) -> dict[str, list[str]]:
    by_ino: dict[int, list[str]] = {}
    for name in os.listdir(gmd):
        by_ino.setdefault(os.lstat(gmd / name).st_ino, []).append(name)
    owners: dict[str, list[str]] = {}
    for names in by_ino.values():
        entry = [n for n in names if not n.startswith(("%", "."))]
        assert len(entry) <= 1, f"one inode under two entry names: {names}"
        for lease in (n for n in names if n.startswith("%")):
            owners.setdefault(lease, []).extend(entry)
        if entry:
            assert sum(n.startswith("%") for n in names) <= 1, f"{entry[0]} leased twice: {names}"
    return owners


def test_ten_thousand_mappings_with_c_writers(
    oracle: Oracle, race_accounts: None, tmp_path: Path
) -> None:
    from leases.names import lease_name

    total = 0
    for rnd in range(ROUNDS):
        cfg, gmd = make_site(tmp_path / f"r{rnd}")
        n_c = int(PER_ROUND * C_SHARE)
        n_py = (PER_ROUND - n_c) // 8  # per thread: 2 processes x 4 threads
        rng = random.Random(rnd)
        c_dns = [rng.choice(DNS) for _ in range(n_c)]
        procs = [subprocess.Popen([sys.executable, "-c", PY_WORKER, str(cfg / "lcmaps.db"),
                                   str(rnd * 2 + k), str(n_py), json.dumps(DNS)],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
                 for k in range(2)]
        with ThreadPoolExecutor(2) as pool:
            told = list(pool.map(lambda dn, c=cfg: c_map(oracle, c, dn), c_dns))
        for p in procs:
            out, err = p.communicate(timeout=300)
            assert p.returncode == 0, err[-2000:]
            told += [tuple(r) for r in json.loads(out)]
        total += len(told)
        assert [t for t in told if t[1].startswith("DENY")] == []
        owners = lease_owners(gmd)
        final = {dn: owners.get(lease_name(dn), [None])[0] for dn in DNS}
        assert sorted(a for a in final.values() if a) == sorted(set(final.values()) - {None})
        wrong = [(dn, acct, final[dn]) for dn, acct in told if final[dn] != acct]
        assert wrong == [], f"round {rnd}: callers told another account than their lease's"
    assert total >= 10_000
