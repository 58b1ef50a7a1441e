"""C lcmaps_poolaccount.mod vs leases.gridmapdir on the SAME gridmapdir.

The C plugin makes its lease even though the pool accounts do not exist in
/etc/passwd (it fails later, at getpwnam), so the directory itself is the
comparison: lease name, chosen account, and what each side leaves behind.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from oracle import Oracle, run_oracle

from leases.gridmapdir import GridmapDir, PoolExhausted, WrongPool

DNS = [
    "/DC=org/DC=example/O=Users/CN=Alice Smith",
    "/C=DE/O=GermanGrid/OU=Uni-X/CN=A.B. O'Neil-Smith_jr (x@y.z), #1",
    "/CN=Jürgen Müller",  # raw UTF-8: the signed-char encoding quirk
    "/CN=J\\xC3\\xBCrgen",  # OpenSSL one-line escape, as in certificates
    "/CN=tab\tand;semi+plus",
]


def setup(tmp_path: Path, entries: int) -> tuple[Path, Path]:
    gmd = tmp_path / "gridmapdir"
    gmd.mkdir()
    for i in range(1, entries + 1):
        (gmd / f"tpool{i:03d}").touch()
    (gmd / "tother001").touch()
    cfg = tmp_path / "etc"
    cfg.mkdir()
    (cfg / "grid-mapfile").write_text('"*" .tpool\n')
    (cfg / "lcmaps.db").write_text(
        "path = /usr/lib/lcmaps\n"
        f'pool = "lcmaps_poolaccount.mod" "-gridmapfile {cfg}/grid-mapfile"'
        f' "-gridmapdir {gmd}" "-max_mappings_per_credential 3"\n'
        'good = "lcmaps_dummy_good.mod"\n'
        "p:\npool -> good\n"
    )
    return gmd, cfg


def c_lease(oracle: Oracle, cfg: Path, gmd: Path, dn: str, *extra: str) -> set[str]:
    before = set(os.listdir(gmd))
    run_oracle(oracle, "--no-lcas", "--dn", dn, *extra, config_dir=cfg)
    return set(os.listdir(gmd)) - before


def other_link(gmd: Path, name: str) -> str:
    ino = os.lstat(gmd / name).st_ino
    (other,) = [n for n in os.listdir(gmd) if n != name and os.lstat(gmd / n).st_ino == ino]
    return other


@pytest.mark.parametrize("mapcounter", [None, 2])
def test_c_and_python_choose_same_lease_and_account(
    oracle: Oracle, tmp_path: Path, mapcounter: int | None
) -> None:
    gmd, cfg = setup(tmp_path, 12)
    store = GridmapDir(gmd)
    extra = ("--mapcounter", str(mapcounter)) if mapcounter else ()
    for dn in DNS:
        new = c_lease(oracle, cfg, gmd, dn, *extra)
        assert len(new) == 1, f"C made {new} for {dn!r}"
        (c_name,) = new
        c_account = other_link(gmd, c_name)
        os.unlink(gmd / c_name)
        lease = store.acquire("tpool", dn, mapcounter=mapcounter, max_mappings=3)
        assert (lease.name, lease.account) == (c_name, c_account)


def test_c_reuses_python_lease_and_python_reuses_c_lease(oracle: Oracle, tmp_path: Path) -> None:
    gmd, cfg = setup(tmp_path, 5)
    store = GridmapDir(gmd)
    mine = store.acquire("tpool", DNS[0])
    assert c_lease(oracle, cfg, gmd, DNS[0]) == set()  # C reused it, made nothing
    assert other_link(gmd, mine.name) == mine.account
    (c_name,) = c_lease(oracle, cfg, gmd, DNS[1])
    again = store.acquire("tpool", DNS[1])
    assert again.reused and again.name == c_name and again.account == other_link(gmd, c_name)


def test_wrong_pool_and_exhaustion_agree(oracle: Oracle, tmp_path: Path) -> None:
    gmd, cfg = setup(tmp_path, 1)
    store = GridmapDir(gmd)
    wrong = store.acquire("tother", DNS[0])
    assert c_lease(oracle, cfg, gmd, DNS[0]) == set()
    assert other_link(gmd, wrong.name) == "tother001"  # C left it alone
    with pytest.raises(WrongPool):
        store.acquire("tpool", DNS[0])
    store.acquire("tpool", DNS[1])
    listing = sorted(os.listdir(gmd))
    assert c_lease(oracle, cfg, gmd, DNS[2]) == set()  # C: no pool-entry available
    with pytest.raises(PoolExhausted):
        store.acquire("tpool", DNS[2])
    assert sorted(os.listdir(gmd)) == listing
