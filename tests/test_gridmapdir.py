"""gridmapdir lease store: every branch of the C algorithm (reference section 8)."""

from __future__ import annotations

import multiprocessing
import os
import shutil
import tempfile
import time
from pathlib import Path

import pytest

from leases.gridmapdir import (
    EntryTaken,
    GridmapDir,
    GridmapDirUnusable,
    LeaseArgumentError,
    LeaseCorrupt,
    LeaseNotFound,
    LeaseRace,
    NoSuchEntry,
    PoolExhausted,
    WrongPool,
    encode_lease,
    in_pool,
    lease_name,
    lease_string,
)

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
BOB = "/DC=org/DC=example/O=Users/CN=Bob Jones"
ALICE_LEASE = "%2fdc%3dorg%2fdc%3dexample%2fo%3dusers%2fcn%3dalice%20smith"


def make_dir(tmp_path: Path, *entries: str) -> Path:
    d = tmp_path / "gridmapdir"
    d.mkdir()
    for name in entries:
        (d / name).touch()
    return d


def nlink(path: Path) -> int:
    return os.lstat(path).st_nlink


def same_file(a: Path, b: Path) -> bool:
    return os.lstat(a).st_ino == os.lstat(b).st_ino


def pool_order(d: Path, pool: str) -> list[str]:
    return [n for n in os.listdir(d) if in_pool(n, pool)]


# --- lease names -----------------------------------------------------------------


def test_encode_plain_dn() -> None:
    assert encode_lease(ALICE) == ALICE_LEASE
    assert encode_lease("/dteam/Role=NULL/Capability=NULL") == (
        "%2fdteam%2frole%3dnull%2fcapability%3dnull"
    )


def test_encode_every_non_alnum_lowercase_hex() -> None:
    assert encode_lease("A-b.c_d~e@f,g'h") == "a%2db%2ec%5fd%7ee%40f%2cg%27h"


def test_encode_mapcounter_suffix() -> None:
    assert lease_name("/CN=Mover", mapcounter=2) == "%2fcn%3dmover:mapcount=0002"
    assert lease_name("/CN=Mover", mapcounter=0) == "%2fcn%3dmover"


def test_encode_group_suffix_raw_and_mapcounter() -> None:
    raw = lease_string(ALICE, ["oProd", "odteam"], 1)
    assert raw == ALICE.encode() + b"\001oProd:odteam:mapcount=0001"
    assert encode_lease(raw) == ALICE_LEASE + ":oProd:odteam:mapcount=0001"
    assert lease_name(ALICE, []) == ALICE_LEASE


def test_encode_non_ascii_reproduces_c_signed_char_bug() -> None:
    # Compatibility decision (b): byte-exact with C (verified with the oracle).
    assert encode_lease("/CN=Jürgen Müller") == "%2fcn%3dj%ff%ffrgen%20m%ff%ffllerbc"
    assert encode_lease("/CN=Jürgen", c_signed_char=False) == "%2fcn%3dj%c3%bcrgen"
    # Certificates give OpenSSL escapes, never raw bytes:
    assert encode_lease("/CN=J\\xC3\\xBCrgen") == "%2fcn%3dj%5cxc3%5cxbcrgen"


def test_in_pool_strict_and_loose() -> None:
    assert in_pool("opool001", "opool")
    assert not in_pool("opoolx", "opool")
    assert not in_pool("opool", "opool")
    assert not in_pool("opool01a", "opool")
    assert in_pool("opoolx", "opool", strict=False)
    assert not in_pool("xpool1", "opool", strict=False)


# --- allocation ------------------------------------------------------------------------


def test_first_lease_takes_first_free_entry_in_raw_readdir_order(tmp_path: Path) -> None:
    d = make_dir(tmp_path, *(f"opool{i:03d}" for i in range(1, 30)), "odteam001")
    order = pool_order(d, "opool")
    assert order != sorted(order), "ext4 hash order expected to differ from sorted order"
    gmd = GridmapDir(d)
    got = [gmd.acquire("opool", f"/CN=user{i}").account for i in range(5)]
    assert got == order[:5]
    lease = gmd.acquire("opool", ALICE)
    assert lease.name == ALICE_LEASE and not lease.reused
    assert same_file(d / ALICE_LEASE, d / lease.account)
    assert nlink(d / lease.account) == 2


def test_allocation_skips_reserved_names(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "root", "%opool1", ".opool2", "opool3~", "opoolx", "opool4")
    (d / "opool5").mkdir()
    (d / "opool6").symlink_to(d / "opool4")
    gmd = GridmapDir(d)
    assert gmd.acquire("opool", "/CN=a").account == "opool4"
    with pytest.raises(PoolExhausted):
        gmd.acquire("opool", "/CN=b")
    assert gmd.acquire("opool", "/CN=c", strict_prefix=False).account == "opoolx"
    with pytest.raises(PoolExhausted):  # "root" is never a pool entry
        gmd.acquire("roo", "/CN=d", strict_prefix=False)


def test_reuse_touches_and_does_not_scan(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    gmd = GridmapDir(d)
    first = gmd.acquire("opool", ALICE)
    old = time.time() - 3600
    os.utime(d / first.name, (old, old))
    again = gmd.acquire("opool", ALICE)
    assert again.account == first.account and again.reused
    assert os.lstat(d / first.name).st_mtime > old + 3000


def test_reuse_by_a_fresh_store_finds_other_link_by_scan(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    account = GridmapDir(d).acquire("opool", ALICE).account
    assert GridmapDir(d).acquire("opool", ALICE).account == account
    assert GridmapDir(d).lookup(ALICE) == account


def test_stale_inode_cache_is_rechecked(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    gmd = GridmapDir(d)
    lease = gmd.acquire("opool", ALICE)
    # Behind the cache's back: move the lease to the other account.
    other = "opool002" if lease.account == "opool001" else "opool001"
    os.unlink(d / lease.name)
    os.link(d / other, d / lease.name)
    assert gmd.acquire("opool", ALICE).account == other


def test_solitary_lease_is_removed_and_reallocated(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    (d / ALICE_LEASE).touch()
    lease = GridmapDir(d).acquire("opool", ALICE)
    assert lease.account == "opool001" and not lease.reused
    assert same_file(d / ALICE_LEASE, d / "opool001")


def test_lease_in_other_pool_fails_without_override(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "odteam001")
    gmd = GridmapDir(d)
    gmd.acquire("odteam", ALICE)
    with pytest.raises(WrongPool, match=r"points to odteam001, which is not in pool \.opool"):
        gmd.acquire("opool", ALICE)
    assert same_file(d / ALICE_LEASE, d / "odteam001")  # untouched
    assert nlink(d / "opool001") == 1


def test_lease_in_other_pool_moves_with_override(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "odteam001")
    gmd = GridmapDir(d)
    gmd.acquire("odteam", ALICE)
    lease = gmd.acquire("opool", ALICE, override_inconsistency=True)
    assert lease.account == "opool001"
    assert nlink(d / "odteam001") == 1


def test_strict_prefix_decides_which_pool_a_lease_belongs_to(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opoolx1", "opool1")
    gmd = GridmapDir(d)
    assert gmd.acquire("opoolx", ALICE).account == "opoolx1"
    # "opoolx1" is in pool "opool" only without the strict rule.
    with pytest.raises(WrongPool):
        gmd.acquire("opool", ALICE)
    assert gmd.acquire("opool", ALICE, strict_prefix=False).account == "opoolx1"


def test_pool_exhausted_is_distinct_and_leaves_nothing(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    gmd = GridmapDir(d)
    gmd.acquire("opool", ALICE)
    before = sorted(os.listdir(d))
    with pytest.raises(PoolExhausted, match=r"no free account in pool \.opool"):
        gmd.acquire("opool", BOB)
    assert sorted(os.listdir(d)) == before


def test_mapcounter_gives_separate_leases(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002", "opool003")
    gmd = GridmapDir(d)
    one = gmd.acquire("opool", ALICE, mapcounter=1, max_mappings=3)
    two = gmd.acquire("opool", ALICE, mapcounter=2, max_mappings=3)
    assert one.name == ALICE_LEASE + ":mapcount=0001"
    assert two.name == ALICE_LEASE + ":mapcount=0002"
    assert one.account != two.account
    with pytest.raises(LeaseArgumentError, match="exceeds the maximum"):
        gmd.acquire("opool", ALICE, mapcounter=4, max_mappings=3)
    with pytest.raises(LeaseArgumentError, match="out of range"):
        gmd.acquire("opool", ALICE, max_mappings=10000)


def test_group_suffix_lease_is_distinct_per_group_order(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    gmd = GridmapDir(d)
    a = gmd.acquire("opool", lease_string(ALICE, ["oprod", "odteam"]))
    b = gmd.acquire("opool", lease_string(ALICE, ["odteam", "oprod"]))
    assert a.name == ALICE_LEASE + ":oprod:odteam"
    assert b.name == ALICE_LEASE + ":odteam:oprod"
    assert a.account != b.account


def test_fqan_lease_in_groupmapdir(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "odteam001", "odteam002")
    gmd = GridmapDir(d)
    fqan = "/dteam/Role=NULL/Capability=NULL"
    first = gmd.acquire("odteam", fqan)
    assert first.name == "%2fdteam%2frole%3dnull%2fcapability%3dnull"
    assert gmd.acquire("odteam", fqan).account == first.account  # shared by all users


# --- corrupt states ------------------------------------------------------------------------


def test_lease_not_a_regular_file(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    (d / ALICE_LEASE).mkdir()
    with pytest.raises(LeaseCorrupt, match="not a regular file"):
        GridmapDir(d).acquire("opool", ALICE)


def test_lease_symlink_is_not_followed(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    (d / ALICE_LEASE).symlink_to(d / "opool001")
    with pytest.raises(LeaseCorrupt, match="not a regular file"):
        GridmapDir(d).acquire("opool", ALICE)


def test_link_count_above_two(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    os.link(d / "opool001", d / ALICE_LEASE)
    os.link(d / "opool001", d / "%2fcn%3dother")
    with pytest.raises(LeaseCorrupt, match="link count 3"):
        GridmapDir(d).acquire("opool", ALICE)
    assert nlink(d / "opool001") == 3  # reported, not "repaired"


def test_entry_with_two_links_is_never_allocated(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    os.link(d / "opool001", d / "%2fcn%3dsomeone")
    assert GridmapDir(d).acquire("opool", ALICE).account == "opool002"


# --- directory problems ---------------------------------------------------------------------


def test_missing_gridmapdir(tmp_path: Path) -> None:
    with pytest.raises(GridmapDirUnusable, match="does not exist"):
        GridmapDir(tmp_path / "nope")


def test_gridmapdir_not_a_directory(tmp_path: Path) -> None:
    (tmp_path / "file").touch()
    with pytest.raises(GridmapDirUnusable, match="is not a directory"):
        GridmapDir(tmp_path / "file")


def test_gridmapdir_removed_after_start(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    gmd = GridmapDir(d)
    os.unlink(d / "opool001")
    d.rmdir()
    with pytest.raises(GridmapDirUnusable, match="does not exist"):
        gmd.acquire("opool", ALICE)


def _as_nobody(path: str, queue: multiprocessing.Queue[str]) -> None:
    os.setgid(65534)
    os.setuid(65534)
    try:
        GridmapDir(path)
        queue.put("ok")
    except GridmapDirUnusable as exc:
        queue.put(str(exc))


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to switch to nobody")
def test_gridmapdir_unwritable() -> None:
    top = Path(tempfile.mkdtemp(prefix="tstgmd"))  # /tmp/pytest-of-root is 0700
    os.chmod(top, 0o755)
    d = make_dir(top, "opool001")
    os.chmod(d, 0o755)
    ctx = multiprocessing.get_context("fork")
    queue: multiprocessing.Queue[str] = ctx.Queue()
    proc = ctx.Process(target=_as_nobody, args=(str(d), queue))
    proc.start()
    proc.join(30)
    assert queue.get(timeout=5) == f"gridmapdir {d} is not writable"
    shutil.rmtree(top)


# --- requested mapping and verify --------------------------------------------------------


def test_requested_account_is_leased(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002", "opool003")
    gmd = GridmapDir(d)
    lease = gmd.acquire("opool", ALICE, requested="opool003")
    assert lease.account == "opool003" and same_file(d / ALICE_LEASE, d / "opool003")
    assert gmd.acquire("opool", ALICE, requested="opool003").reused


def test_requested_account_taken_by_other(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    gmd = GridmapDir(d)
    gmd.acquire("opool", BOB)
    with pytest.raises(EntryTaken):
        gmd.acquire("opool", ALICE, requested="opool001")
    assert not (d / ALICE_LEASE).exists()


def test_requested_account_outside_pool_or_missing(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "odteam001")
    gmd = GridmapDir(d)
    with pytest.raises(LeaseArgumentError, match=r"not in pool \.opool"):
        gmd.acquire("opool", ALICE, requested="odteam001")
    with pytest.raises(NoSuchEntry):
        gmd.acquire("opool", ALICE, requested="opool009")


def test_requested_account_when_lease_points_elsewhere(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    gmd = GridmapDir(d)
    held = gmd.acquire("opool", ALICE).account
    other = "opool002" if held == "opool001" else "opool001"
    with pytest.raises(WrongPool, match=f"already points to {held}"):
        gmd.acquire("opool", ALICE, requested=other)
    moved = gmd.acquire("opool", ALICE, requested=other, override_inconsistency=True)
    assert moved.account == other and nlink(d / held) == 1


def test_verify_plain_lease_by_default(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    gmd = GridmapDir(d)
    account = gmd.acquire("opool", ALICE).account
    before = sorted(os.listdir(d))
    assert gmd.verify("opool", ALICE, account).account == account
    assert sorted(os.listdir(d)) == before
    other = "opool002" if account == "opool001" else "opool001"
    with pytest.raises(LeaseNotFound):
        gmd.verify("opool", ALICE, other)
    with pytest.raises(LeaseNotFound):
        gmd.verify("opool", BOB, other)  # verify never creates
    assert sorted(os.listdir(d)) == before


def test_verify_c_quirk_denies_plain_lease(tmp_path: Path) -> None:
    # Compatibility decision (a): the C plugin denies here (oracle demo I1).
    d = make_dir(tmp_path, "opool001", "opool002")
    gmd = GridmapDir(d)
    held = gmd.acquire("opool", ALICE).account
    with pytest.raises(LeaseNotFound, match="mapcount=0001"):
        gmd.verify("opool", ALICE, held, c_verify_quirk=True)
    counted = gmd.acquire("opool", BOB, mapcounter=1)
    # With a mapcount lease present the quirky order finds it.
    assert gmd.verify("opool", BOB, counted.account, c_verify_quirk=True).name == counted.name


def test_verify_with_mapcounter_in_use(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002")
    gmd = GridmapDir(d)
    lease = gmd.acquire("opool", ALICE, mapcounter=2, max_mappings=2)
    assert gmd.verify("opool", ALICE, lease.account, max_mappings=2).name == lease.name
    assert gmd.verify("opool", ALICE, lease.account, mapcounter=2, max_mappings=2).reused
    with pytest.raises(LeaseNotFound):
        gmd.verify("opool", ALICE, lease.account)  # max 1: plain lease only


def test_verify_account_taken_by_other(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    gmd = GridmapDir(d)
    gmd.acquire("opool", BOB)
    (d / ALICE_LEASE).touch()
    with pytest.raises(EntryTaken):
        gmd.verify("opool", ALICE, "opool001")
    assert nlink(d / ALICE_LEASE) == 1  # verify is read-only (decision (d))


# --- races and administration ----------------------------------------------------------


def test_lost_race_unlinks_and_gives_up_like_c(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001")
    gmd = GridmapDir(d, race_retries=0)
    real_link = os.link

    def racing_link(src: str, dst: str) -> None:  # another host links the same entry
        real_link(src, dst)
        if not os.path.exists(d / "%2fcn%3drival"):
            real_link(src, d / "%2fcn%3drival")

    os.link = racing_link  # type: ignore[assignment]
    try:
        with pytest.raises(LeaseRace):
            gmd.acquire("opool", ALICE)
    finally:
        os.link = real_link
    assert not (d / ALICE_LEASE).exists()  # our link is gone, the rival's stays
    assert nlink(d / "opool001") == 2


def test_lease_appearing_during_allocation_is_reused(tmp_path: Path) -> None:
    """The same DN leased by another request between our claim and our publish: we drop
    our claim and reuse that lease, so both requests are told the same account."""
    d = make_dir(tmp_path, "opool001", "opool002")

    def same_dn_elsewhere(step: str, entry: str) -> None:
        if step == "verified":
            os.link(d / "opool002", d / encode_lease(ALICE))

    lease = GridmapDir(d, hook=same_dn_elsewhere).acquire("opool", ALICE)
    assert lease.account == "opool002" and lease.reused
    assert nlink(d / "opool001") == 1
    assert not [n for n in os.listdir(d) if n.startswith(".")]


def test_list_release_expire(tmp_path: Path) -> None:
    d = make_dir(tmp_path, "opool001", "opool002", "opool003")
    gmd = GridmapDir(d)
    a = gmd.acquire("opool", ALICE)
    b = gmd.acquire("opool", BOB)
    (d / "%2fcn%3dsolitary").touch()
    infos = {i.name: i for i in gmd.leases()}
    assert infos[a.name].account == a.account and infos[b.name].account == b.account
    assert infos["%2fcn%3dsolitary"].account is None
    now = time.time()
    os.utime(d / a.name, (now - 7200, now - 7200))
    removed = gmd.expire(3600, now=now)
    assert {i.name for i in removed} == {a.name}
    assert nlink(d / a.account) == 1 and (d / b.name).exists()
    assert gmd.release(b.name) and not gmd.release(b.name)
    with pytest.raises(LeaseArgumentError):
        gmd.release("opool003")  # never a pool entry
    assert sorted(os.listdir(d)) == ["%2fcn%3dsolitary", "opool001", "opool002", "opool003"]
