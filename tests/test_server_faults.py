"""Faults of the service's own machinery answer Indeterminate, so clients fail over;
policy outcomes answer Deny. On the wire only a reason class; the detail in the audit line.

Real files on small tmpfs mounts (out of inodes, read-only, full), real pool accounts and a
real ``scas-server``. Needs root (mounts, accounts).
"""

from __future__ import annotations

import json
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import USER_DN, Server, Site
from unix_accounts import unix_accounts

from client import xacml
from client.xacml import ids

pytestmark = [pytest.mark.slow, pytest.mark.root]
if os.geteuid() != 0:
    pytestmark.append(pytest.mark.skip(reason="needs root (tmpfs mounts, pool accounts)"))

ACCOUNTS = ("sfault01", "sfault02")


@pytest.fixture(scope="module")
def accounts() -> Iterator[None]:
    with unix_accounts(ACCOUNTS):
        yield


class Tmpfs:
    """A tmpfs of a few inodes or bytes, unmounted afterwards."""

    def __init__(self, path: Path, options: str) -> None:
        path.mkdir(parents=True)
        subprocess.run(["mount", "-t", "tmpfs", "-o", options, "tmpfs", str(path)], check=True)
        self.path = path

    def fill(self) -> None:
        """Use up every inode and byte left."""
        i = 0
        while True:
            try:
                with open(self.path / f"filler{i}", "wb") as fh:
                    fh.write(b"x" * 4096)
            except OSError:
                break
            i += 1

    def read_only(self) -> None:
        subprocess.run(["mount", "-o", "remount,ro", str(self.path)], check=True)

    def umount(self) -> None:
        subprocess.run(["umount", "-l", str(self.path)], capture_output=True)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[list[Tmpfs]]:
    made: list[Tmpfs] = []
    yield made
    for m in made:
        m.umount()


def pool_site(tmp_path: Path, gridmapdir: Path) -> Site:
    site = Site(str(tmp_path / "site"))
    for name in ACCOUNTS:
        (gridmapdir / name).touch()
    Path(site.directory, "grid-mapfile").write_text(f'"{USER_DN}" .sfault\n')
    Path(site.directory, "lcmaps.db").write_text(f"""\
pool = "lcmaps_poolaccount.mod" "-gridmapfile {site.directory}/grid-mapfile"
       "-gridmapdir {gridmapdir}"
noop = "lcmaps_voms.mod"

glexec_get_account:
noop -> pool

gatekeeper:
noop -> pool
""")
    return site


def health(server: Server) -> tuple[int, dict[str, object]]:
    status, body = server.request("GET", "/health")
    return status, json.loads(body)


def ask(server: Server, site: Site) -> xacml.Decision:
    status, body = server.post(site.query())
    assert status == 200
    return xacml.parse_response(body)


def indeterminate(decision: xacml.Decision) -> None:
    assert decision.decision == "Indeterminate"
    assert decision.status_code == ids.STATUS_PROCESSING_ERROR
    assert decision.status_message == "service unavailable"
    assert decision.uid is None and decision.username is None


def test_gridmapdir_out_of_inodes(tmp_path: Path, accounts: None, mounts: list[Tmpfs]) -> None:
    """A full store: Indeterminate, detail in the audit line, no claim or lease left, and
    /health unhealthy naming the store. Freed space: the next query gets its Permit."""
    store = Tmpfs(tmp_path / "gmd", "size=1m,nr_inodes=64")
    mounts.append(store)
    site = pool_site(tmp_path, store.path)
    server = Server(site, site.write_config())
    try:
        assert health(server)[0] == 200
        store.fill()
        indeterminate(ask(server, site))
        line = site.audit_lines()[-1]
        assert line["decision"] == "Indeterminate" and line["dn"] == USER_DN
        assert "No space left on device" in line["reason"] and "poolaccount" in line["reason"]
        assert not [n for n in os.listdir(store.path) if n.startswith((".", "%"))]
        status, report = health(server)
        assert status == 503 and report["ok"] is False
        stores = report["lease_stores"]
        assert isinstance(stores, list) and stores[0]["writable"] is False
        for name in os.listdir(store.path):
            if name.startswith("filler"):
                os.unlink(store.path / name)
        assert ask(server, site).decision == "Permit"
        assert health(server)[0] == 200
    finally:
        server.stop()


def test_gridmapdir_read_only(tmp_path: Path, accounts: None, mounts: list[Tmpfs]) -> None:
    store = Tmpfs(tmp_path / "gmd", "size=1m")
    mounts.append(store)
    site = pool_site(tmp_path, store.path)
    server = Server(site, site.write_config())
    try:
        store.read_only()
        indeterminate(ask(server, site))
        assert "Read-only file system" in site.audit_lines()[-1]["reason"]
        assert health(server)[0] == 503
    finally:
        server.stop()


def test_pool_exhausted_is_a_deny(tmp_path: Path, accounts: None) -> None:
    """Every replica shares the pool, so an exhausted one is a Deny, with its own class."""
    gmd = tmp_path / "gmd"
    gmd.mkdir()
    site = pool_site(tmp_path, gmd)
    for i, name in enumerate(ACCOUNTS):
        os.link(gmd / name, gmd / f"%2fcn%3dsomebody{i}")
    server = Server(site, site.write_config())
    try:
        decision = ask(server, site)
        assert decision.decision == "Deny"
        assert decision.status_message == "no account available"
        assert "no free account in pool" in site.audit_lines()[-1]["reason"]
        assert health(server)[0] == 200  # a full pool is policy, not a fault
    finally:
        server.stop()


def test_no_mapping_and_ban_say_only_their_class(tmp_path: Path, accounts: None) -> None:
    gmd = tmp_path / "gmd"
    gmd.mkdir()
    site = pool_site(tmp_path, gmd)
    Path(site.directory, "grid-mapfile").write_text("")
    server = Server(site, site.write_config())
    try:
        decision = ask(server, site)
        assert (decision.decision, decision.status_message) == ("Deny", "not authorized")
        assert site.directory not in decision.status_message
        assert "no pool for the DN" in site.audit_lines()[-1]["reason"]
    finally:
        server.stop()
    Path(site.directory, "ban_users.db").write_text(f'"{USER_DN}"\n')
    Path(site.directory, "lcas.db").write_text(
        'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    server = Server(site, site.write_config())
    try:
        decision = ask(server, site)
        assert (decision.decision, decision.status_message) == ("Deny", "banned")
        assert site.audit_lines()[-1]["reason"].startswith("LCAS: ")
    finally:
        server.stop()


def test_lcas_ban_file_gone_is_unavailable(tmp_path: Path, accounts: None) -> None:
    gmd = tmp_path / "gmd"
    gmd.mkdir()
    site = pool_site(tmp_path, gmd)
    ban = Path(site.directory, "ban_users.db")
    ban.write_text('"/DC=org/CN=Somebody Else"\n')
    Path(site.directory, "lcas.db").write_text(
        'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    server = Server(site, site.write_config())
    try:
        assert ask(server, site).decision == "Permit"
        ban.unlink()
        indeterminate(ask(server, site))
        assert "userban" in site.audit_lines()[-1]["reason"]
    finally:
        server.stop()


def test_audit_log_full_gives_indeterminate(
    tmp_path: Path, accounts: None, mounts: list[Tmpfs]
) -> None:
    """No Permit without its audit line: a full audit disk makes the answer Indeterminate,
    /health unhealthy and the failure counted; once there is room again, Permit."""
    logs = Tmpfs(tmp_path / "logs", "size=64k")
    mounts.append(logs)
    gmd = tmp_path / "gmd"
    gmd.mkdir()
    site = pool_site(tmp_path, gmd)
    site.audit = str(logs.path / "audit.log")
    server = Server(site, site.write_config(audit={"file": site.audit}, workers=1))
    try:
        assert ask(server, site).decision == "Permit"
        logs.fill()  # the log's last page still has room for a few lines
        answers = []
        while len(answers) < 100 and (not answers or answers[-1].decision == "Permit"):
            answers.append(ask(server, site))
        indeterminate(answers[-1])
        permits = 1 + sum(a.decision == "Permit" for a in answers)
        assert sum(x["decision"] == "Permit" for x in site.audit_lines()) == permits
        status, report = health(server)
        assert status == 503 and report["audit"]["writable"] is False  # type: ignore[index]
        _, metrics = server.request("GET", "/metrics")
        assert b"scas_audit_write_failures_total 1.0" in metrics
        assert "audit line not written" in server.log_text()
        for name in os.listdir(logs.path):
            if name.startswith("filler"):
                os.unlink(logs.path / name)
        assert ask(server, site).decision == "Permit"
        assert health(server)[0] == 200
    finally:
        server.stop()


def test_lcmaps_ban_says_banned(tmp_path: Path, accounts: None) -> None:
    """A ban in lcmaps.db (lcmaps_ban_dn.mod) is told apart from "no mapping", like an
    LCAS ban: the client learns it was banned, the audit line says by what."""
    gmd = tmp_path / "gmd"
    gmd.mkdir()
    site = pool_site(tmp_path, gmd)
    Path(site.directory, "ban_users.db").write_text(f'"{USER_DN}"\n')
    Path(site.directory, "lcmaps.db").write_text(f"""\
ban = "lcmaps_ban_dn.mod" "-banmapfile {site.directory}/ban_users.db"
pool = "lcmaps_poolaccount.mod" "-gridmapfile {site.directory}/grid-mapfile"
       "-gridmapdir {gmd}"

glexec_get_account:
ban -> pool

gatekeeper:
ban -> pool
""")
    server = Server(site, site.write_config())
    try:
        decision = ask(server, site)
        assert (decision.decision, decision.status_message) == ("Deny", "banned")
        assert "lcmaps_ban_dn" in site.audit_lines()[-1]["reason"]
        assert not [n for n in os.listdir(gmd) if n.startswith("%")]  # no lease was made
    finally:
        server.stop()


def test_audit_line_says_whether_the_request_made_the_lease(tmp_path: Path,
                                                            accounts: None) -> None:  # fmt: skip
    """``lease_event``: "new" on the Permit that made the lease, "held" on every later one,
    and "held" for a lease another writer made before the server started (``scas-admin who``
    tells the start of a tenure from these)."""
    gridmapdir = tmp_path / "gmd"
    gridmapdir.mkdir()
    site = pool_site(tmp_path, gridmapdir)
    server = Server(site, site.write_config())
    try:
        assert ask(server, site).decision == "Permit"
        made = site.audit_lines()[-1]
        assert (made["decision"], made["lease_event"]) == ("Permit", "new")
        assert ask(server, site).decision == "Permit"
        again = site.audit_lines()[-1]
        assert again["lease_event"] == "held" and again["account"] == made["account"]
    finally:
        server.stop()
    server = Server(site, site.write_config())  # a restart: the lease is older than the server
    try:
        assert ask(server, site).decision == "Permit"
        assert site.audit_lines()[-1]["lease_event"] == "held"
    finally:
        server.stop()
