"""The in-memory free list and start-up priming of a gridmapdir (leases/freelist.py).

What a site depends on: after ``prime()`` a worker's first leases and first lookups read no
directory, and the list is only ever a hint: an entry another writer took meanwhile is
skipped (never leased twice), and entries freed after the listing are still found.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from leases import freelist
from leases import gridmapdir as gridmapdir_module
from leases.gridmapdir import GridmapDir, PoolExhausted


def _site(tmp_path: Path, entries: int, leased: int) -> tuple[Path, list[str]]:
    """``entries`` pool accounts; the first ``leased`` held by DNs linked as C would."""
    d = tmp_path / "gridmapdir"
    d.mkdir()
    for i in range(entries):
        (d / f"pool{i:03d}").touch()
    (d / "other001").touch()  # another pool, never handed out for .pool
    held = [f"/DC=org/DC=example/CN=Held {i}" for i in range(leased)]
    names = sorted(n for n in os.listdir(d) if n.startswith("pool"))
    gmd = GridmapDir(d)
    for dn, entry in zip(held, names, strict=False):
        os.link(d / entry, d / gmd._leasefile(dn, None))
    return d, held


def _links(d: Path) -> dict[str, int]:
    return {n: os.lstat(d / n).st_nlink for n in os.listdir(d) if not n.startswith("%")}


def _refuse_reads(monkeypatch: pytest.MonkeyPatch) -> None:
    def refuse(*_a: object) -> None:
        raise AssertionError("the directory was read")

    monkeypatch.setattr(gridmapdir_module.os, "scandir", refuse)
    monkeypatch.setattr(freelist.os, "scandir", refuse)


def test_after_prime_first_leases_and_lookups_read_no_directory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    d, held = _site(tmp_path, 40, 20)
    gmd = GridmapDir(d)
    assert gmd.prime() == 41
    _refuse_reads(monkeypatch)
    again = gmd.acquire("pool", held[7])  # a lease held before this worker started
    assert again.reused and again.account == "pool007"
    fresh = [gmd.acquire("pool", f"/DC=org/DC=example/CN=New {i}") for i in range(20)]
    assert len({lease.account for lease in fresh}) == 20 and not any(f.reused for f in fresh)
    assert _links(d) == {**{f"pool{i:03d}": 2 for i in range(40)}, "other001": 1}


def test_entry_taken_behind_the_list_is_skipped_not_shared(tmp_path: Path) -> None:
    """Another worker or a C writer takes the next free entry after our listing."""
    d, _ = _site(tmp_path, 6, 2)
    ours, theirs = GridmapDir(d), GridmapDir(d)
    ours.prime()
    theirs.prime()
    taken = [theirs.acquire("pool", f"/DC=org/DC=example/CN=Them {i}").account for i in (1, 2)]
    mine = ours.acquire("pool", "/DC=org/DC=example/CN=Us")
    assert mine.account not in taken and not mine.reused
    assert max(_links(d).values()) == 2  # no entry linked by two leases


def test_entries_freed_after_the_listing_are_found_when_the_list_runs_dry(tmp_path: Path) -> None:
    d, _ = _site(tmp_path, 3, 0)
    gmd = GridmapDir(d)
    gmd.prime()
    users = [f"/DC=org/DC=example/CN=User {i}" for i in range(3)]
    for dn in users:
        gmd.acquire("pool", dn)
    with pytest.raises(PoolExhausted):
        gmd.acquire("pool", "/DC=org/DC=example/CN=Late")
    os.unlink(d / gmd._leasefile(users[1], None))  # freed by an admin or a C expiry
    late = gmd.acquire("pool", "/DC=org/DC=example/CN=Late")
    assert late.account == "pool001" and not late.reused


def test_a_pool_without_a_start_up_group_is_read_afresh(tmp_path: Path) -> None:
    """A non-strict pool, or one whose prefix ends in a digit, is filtered from a new read."""
    d, _ = _site(tmp_path, 4, 0)
    gmd = GridmapDir(d)
    gmd.prime()
    lease = gmd.acquire("pool00", "/DC=org/DC=example/CN=Digit", strict_prefix=True)
    assert lease.account.startswith("pool00")
    loose = gmd.acquire("oth", "/DC=org/DC=example/CN=Loose", strict_prefix=False)
    assert loose.account == "other001"


def test_by_prefix_groups_only_untaken_prefix_digit_names() -> None:
    listing = freelist.Listing(
        [("pool001", 1), ("pool002", 2), ("pool", 3), ("atlas07", 4), ("x1y", 5), ("9", 6)],
        taken={2},
    )
    assert freelist.by_prefix(listing) == {"pool": ["pool001"], "atlas": ["atlas07"]}
