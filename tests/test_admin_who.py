"""``scas-admin who ACCOUNT --at TIME`` from a rotated audit trail and the gridmapdir.

Audit lines are written by the server's own ``AuditLog`` (and, where root can create the
pool account, by a real ``scas-server`` answering real queries); leases are made, released
and reused in a real gridmapdir; the audit file is rotated the logrotate ways (``.1``,
``.2.gz``, dateext).
"""

from __future__ import annotations

import gzip
import json
import os
import shutil
import signal
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from leases.gridmapdir import GridmapDir, lease_name
from scas_server.audit import AuditLog, AuditRecord
from tests.test_admin_pools import ALICE, BOB, CAROL, AdminSite, write_site

PEP = "/DC=org/DC=example/CN=ce.example.org"


def iso_at(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")


def permit(path: Path, dn: str, account: str, request_id: str, **kw: Any) -> float:
    """One Permit line, as the server writes it; its time."""
    log = AuditLog(str(path))
    now = datetime.now(UTC)
    log.write(AuditRecord(pep=PEP, dn=dn, fqans=("/atlas/Role=NULL/Capability=NULL",),
                          decision="Permit", account=account, uid=40001,
                          lease=lease_name(dn), request_id=request_id, **kw), now=now)
    log.close()
    time.sleep(0.02)
    return now.timestamp()


def gzip_to(src: Path, dst: Path) -> None:
    with open(src, "rb") as fh, gzip.open(dst, "wb") as out:
        shutil.copyfileobj(fh, out)
    src.unlink()


def moment() -> float:
    time.sleep(0.02)
    t = time.time()
    time.sleep(0.02)
    return t


@pytest.fixture
def site(tmp_path: Path) -> AdminSite:
    """A pool of one account, so a released account is the one the next DN gets."""
    return write_site(tmp_path / "site", ["atlas001"])


def test_who_across_rotation_and_a_released_then_reused_account(site: AdminSite) -> None:
    audit = site.root / "audit.log"
    gmd = GridmapDir(site.gmd)
    assert gmd.acquire("atlas", ALICE).account == "atlas001"
    permit(audit, ALICE, "atlas001", "r1")
    t_alice = moment()
    os.rename(audit, site.root / "audit.log.1")
    assert gmd.acquire("atlas", ALICE).reused
    permit(audit, ALICE, "atlas001", "r2")
    gzip_to(site.root / "audit.log.1", site.root / "audit.log.2.gz")
    os.rename(audit, site.root / "audit.log.1")
    t_between = moment()
    code, _, err = site.run("release", "atlas001")
    assert code == 0, err
    assert gmd.acquire("atlas", BOB).account == "atlas001"
    permit(audit, BOB, "atlas001", "r3")
    permit(audit, BOB, "atlas002", "elsewhere")  # another account: not Bob's tenure here
    t_bob = moment()

    code, doc = site.json("who", "atlas001", "--at", iso_at(t_alice))
    assert code == 0 and doc["found"] and doc["certainty"] == "certain"
    holder = doc["holder"]
    assert (holder["dn"], holder["request_id"], holder["pep"]) == (ALICE, "r1", PEP)
    assert holder["fqans"] == ["/atlas/Role=NULL/Capability=NULL"]
    assert holder["source"] == "audit.log.2.gz:1"
    events = [(e["request_id"], e["event"], e["source"]) for e in doc["events"]]
    assert events == [
        ("r1", "first seen (no earlier audit line for the account); "
               "last seen at or before TIME", "audit.log.2.gz:1"),
        ("r2", "first seen after TIME; last seen", "audit.log.1:1"),
        ("r3", "next holder first seen", "audit.log:1"),
    ]
    assert doc["gridmapdir"]["dn"] == BOB.lower()

    code, doc = site.json("who", "atlas001", "--at", iso_at(t_between))
    assert code == 0 and doc["holder"]["dn"] == ALICE and doc["certainty"] == "probable"
    assert "released or expired" in doc["notes"][0]

    code, doc = site.json("who", "atlas001", "--at", iso_at(t_bob))
    assert code == 0 and doc["certainty"] == "certain"
    assert (doc["holder"]["dn"], doc["holder"]["request_id"]) == (BOB, "r3")
    assert doc["events"][0]["event"] == "previous holder last seen"
    assert doc["events"][0]["request_id"] == "r2"
    assert doc["events"][1]["event"].startswith("first seen, lease new")

    code, out, err = site.run("who", "atlas001", "--at", iso_at(t_alice))
    assert code == 0 and err == ""
    assert out.splitlines()[0].endswith(f": {ALICE} (certain)")
    assert "request  r1 from PEP " + PEP in out


def test_who_nobody_before_the_first_line(site: AdminSite) -> None:
    audit = site.root / "audit.log"
    t_before = moment()
    GridmapDir(site.gmd).acquire("atlas", ALICE)
    permit(audit, ALICE, "atlas001", "r1")
    code, out, err = site.run("who", "atlas001", "--at", iso_at(t_before))
    assert code == 1 and err == ""
    assert out.splitlines()[0].endswith(": nobody found")
    assert "the audit trail starts at" in out
    code, doc = site.json("who", "atlas002", "--at", "now")
    assert code == 1 and doc["found"] is False


def test_who_now_is_what_the_gridmapdir_holds(site: AdminSite) -> None:
    audit = site.root / "audit.log"
    gmd = GridmapDir(site.gmd)
    gmd.acquire("atlas", ALICE)
    permit(audit, ALICE, "atlas001", "r1")
    code, doc = site.json("who", "atlas001", "--at", "now")
    assert code == 0 and doc["certainty"] == "certain" and doc["holder"]["request_id"] == "r1"
    assert gmd.release(lease_name(ALICE))
    code, out, _ = site.run("who", "atlas001", "--at", "now")
    assert code == 1 and "  now: free" in out
    assert f"the last Permit for it was {ALICE}" in out
    gmd.acquire("atlas", CAROL)  # no audit line: C LCMAPS on another host
    code, doc = site.json("who", "atlas001", "--at", "now")
    assert code == 0 and (doc["certainty"], doc["source"]) == ("certain", "gridmapdir")
    assert doc["holder"]["dn"] == CAROL.lower() and doc["holder"]["request_id"] is None


def test_who_uncertain_when_only_the_gridmapdir_knows(site: AdminSite) -> None:
    """C LCMAPS (or an audit file since deleted) leased the account: no audit line, but the
    lease is older than TIME. The answer is given, and flagged."""
    (site.root / "audit.log").write_text("")
    GridmapDir(site.gmd).acquire("atlas", CAROL)
    t = moment()
    code, doc = site.json("who", "atlas001", "--at", iso_at(t))
    assert code == 0 and doc["certainty"] == "uncertain" and doc["source"] == "gridmapdir"
    assert doc["holder"]["dn"] == CAROL.lower() and doc["holder"]["request_id"] is None
    assert "no audit line" in doc["notes"][0]
    code, _, _ = site.run("who", "atlas001", "--at", iso_at(t - 3600))
    assert code == 1  # the lease was made after that: nobody known


def test_who_flags_a_lease_the_audit_does_not_explain(site: AdminSite) -> None:
    audit = site.root / "audit.log"
    gmd = GridmapDir(site.gmd)
    gmd.acquire("atlas", ALICE)
    permit(audit, ALICE, "atlas001", "r1")
    assert gmd.release(lease_name(ALICE))
    gmd.acquire("atlas", CAROL)  # by a writer that keeps no audit (C LCMAPS elsewhere)
    t = moment()
    code, doc = site.json("who", "atlas001", "--at", iso_at(t))
    assert code == 0 and doc["certainty"] == "uncertain"
    assert doc["holder"]["dn"] == ALICE
    assert CAROL.lower() in doc["notes"][0] and "another writer" in doc["notes"][0]


def test_who_reads_dateext_files_and_survives_damage(site: AdminSite) -> None:
    audit = site.root / "audit.log"
    GridmapDir(site.gmd).acquire("atlas", ALICE)
    permit(audit, ALICE, "atlas001", "d1")
    gzip_to(audit, site.root / "audit.log-20260101.gz")
    t = moment()
    permit(audit, ALICE, "atlas001", "d2")
    os.rename(audit, site.root / "audit.log-20260102")
    with open(site.root / "audit.log-20260102", "a") as fh:
        fh.write('{"time":"2026-01-02T00:00:00Z","account":"atlas001","dn":"/CN=ha\n')
    permit(audit, BOB, "atlas009", "other")
    damaged = gzip.compress(b'{"account":"atlas001"}\n' * 200)[:-30]
    (site.root / "audit.log.7.gz").write_bytes(damaged)
    (site.root / "audit.log.bak").write_text("not an audit file of ours\n")
    code, doc = site.json("who", "atlas001", "--at", iso_at(t))
    _, _, err = site.run("who", "atlas001", "--at", iso_at(t))
    assert code == 0
    assert [os.path.basename(f) for f in doc["audit_files"]] == [
        "audit.log-20260101.gz", "audit.log-20260102", "audit.log.7.gz", "audit.log"]
    assert (doc["holder"]["request_id"], doc["certainty"]) == ("d1", "certain")
    assert "audit.log-20260102:2: not an audit line (skipped)" in err
    assert "audit.log.7.gz:" in err and "read up to there" in err
    assert all(line.startswith("scas-admin: ") for line in err.splitlines())


def test_who_bad_input(site: AdminSite) -> None:
    code, out, err = site.run("who", "atlas001", "--at", "yesterday")
    assert (code, out) == (2, "") and err.startswith("scas-admin: --at 'yesterday'")
    (site.root / "audit.log").unlink()
    code, out, err = site.run("who", "atlas001", "--at", "now")
    assert (code, out) == (2, "") and "audit.log: no such file" in err
    text = site.config.read_text().replace("audit: {file: audit.log}", "audit: {file: '-'}")
    site.config.write_text(text)
    code, out, err = site.run("who", "atlas001", "--at", "now")
    assert (code, out) == (2, "") and "audit.file is '-'" in err and err.count("\n") == 1


# --- with the real server -------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                    reason="needs root and useradd to create the pool account")
def test_who_with_a_real_server(tmp_path: Path) -> None:
    """Real queries to ``scas-server``: Carol maps to the one pool account; the audit file
    is rotated twice (``.1``, then ``.2.gz``); the account is released and Dave gets it."""
    from server_harness import USER_DN, Server, Site

    from client import xacml
    from site_admin.cli import main
    from tests.unix_accounts import unix_accounts

    site = Site(str(tmp_path / "site"))
    gmd = Path(site.directory) / "gridmapdir"
    gmd.mkdir()
    (gmd / "scaswho1").touch()
    dave = site.pki.user("dave", "/DC=org/DC=example/O=Users/CN=Dave Later")
    mapfile = Path(site.directory) / "grid-mapfile"
    mapfile.write_text(f'"{USER_DN}" .scaswho\n"{dave.dn}" .scaswho\n')
    (Path(site.directory) / "lcmaps.db").write_text(
        'noop = "lcmaps_voms.mod"\n'
        f'pool = "lcmaps_poolaccount.mod" "-gridmapfile {mapfile}" "-gridmapdir {gmd}"\n\n'
        "glexec_get_account:\nnoop -> pool\n\ngatekeeper:\nnoop -> pool\n")
    audit = Path(site.audit)

    def ask(server: Server, dn: str, cert: str, request_id: str) -> None:
        with open(cert, "rb") as fh:
            body = xacml.build_request(subject_dn=dn, cert_chain=fh.read(),
                                       request_id=request_id)
        status, reply = server.post(body)
        decision = xacml.parse_response(reply)
        assert status == 200 and decision.decision == "Permit", decision.status_message
        assert decision.username == "scaswho1"

    def rotate(server: Server) -> None:
        if (audit.parent / "audit.log.1").exists():
            gzip_to(audit.parent / "audit.log.1", audit.parent / "audit.log.2.gz")
        os.rename(audit, audit.parent / "audit.log.1")
        os.kill(server.proc.pid, signal.SIGUSR1)
        time.sleep(1.2)  # the workers' stat check reopens within a second anyway

    def who(at: float) -> tuple[int, str]:
        import contextlib
        import io

        out = io.StringIO()
        with contextlib.redirect_stdout(out):
            code = main(["who", "scaswho1", "--at", iso_at(at), "--json",
                         "--config", site.config_path])
        return code, out.getvalue()

    with unix_accounts(["scaswho1"]):
        server = Server(site, site.write_config(workers=2))
        try:
            ask(server, USER_DN, site.user.cert_path, "carol-1")
            t_carol = moment()
            rotate(server)
            ask(server, USER_DN, site.user.cert_path, "carol-2")
            rotate(server)
            assert main(["release", "scaswho1", "--config", site.config_path]) == 0
            ask(server, dave.dn, dave.cert_path, "dave-1")
            t_dave = moment()
        finally:
            server.stop()

    code, out = who(t_carol)
    doc = json.loads(out)
    assert code == 0 and doc["certainty"] == "certain"
    assert (doc["holder"]["dn"], doc["holder"]["request_id"]) == (USER_DN, "carol-1")
    assert doc["holder"]["source"].startswith("audit.log.2.gz:")
    assert [e["request_id"] for e in doc["events"]] == ["carol-1", "carol-2", "dave-1"]
    code, out = who(t_dave)
    doc = json.loads(out)
    assert code == 0 and doc["certainty"] == "certain"
    assert (doc["holder"]["dn"], doc["holder"]["request_id"]) == (dave.dn, "dave-1")
    assert doc["gridmapdir"]["lease"] == lease_name(dave.dn)


def test_who_names_the_request_that_made_the_lease(site: AdminSite) -> None:
    """With ``lease_event`` in the audit, the tenure's start is what the server saw, not an
    inference: the lease made by Bob's first request, or one Carol already held."""
    audit = site.root / "audit.log"
    permit(audit, ALICE, "atlas001", "a1", lease_event="new")
    permit(audit, BOB, "atlas001", "b1", lease_event="new")
    permit(audit, BOB, "atlas001", "b2", lease_event="held")
    t_bob = moment()
    permit(audit, CAROL, "atlas001", "c1", lease_event="held")
    t_carol = moment()
    code, doc = site.json("who", "atlas001", "--at", iso_at(t_bob))
    assert code == 0 and doc["holder"]["request_id"] == "b2"
    start = next(e for e in doc["events"] if e["request_id"] == "b1")
    assert start["event"].startswith("first seen, lease made by this request")
    assert start["lease_event"] == "new"
    code, doc = site.json("who", "atlas001", "--at", iso_at(t_carol))
    start = next(e for e in doc["events"] if e["request_id"] == "c1")
    assert start["event"].startswith("first seen, lease already held")


def test_who_sees_an_audited_release_end_the_tenure(site: AdminSite) -> None:
    """scas-admin release writes a line; before it the holder is certain, after it nobody."""
    audit = site.root / "audit.log"
    GridmapDir(site.gmd).acquire("atlas", ALICE)
    permit(audit, ALICE, "atlas001", "a1", lease_event="new")
    t_held = moment()
    code, _, err = site.run("release", "atlas001")
    assert code == 0 and err == ""
    t_after = moment()
    code, doc = site.json("who", "atlas001", "--at", iso_at(t_held))
    assert code == 0 and doc["certainty"] == "certain" and doc["holder"]["dn"] == ALICE
    assert "released at" in doc["notes"][0] and doc["events"][-1]["event"] == "lease released"
    code, doc = site.json("who", "atlas001", "--at", iso_at(t_after))
    assert code == 1 and not doc["found"]
    assert doc["notes"][0].startswith(f"{ALICE}'s lease ended before TIME: released at")


def test_release_without_an_audit_file_warns_and_makes_none(site: AdminSite) -> None:
    """The audit file is the server's: scas-admin appends, never creates (as root it would
    lock the server out of its own log)."""
    (site.root / "audit.log").unlink()
    GridmapDir(site.gmd).acquire("atlas", ALICE)
    code, _, err = site.run("release", "atlas001")
    assert code == 0 and "released not audited: No such file or directory" in err
    assert not (site.root / "audit.log").exists()


def test_release_with_a_fifo_for_an_audit_file_neither_hangs_nor_writes(site: AdminSite) -> None:
    """Whoever owns the log directory could put a FIFO there: root must not block on it."""
    (site.root / "audit.log").unlink()
    os.mkfifo(site.root / "audit.log")
    GridmapDir(site.gmd).acquire("atlas", ALICE)
    code, _, err = site.run("release", "atlas001")
    assert code == 0 and "released not audited" in err
    assert not os.path.exists(site.gmd / lease_name(ALICE))
