"""``scas-admin pools``, ``leases``, ``release``, ``expire`` on a real gridmapdir.

A site on disk (server YAML, lcmaps.db with the three pool plugins, mapfiles, a gridmapdir
and a groupmapdir of pool entry files), leases made by the real ``GridmapDir``, the real
CLI. The race tests put a renewal or a re-link into each gap of a removal (the ``hook``
seam of ``leases.upkeep``) and run ``expire`` beside processes that lease and renew, with
Debian's C LCMAPS among the writers where it is installed.
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import pty
import random
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from leases import upkeep
from leases.claims import new_claim_name
from leases.gridmapdir import GridmapDir, lease_name, lease_string
from site_admin.cli import main
from site_admin.pools import parse_duration

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
BOB = "/DC=org/DC=example/O=Users/CN=Bob Jones"
CAROL = "/DC=ch/DC=cern/CN=Carol White"
OLDIE = "/DC=org/DC=example/O=Users/CN=Old Timer"
FQAN = "/atlas/Role=NULL/Capability=NULL"
SCAS_ADMIN = os.path.join(os.path.dirname(sys.executable), "scas-admin")
DAY = 86400.0


@dataclass
class AdminSite:
    """A site directory with everything ``scas-admin`` reads."""

    root: Path
    gmd: Path
    groupdir: Path
    config: Path

    def run(self, *argv: str) -> tuple[int, str, str]:
        """The real CLI in this process: (exit code, stdout, stderr)."""
        out, err = io.StringIO(), io.StringIO()
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            code = main([*argv, "--config", str(self.config)])
        return code, out.getvalue(), err.getvalue()

    def json(self, *argv: str) -> tuple[int, Any]:
        code, out, err = self.run(*argv, "--json")
        assert out, err
        return code, json.loads(out)

    def lease_path(self, dn: str, groups: tuple[str, ...] = ()) -> Path:
        return self.gmd / lease_name(dn, groups)

    def age(self, path: Path, seconds: float) -> None:
        then = time.time() - seconds
        os.utime(path, (then, then))


def write_site(root: Path, accounts: list[str], *, pool_map: str | None = None,
               c_plugin_path: bool = False) -> AdminSite:  # fmt: skip
    """Server YAML + lcmaps.db (poolaccount, voms_poolaccount, voms_poolgroup) + files."""
    gmd, groupdir, certs = root / "gridmapdir", root / "groupmapdir", root / "certs"
    for d in (gmd, groupdir, certs):
        d.mkdir(parents=True)
    for name in accounts:
        (gmd / name).touch()
    for name in ("atlasgrp1", "atlasgrp2", "atlasgrp3"):
        (groupdir / name).touch()
    (root / "grid-mapfile").write_text(pool_map or (
        '"/DC=org/DC=example/O=Users/*" .atlas\n"/DC=ch/DC=cern/*" .cms\n'))
    (root / "voms-mapfile").write_text('"/atlas/Role=production/*" .atlasprd\n')
    (root / "groupmapfile").write_text('"/atlas/*" .atlasgrp\n')
    (root / "lcmaps.db").write_text(
        ("path = /usr/lib/lcmaps\n" if c_plugin_path else "")
        + f'pool = "lcmaps_poolaccount.mod" "-gridmapfile {root}/grid-mapfile"'
        f' "-gridmapdir {gmd}"\n'
        f'vomspool = "lcmaps_voms_poolaccount.mod" "-gridmapfile {root}/voms-mapfile"'
        f' "-gridmapdir {gmd}"\n'
        f'poolgroup = "lcmaps_voms_poolgroup.mod" "-groupmapfile {root}/groupmapfile"'
        f' "-groupmapdir {groupdir}"\n'
        'good = "lcmaps_dummy_good.mod"\n\n'
        "standard:\npool -> good\n\nvoms:\npoolgroup -> vomspool\nvomspool -> good\n"
    )
    (root / "lcas.db").write_text('pluginname="lcas_plugin_example.mod"\n')
    config = root / "scas.yaml"
    config.write_text(
        f"listen: unix:{root}/scas.sock\ntrust: {{certdir: certs}}\nlcas: {{db: lcas.db}}\n"
        "lcmaps: {db: lcmaps.db}\n"
        'policies: [{resource: "*", action: "*", lcmaps: [standard]}]\n'
        "audit: {file: audit.log}\n"
    )
    (root / "audit.log").touch()  # a server that has run has one; scas-admin never makes it
    return AdminSite(root, gmd, groupdir, config)


ACCOUNTS = ["atlas001", "atlas002", "atlas003", "atlas004", "atlas005", "cms01", "cms02",
            "cms03", "atlasprd01", "atlasprd02", "old7", "root"]


@pytest.fixture
def site(tmp_path: Path) -> AdminSite:
    """Alice and Bob (stale) in .atlas, a claim in flight on a third atlas account, Carol in
    .cms, Alice's VOMS lease in .atlasprd, an unconfigured ``old7`` (stale), a group lease
    and a dangling lease."""
    s = write_site(tmp_path / "site", ACCOUNTS)
    gmd = GridmapDir(s.gmd)
    alice = gmd.acquire("atlas", ALICE)
    bob = gmd.acquire("atlas", BOB)
    s.age(s.gmd / bob.name, 10 * DAY)
    free = next(n for n in ("atlas001", "atlas002", "atlas003")
                if os.lstat(s.gmd / n).st_nlink == 1)
    os.link(s.gmd / free, s.gmd / new_claim_name())  # a live claim: busy
    gmd.acquire("cms", CAROL)
    gmd.acquire("atlasprd", lease_string(ALICE, ["atlas", "atlasprd"]))
    os.link(s.gmd / "old7", s.gmd / lease_name(OLDIE))
    s.age(s.gmd / "old7", 30 * DAY)
    (s.gmd / "%2fcn%3dghost").touch()
    s.age(s.gmd / "%2fcn%3dghost", 30 * DAY)
    GridmapDir(s.groupdir).acquire("atlasgrp", FQAN)
    assert alice.account != bob.account
    return s


def test_pools_counts_free_leased_stale_busy(site: AdminSite) -> None:
    code, doc = site.json("pools")
    assert code == 0
    rows = {r["pool"]: {k: r[k] for k in ("total", "free", "leased", "stale", "busy",
                                          "configured", "kind")} for r in doc["pools"]}
    assert rows == {
        "atlas": dict(total=5, free=2, leased=2, stale=1, busy=1, configured=True,
                      kind="account"),
        "cms": dict(total=3, free=2, leased=1, stale=0, busy=0, configured=True, kind="account"),
        "atlasprd": dict(total=2, free=1, leased=1, stale=0, busy=0, configured=True,
                         kind="account"),
        "old": dict(total=1, free=0, leased=1, stale=1, busy=0, configured=False,
                    kind="account"),
        "atlasgrp": dict(total=3, free=2, leased=1, stale=0, busy=0, configured=True,
                         kind="group"),
    }
    assert doc["dangling"] == 1 and doc["stale_after"] == 7 * DAY
    _, doc = site.json("pools", "--stale-after", "12d")
    assert {r["pool"]: r["stale"] for r in doc["pools"]}["atlas"] == 0
    assert {r["pool"]: r["stale"] for r in doc["pools"]}["old"] == 1


def test_pools_text_and_bad_input(site: AdminSite, tmp_path: Path) -> None:
    code, out, err = site.run("pools")
    assert code == 0 and err == ""
    atlas = next(line.split() for line in out.splitlines() if line.startswith("atlas "))
    assert atlas[:6] == ["atlas", "5", "2", "2", "1", "1"]
    assert "(in no mapfile)" in next(line for line in out.splitlines() if line.startswith("old"))
    assert "1 dangling lease" in out
    code, out, err = site.run("pools", "--stale-after", "7x")
    assert (code, out) == (2, "") and err.count("\n") == 1 and "--stale-after '7x'" in err
    (site.root / "lcmaps.db").write_text("broken =\n")
    code, out, err = site.run("pools")
    assert code == 2 and out == "" and err.startswith(f"scas-admin: {site.root}/lcmaps.db:")
    (site.root / "lcmaps.db").write_text(
        'good = "lcmaps_dummy_good.mod"\nbad = "lcmaps_dummy_bad.mod"\np:\nbad -> good\n')
    code, out, err = site.run("pools")
    assert code == 1 and "no pool plugin" in err


def test_pools_warns_about_a_broken_mapfile_and_still_counts(site: AdminSite) -> None:
    (site.root / "grid-mapfile").write_text('"/DC=ch/DC=cern/*" .cms\n"/DC=broken .atlas\n')
    code, out, err = site.run("pools")
    assert code == 0
    assert f"{site.root}/grid-mapfile:2: unbalanced quote" in err
    assert next(line for line in out.splitlines() if line.startswith("atlas ")).endswith(
        "(in no mapfile)")


def test_leases_lists_decoded_keys_and_filters(site: AdminSite) -> None:
    code, doc = site.json("leases")
    assert code == 0
    by_lease = {d["lease"]: d for d in doc["leases"]}
    voms = by_lease[lease_name(ALICE, ("atlas", "atlasprd"))]
    assert voms["dn"] == ALICE.lower() and voms["groups"] == ["atlas", "atlasprd"]
    assert voms["pool"] == "atlasprd"
    assert by_lease[lease_name(FQAN)]["fqan"] == FQAN.lower()
    assert by_lease[lease_name(FQAN)]["pool"] == "atlasgrp"
    assert by_lease["%2fcn%3dghost"]["account"] is None
    bob = by_lease[lease_name(BOB)]
    assert abs(bob["mtime"] - (time.time() - 10 * DAY)) < 60
    # --dn matches whatever the case (C encodes lower case), plain and VOMS leases
    code, doc = site.json("leases", "--dn", ALICE.upper())
    assert code == 0
    assert sorted(d["lease"] for d in doc["leases"]) == sorted(
        [lease_name(ALICE), lease_name(ALICE, ("atlas", "atlasprd"))])
    code, doc = site.json("leases", "--pool", "cms")
    assert [d["dn"] for d in doc["leases"]] == [CAROL.lower()]
    code, out, _ = site.run("leases", "--pool", "nosuch")
    assert code == 1 and out.splitlines()[1:] == []
    code, out, _ = site.run("leases", "--pool", "atlas")
    assert code == 0 and "/dc=org/dc=example/o=users/cn=bob jones" in out


def test_release_by_account(site: AdminSite) -> None:
    gmd = GridmapDir(site.gmd)
    carol = gmd.lookup(CAROL)
    assert carol is not None
    code, out, err = site.run("release", carol)
    assert (code, err) == (0, "")
    assert out.startswith(f"released {carol} (/dc=ch/dc=cern/cn=carol white)")
    assert os.lstat(site.gmd / carol).st_nlink == 1
    assert not (site.gmd / lease_name(CAROL)).exists()
    assert (site.lease_path(ALICE)).exists()  # nobody else's lease went
    assert not [n for n in os.listdir(site.gmd) if n.startswith(".lease-claim.")
                and os.lstat(site.gmd / n).st_nlink == 1]
    audited = [json.loads(x) for x in (site.root / "audit.log").read_text().splitlines()]
    assert [(a["decision"], a["account"], a["lease"]) for a in audited] == [
        ("Released", carol, lease_name(CAROL))]  # fmt: skip
    assert audited[0]["pep"].startswith("scas-admin (uid ")
    code, _, err = site.run("release", carol)
    assert code == 1 and err == f"scas-admin: {carol} is not leased\n"
    code, _, err = site.run("release", "nobody9")
    assert code == 1 and "no pool account nobody9" in err
    # the group pool's entries are released the same way
    group = GridmapDir(site.groupdir).lookup(FQAN)
    assert group is not None
    code, doc = site.json("release", group)
    assert code == 0 and doc["released"][0]["fqan"] == FQAN.lower()
    assert os.lstat(site.groupdir / group).st_nlink == 1
    assert gmd.acquire("cms", CAROL).reused is False  # the DN simply gets a new lease


def test_release_by_dn(site: AdminSite) -> None:
    accounts = {n for n in ("atlas001", "atlas002", "atlas003", "atlas004", "atlas005",
                            "atlasprd01", "atlasprd02")
                if os.lstat(site.gmd / n).st_nlink == 2}
    code, doc = site.json("release", "--dn", ALICE.lower())
    assert code == 0
    released = {d["lease"]: d["account"] for d in doc["released"]}
    assert set(released) == {lease_name(ALICE), lease_name(ALICE, ("atlas", "atlasprd"))}
    assert all(d["outcome"] == "removed" for d in doc["released"])
    for account in released.values():
        assert os.lstat(site.gmd / account).st_nlink == 1
    assert site.lease_path(BOB).exists()
    still = {n for n in accounts if os.lstat(site.gmd / n).st_nlink == 2}
    assert still == accounts - set(released.values())
    code, out, err = site.run("release", "--dn", ALICE)
    assert (code, out) == (1, "") and "no lease for " + ALICE in err


def snapshot(d: Path) -> dict[str, tuple[int, int, float, float]]:
    out = {}
    for name in os.listdir(d):
        st = os.lstat(d / name)
        out[name] = (st.st_ino, st.st_nlink, st.st_mtime, st.st_ctime)
    return out


def test_expire_dry_run_changes_nothing(site: AdminSite) -> None:
    time.sleep(2.1)  # past the settle time of the leases the fixture back-dated
    before, groups_before = snapshot(site.gmd), snapshot(site.groupdir)
    code, doc = site.json("expire", "--older-than", "7d", "--dry-run")
    assert code == 0 and doc["dry_run"] is True
    assert sorted(d["lease"] for d in doc["expired"]) == sorted(
        [lease_name(BOB), lease_name(OLDIE), "%2fcn%3dghost"])
    assert snapshot(site.gmd) == before and snapshot(site.groupdir) == groups_before
    code, out, _ = site.run("expire", "--older-than", "7d", "--dry-run")
    assert code == 0 and out.splitlines()[-1].startswith("would expire 3 lease(s)")
    assert snapshot(site.gmd) == before
    assert (site.root / "audit.log").read_text() == ""  # a dry run audits nothing


def test_expire_removes_old_leases_only(site: AdminSite) -> None:
    time.sleep(2.1)
    stale_claim = ".lease-claim.1.999999.abc.elsewhere"  # made in 1970 on another host
    free = next(n for n in ACCOUNTS if os.lstat(site.gmd / n).st_nlink == 1)
    os.link(site.gmd / free, site.gmd / stale_claim)
    code, doc = site.json("expire", "--older-than", "20d")
    assert code == 0
    expired = sorted(d["lease"] for d in doc["expired"])
    assert expired == sorted([lease_name(OLDIE), "%2fcn%3dghost"])
    assert os.lstat(site.gmd / "old7").st_nlink == 1
    audited = [json.loads(x) for x in (site.root / "audit.log").read_text().splitlines()]
    assert [(a["decision"], a["account"]) for a in audited] == [("Expired", "old7")]
    assert site.lease_path(BOB).exists() and site.lease_path(ALICE).exists()
    assert not (site.gmd / stale_claim).exists()
    code, doc = site.json("expire", "--older-than", "90m")
    assert [d["lease"] for d in doc["expired"]] == [lease_name(BOB)]
    assert site.lease_path(ALICE).exists() and (site.gmd / lease_name(CAROL)).exists()
    assert len(os.listdir(site.groupdir)) == 4  # the fresh group lease stays
    code, out, err = site.run("expire", "--older-than", "0d")
    assert (code, out) == (2, "") and "--older-than '0d'" in err


@pytest.mark.parametrize("duration,seconds", [
    ("30d", 30 * DAY), ("12h", 43200), ("90m", 5400), ("3600s", 3600), ("2w", 14 * DAY)])
def test_durations(duration: str, seconds: float) -> None:
    assert parse_duration(duration, "--x") == seconds


@pytest.mark.parametrize("bad", ["", "7", "d", "-1d", "1.5h", "3 days", "0s"])
def test_bad_durations(bad: str) -> None:
    from site_admin.common import AdminError

    with pytest.raises(AdminError, match="expected a positive duration"):
        parse_duration(bad, "--older-than")


# --- the gaps of a removal, one at a time ------------------------------------------------


def old_lease(tmp_path: Path) -> tuple[Path, str, str]:
    """A gridmapdir with Alice's lease on one account, unrenewed for a day."""
    d = tmp_path / "gmd"
    d.mkdir()
    for i in range(1, 4):
        (d / f"opool{i:03d}").touch()
    lease = GridmapDir(d).acquire("opool", ALICE)
    then = time.time() - DAY
    os.utime(d / lease.name, (then, then))
    return d, lease.name, lease.account


def no_claims(d: Path) -> bool:
    return not [n for n in os.listdir(d) if n.startswith(".")]


@pytest.mark.parametrize("step", ["checked", "aside"])
def test_expire_keeps_a_lease_renewed_in_the_gap(tmp_path: Path, step: str) -> None:
    """A renewal just before the rename (through the lease name) or just after it
    (through the entry's name, as C's get_otherlink does) keeps the lease, on its account."""
    d, name, account = old_lease(tmp_path)

    def renew(at: str, _lease: str) -> None:
        if at == step:
            os.utime(d / (name if at == "checked" else account))

    [removal] = upkeep.expire_leases(str(d), time.time() - 3600, hook=renew)
    assert (removal.outcome, removal.reason) == ("kept", "renewed meanwhile")
    assert os.lstat(d / name).st_ino == os.lstat(d / account).st_ino
    assert os.lstat(d / name).st_mtime > time.time() - 60 and no_claims(d)


def test_expire_keeps_a_lease_re_linked_in_the_gap(tmp_path: Path) -> None:
    """Released and leased again (to another account) between the scan and the rename:
    the new lease survives on its new account."""
    d, name, account = old_lease(tmp_path)
    other = next(f"opool{i:03d}" for i in range(1, 4) if f"opool{i:03d}" != account)

    def relink(at: str, _lease: str) -> None:
        if at == "checked":
            os.unlink(d / name)
            os.link(d / other, d / name)

    [removal] = upkeep.expire_leases(str(d), time.time() - 3600, hook=relink)
    assert removal.outcome == "kept" and "another inode" in removal.reason
    assert os.lstat(d / name).st_ino == os.lstat(d / other).st_ino
    assert os.lstat(d / account).st_nlink == 1 and no_claims(d)


def test_expire_superseded_when_the_key_leased_again_while_aside(tmp_path: Path) -> None:
    """Renewed (so kept) but the key leased another account while ours was aside: the
    newer lease wins, ours is dropped, and nothing is left linked twice."""
    d, name, account = old_lease(tmp_path)
    other = next(f"opool{i:03d}" for i in range(1, 4) if f"opool{i:03d}" != account)

    def race(at: str, _lease: str) -> None:
        if at == "aside":
            os.utime(d / account)
            os.link(d / other, d / name)

    [removal] = upkeep.expire_leases(str(d), time.time() - 3600, hook=race)
    assert removal.outcome == "superseded"
    assert os.lstat(d / name).st_ino == os.lstat(d / other).st_ino
    assert os.lstat(d / account).st_nlink == 1 and no_claims(d)


def test_expire_settles_a_lease_just_linked(tmp_path: Path) -> None:
    """A C writer's new lease carries the entry's old mtime until its utime: expire with a
    settle time keeps a lease whose inode changed just now."""
    d, name, account = old_lease(tmp_path)  # utime just now: ctime is fresh
    [removal] = upkeep.expire_leases(str(d), time.time() - 3600, settle=2.0)
    assert removal.outcome == "kept" and "changed in the last 2 s" in removal.reason
    assert (d / name).exists()
    [removal] = upkeep.expire_leases(str(d), time.time() - 3600)
    assert removal.outcome == "removed" and os.lstat(d / account).st_nlink == 1


def test_release_refuses_a_lease_that_moved_in_the_gap(tmp_path: Path) -> None:
    d, name, account = old_lease(tmp_path)
    other = next(f"opool{i:03d}" for i in range(1, 4) if f"opool{i:03d}" != account)

    def move(at: str, _lease: str) -> None:
        if at == "checked":
            os.unlink(d / name)
            os.link(d / other, d / name)

    removal = upkeep.release_account(str(d), account, hook=move)
    assert removal is not None and removal.outcome == "kept"
    assert os.lstat(d / name).st_ino == os.lstat(d / other).st_ino and no_claims(d)


def test_a_reuse_racing_a_removal_leases_afresh(tmp_path: Path) -> None:
    """The writer's side of the gap: the lease is released between the writer's lstat and
    its touch. The writer looks again and makes a new lease; it never returns the account
    of a lease that no longer exists."""
    d, name, _account = old_lease(tmp_path)
    gmd = GridmapDir(d)
    real_lstat = os.lstat
    state: dict[str, Any] = {"armed": True}

    def lstat_then_release(path: Any, *args: Any, **kw: Any) -> os.stat_result:
        st = real_lstat(path, *args, **kw)
        if state["armed"] and os.fspath(path) == str(d / name):
            state["armed"] = False  # the real release runs in the gap, once
            state["removal"] = upkeep.release_name(str(d), name)
        return st

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "lstat", lstat_then_release)
        lease = gmd.acquire("opool", ALICE)
    assert state["removal"].outcome == "removed"
    assert lease.reused is False
    assert os.lstat(d / name).st_ino == os.lstat(d / lease.account).st_ino
    assert os.lstat(d / name).st_nlink == 2 and no_claims(d)


# --- expire beside live writers ----------------------------------------------------------

WORKER = r"""
import json, os, random, sys, time
from leases.gridmapdir import GridmapDir, GridmapDirError, lease_name
path, stop, seed, dns = sys.argv[1], sys.argv[2], int(sys.argv[3]), json.loads(sys.argv[4])
rng, gmd, told = random.Random(seed), GridmapDir(path), {}

def lease(dn):
    for _ in range(100):
        try:
            told[dn] = gmd.acquire("pexp", dn).account
            return
        except GridmapDirError:               # a race lost after retries: ask again
            time.sleep(0.001)
    print(json.dumps({"error": dn})); sys.exit(1)

for rnd in range(1000):                       # bounded: the test stops us earlier
    if os.path.exists(stop):
        break
    for dn in dns:
        if rnd and rng.random() > 0.15:
            continue                          # a renewal now and then, at random
        lease(dn)
        if rng.random() < 0.7:                # and this lease now looks a day old
            old = time.time() - 86400
            try:
                os.utime(os.path.join(path, lease_name(dn)), (old, old))
            except FileNotFoundError:
                pass
    time.sleep(rng.uniform(0.1, 0.3))
for dn in dns:                                # the last renewal of each DN: must survive
    lease(dn)
print(json.dumps(told))
"""


def lease_map(d: Path) -> dict[str, str]:
    """Assert the invariants; return lease name -> account."""
    by_ino: dict[int, list[str]] = {}
    for name in os.listdir(d):
        assert not name.startswith("."), f"left behind: {name}"
        by_ino.setdefault(os.lstat(d / name).st_ino, []).append(name)
    owner = {}
    for names in by_ino.values():
        leases = [n for n in names if n.startswith("%")]
        entries = [n for n in names if not n.startswith("%")]
        assert len(entries) == 1, f"a lease without a pool account inode: {names}"
        assert len(leases) <= 1, f"{entries[0]} leased twice: {leases}"
        assert os.lstat(d / entries[0]).st_nlink == len(names)
        if leases:
            owner[leases[0]] = entries[0]
    return owner


def run_load(site: AdminSite, hot: list[list[str]], cold: list[str],
             c_writer: Any = None, seconds: float = 7.0) -> None:  # fmt: skip
    """Workers lease and renew ``hot`` DNs (one process per list; back-dating most leases
    after each renewal), ``c_writer(stop)`` runs beside them if given, and ``scas-admin
    expire`` runs again and again; then every invariant is checked."""
    gmd = GridmapDir(site.gmd)
    for dn in cold:
        site.age(site.gmd / gmd.acquire("pexp", dn).name, 2 * DAY)
    stop = site.root / "stop"
    procs = [subprocess.Popen([sys.executable, "-c", WORKER, str(site.gmd), str(stop), str(k),
                               json.dumps(dns)], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True)
             for k, dns in enumerate(hot)]  # fmt: skip
    c_result: dict[str, Any] = {}
    c_thread = None
    if c_writer is not None:
        c_thread = threading.Thread(target=lambda: c_result.update(c_writer(stop)))
        c_thread.start()
    expired: list[str] = []
    kept = 0
    deadline = time.monotonic() + seconds
    try:
        while time.monotonic() < deadline:
            proc = subprocess.run([SCAS_ADMIN, "expire", "--older-than", "1h", "--json",
                                   "--config", str(site.config)],
                                  capture_output=True, text=True, timeout=120)  # fmt: skip
            assert proc.returncode == 0, proc.stderr
            doc = json.loads(proc.stdout)
            expired += [d["lease"] for d in doc["expired"]]
            kept += len(doc["kept"])
    finally:
        stop.touch()
        outs = [p.communicate(timeout=120) for p in procs]
        if c_thread is not None:
            c_thread.join(300)
    told: dict[str, str] = {}
    for (out, err), p in zip(outs, procs, strict=True):
        assert p.returncode == 0, err[-2000:] + out[-500:]
        told.update(json.loads(out.splitlines()[-1]))
    owner = lease_map(site.gmd)
    assert {lease_name(dn) for dn in cold} <= set(expired)
    assert not {lease_name(dn) for dn in cold} & set(owner)
    # expire took leases from under the workers (who then leased again)
    assert {lease_name(dn) for dn in told} & set(expired)
    # the last renewal of every DN survived every expire: it is the lease on disk now
    wrong = {dn: (acct, owner.get(lease_name(dn))) for dn, acct in {**told, **c_result}.items()
             if owner.get(lease_name(dn)) != acct}
    assert wrong == {}, f"told one account, lease says another (kept {kept} in the runs)"


def pexp_site(tmp_path: Path, n: int, *, c_path: bool = False) -> AdminSite:
    accounts = [f"pexp{i:03d}" for i in range(1, n + 1)]
    return write_site(tmp_path / "site", accounts, c_plugin_path=c_path,
                      pool_map='"/DC=org/DC=example/CN=Load *" .pexp\n')


@pytest.mark.slow
def test_expire_beside_live_python_writers(tmp_path: Path) -> None:
    site = pexp_site(tmp_path, 60)
    dns = [f"/DC=org/DC=example/CN=Load {i}" for i in range(40)]
    run_load(site, [dns[0:8], dns[8:16], dns[16:24]], cold=dns[24:40])


@pytest.fixture
def c_oracle(tmp_path_factory: pytest.TempPathFactory) -> Any:
    from tests.compat.oracle import build_oracle, missing_reason

    reason = missing_reason()
    if reason is None and os.geteuid() != 0:
        reason = "needs root to create the pool accounts C LCMAPS looks up"
    if reason is not None:
        pytest.skip(f"C LCMAPS oracle unavailable: {reason}")
    return build_oracle(tmp_path_factory.mktemp("oracle"))


@pytest.mark.slow
def test_expire_beside_python_and_c_writers(tmp_path: Path, c_oracle: Any) -> None:
    from tests.unix_accounts import unix_accounts

    n = 40
    site = pexp_site(tmp_path, n, c_path=True)
    dns = [f"/DC=org/DC=example/CN=Load {i}" for i in range(30)]
    c_dns = [f"/DC=org/DC=example/CN=Load C{i}" for i in range(6)]

    def c_map(dn: str) -> str:
        for _ in range(20):  # C gives up when it loses a race: a client asks again
            proc = subprocess.run(
                [str(c_oracle.binary), "--no-lcas", "--dn", dn, "--config-dir",
                 str(site.root), "--debug", "0", "--log", "/dev/null"],
                capture_output=True, text=True, timeout=60)  # fmt: skip
            out = json.loads(proc.stdout.strip().splitlines()[-1])
            if out["decision"] == "permit":
                return str(out["username"])
        raise AssertionError(f"C never mapped {dn}: {out}")

    def c_writer(stop: Path) -> dict[str, str]:
        told: dict[str, str] = {}
        rng = random.Random(7)
        for _ in range(200):  # bounded
            last = stop.exists()
            for dn in rng.sample(c_dns, len(c_dns)):
                told[dn] = c_map(dn)
            if last:
                break
        return told

    with unix_accounts([f"pexp{i:03d}" for i in range(1, n + 1)]):
        run_load(site, [dns[0:6], dns[6:12]], cold=dns[12:30], c_writer=c_writer)


def test_expire_shows_progress_on_a_terminal_only(tmp_path: Path) -> None:
    site = pexp_site(tmp_path, 150)
    gmd = GridmapDir(site.gmd)
    for i in range(120):
        site.age(site.gmd / gmd.acquire("pexp", f"/DC=org/DC=example/CN=Load {i}").name, DAY)
    time.sleep(2.1)
    argv = [SCAS_ADMIN, "expire", "--older-than", "1h", "--dry-run", "--config", str(site.config)]
    plain = subprocess.run(argv, capture_output=True, text=True, timeout=60)
    assert plain.returncode == 0 and plain.stderr == ""
    leader, follower = pty.openpty()
    seen = b""
    try:
        proc = subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=follower)
        os.close(follower)
        with contextlib.suppress(OSError):  # EIO once the child has closed the terminal
            while chunk := os.read(leader, 65536):
                seen += chunk
        proc.wait(60)
    finally:
        os.close(leader)
    assert proc.stdout is not None
    proc_stdout = proc.stdout.read()
    proc.stdout.close()
    assert proc.returncode == 0
    assert b"scan [" in seen and b"expire [" in seen and b"120/120" in seen
    assert proc_stdout.decode().splitlines()[-1].startswith("would expire 120 lease(s)")
