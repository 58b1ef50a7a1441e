"""``scas-admin explain`` against the real service: for each case the explanation's decision,
account and reason equal what a real ``scas-server`` on the same site answers (and writes
in its audit line), and explaining never changes the gridmapdir.

Order matters inside each case: explain first (nothing may change), then the real server
(which leases what explain said it would lease).
"""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import pytest
from server_harness import Server, Site
from unix_accounts import unix_accounts

from client import xacml
from client.query import read_chain
from site_admin.cli import main as admin_main
from testkit.pki import TestPKI

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root to create pool accounts (useradd)"),
]

USERS = "/DC=org/DC=example/O=Users/CN="
LOCAL = ("xplocal",)
POOL = ("xpl001", "xpl002", "xpl003", "xpl004")
VOMS_POOL = ("xdt001", "xdt002")
FULL = ("xfull001",)
ACCOUNTS = LOCAL + POOL + VOMS_POOL + FULL

LCMAPS_DB = """\
verifyproxy = "lcmaps_verify_proxy.mod" "-certdir {certdir}"
banuser = "lcmaps_ban_dn.mod" "-banmapfile {d}/ban_users.db"
banfqan = "lcmaps_ban_fqan.mod" "-banmapfile {d}/ban_fqans.db"
localaccount = "lcmaps_localaccount.mod" "-gridmapfile {d}/grid-mapfile"
poolaccount = "lcmaps_poolaccount.mod" "-gridmapfile {d}/grid-mapfile" "-gridmapdir {gmd}"
vomslocalgroup = "lcmaps_voms_localgroup.mod" "-groupmapfile {d}/groupmapfile" "-mapmin 1"
vomspoolaccount = "lcmaps_voms_poolaccount.mod" "-gridmapfile {d}/grid-mapfile"
                  "-gridmapdir {gmd}"
posixenf = "lcmaps_posix_enf.mod" "-maxuid 1" "-maxpgid 1" "-maxsgid 32"

voms_policy:
verifyproxy -> banuser
banuser -> banfqan
banfqan -> vomslocalgroup
vomslocalgroup -> vomspoolaccount
vomspoolaccount -> posixenf

dn_policy:
verifyproxy -> banuser
banuser -> banfqan
banfqan -> localaccount
localaccount -> posixenf | poolaccount
poolaccount -> posixenf

ce_policy:
banuser -> banfqan
banfqan -> localaccount
localaccount -> posixenf | poolaccount
poolaccount -> posixenf
"""

GRID_MAPFILE = """\
"{u}Alice Local" xplocal
"{u}Bob Pool" .xpl
"{u}Carol Pool" .xpl
"{u}Gina Pool" .xpl
"{u}Hank Held" .xpl
"{u}Fiona Full" .xfull
"{u}Other CA*" .xpl
"/dteam/*" .xdt
"""


@dataclass
class ExplainSite:
    site: Site
    gridmapdir: str
    other_pki: TestPKI
    settings: dict[str, Any]
    users: dict[str, Any] = field(default_factory=dict)

    @property
    def d(self) -> str:
        return self.site.directory

    def user(self, name: str, cn: str) -> Any:
        if name not in self.users:
            self.users[name] = self.site.pki.user(name, USERS + cn)
        return self.users[name]


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def build_site(directory: str, *, lcas_db: str) -> ExplainSite:
    site = Site(directory)
    d, gmd = site.directory, os.path.join(site.directory, "gridmapdir")
    os.makedirs(gmd)
    for name in POOL + VOMS_POOL + FULL:
        open(os.path.join(gmd, name), "w").close()
    # the only .xfull account is already leased to someone else
    os.link(os.path.join(gmd, "xfull001"), os.path.join(gmd, "%2fcn%3dsomeone%20else"))
    _write(f"{d}/grid-mapfile", GRID_MAPFILE.format(u=USERS))
    _write(f"{d}/groupmapfile", '"/dteam/*" users\n')
    _write(f"{d}/ban_users.db", f'"{USERS}Eve*"\n')
    _write(f"{d}/ban_fqans.db", '"/dteam/Role=banned/*"\n')
    _write(f"{d}/timeslots.db", "# always open\n* * * * * *\n")
    _write(f"{d}/closed.db", "# never: 1971 only\n* * * * 1971 *\n")
    _write(f"{d}/lcas.db", lcas_db)
    _write(f"{d}/lcmaps.db", LCMAPS_DB.format(certdir=site.pki.certdir, d=d, gmd=gmd))
    # explain reads the files as they are now: the live server it is compared with must too
    # (no stat re-check interval, no kept mappings)
    settings = site.write_config(
        trust_pep_attributes=True,
        trust={"certdir": site.pki.certdir, "vomsdir": site.pki.vomsdir, "recheck_seconds": 0},
        lcmaps={"db": "lcmaps.db", "cache_seconds": 0},
        policies=[
            {"resource": "wn", "action": "execute-now", "lcmaps": ["voms_policy", "dn_policy"]},
            {"resource": "ce", "action": "queue", "lcmaps": ["ce_policy"]},
        ],
    )
    other = TestPKI(os.path.join(d, "other-pki"), ca_dn="/DC=org/DC=other/CN=Other CA",
                    reuse_keys=True)
    return ExplainSite(site, gmd, other, settings)


OPEN_LCAS = ('pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n'
             'pluginname="lcas_timeslots.mod",pluginargs="timeslots.db"\n')
CLOSED_LCAS = ('pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n'
               'pluginname="lcas_timeslots.mod",pluginargs="closed.db"\n')


@pytest.fixture(scope="module")
def accounts() -> Iterator[None]:
    with unix_accounts(ACCOUNTS):
        yield


@pytest.fixture(scope="module")
def main_site(tmp_path_factory: pytest.TempPathFactory,
              accounts: None) -> Iterator[tuple[ExplainSite, Server]]:
    es = build_site(str(tmp_path_factory.mktemp("explain")), lcas_db=OPEN_LCAS)
    srv = Server(es.site, es.settings)
    yield es, srv
    srv.stop()


@pytest.fixture(scope="module")
def closed_site(tmp_path_factory: pytest.TempPathFactory,
                accounts: None) -> Iterator[tuple[ExplainSite, Server]]:
    es = build_site(str(tmp_path_factory.mktemp("explain-closed")), lcas_db=CLOSED_LCAS)
    srv = Server(es.site, es.settings)
    yield es, srv
    srv.stop()


# -- helpers ----------------------------------------------------------------------------------


def snapshot(directory: str) -> dict[str, tuple[int, int, int, int]]:
    """Every name in the gridmapdir (in directory order) with inode, link count, mtime and
    size, plus the directory itself."""
    if not os.path.isdir(directory):
        return {}
    st = os.stat(directory)
    out = {".": (st.st_ino, st.st_nlink, st.st_mtime_ns, st.st_size)}
    for name in os.listdir(directory):
        st = os.lstat(os.path.join(directory, name))
        out[name] = (st.st_ino, st.st_nlink, st.st_mtime_ns, st.st_size)
    return out


def run_admin(*argv: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = admin_main(list(argv))
    return code, out.getvalue()


def explain(es: ExplainSite, *argv: str) -> tuple[int, dict[str, Any]]:
    before = snapshot(es.gridmapdir)
    code, out = run_admin("explain", "--config", es.site.config_path, "--json", *argv)
    assert snapshot(es.gridmapdir) == before, "explain changed the gridmapdir"
    return code, json.loads(out)


@dataclass(frozen=True)
class Case:
    name: str
    argv: Callable[[ExplainSite], list[str]]
    decision: str
    account: str | None = None
    lease_state: str | None = None  # "held" or "would lease"
    site: str = "main"
    before: Callable[[ExplainSite, Server], None] | None = None


def _pem(name: str, cn: str, **proxy: Any) -> Callable[[ExplainSite], list[str]]:
    def make(es: ExplainSite) -> list[str]:
        return ["--pem", es.site.pki.proxy(es.user(name, cn), **proxy)]
    return make


def _dn(cn: str, *fqans: str, resource: str = "ce", action: str = "queue"
        ) -> Callable[[ExplainSite], list[str]]:
    def make(es: ExplainSite) -> list[str]:
        argv = ["--dn", USERS + cn, "--resource-type", resource, "--action", action]
        for f in fqans:
            argv += ["--fqan", f]
        return argv
    return make


def _other_ca(es: ExplainSite) -> list[str]:
    user = es.other_pki.user("mallory", USERS + "Other CA Mallory")
    return ["--pem", es.other_pki.proxy(user)]


def _revoked(es: ExplainSite) -> list[str]:
    user = es.user("rita", "Other CA Rita")  # mapped by the grid-mapfile's wildcard line
    path = es.site.pki.proxy(user)
    es.site.pki.revoke(user.cert)
    return ["--pem", path]


def _hold_lease(es: ExplainSite, srv: Server) -> None:
    """Hank gets his lease from the real server first."""
    user = es.user("hank", "Hank Held")
    answer = ask(srv, ["--pem", es.site.pki.proxy(user)])
    assert answer.decision == "Permit"


def _hide_gridmapdir(es: ExplainSite, srv: Server) -> None:
    os.rename(es.gridmapdir, es.gridmapdir + ".away")


DTEAM = "/dteam/Role=NULL/Capability=NULL"
BANNED_FQAN = "/dteam/Role=banned/Capability=NULL"
CASES = [
    Case("local account", _pem("alice", "Alice Local"), "Permit", "xplocal"),
    Case("banned DN (LCAS)", _pem("eve", "Eve Banned"), "Deny"),
    Case("pool DN without lease", _pem("bob", "Bob Pool"), "Permit", "xpl*", "would lease"),
    Case("pool DN with its lease", _pem("bob", "Bob Pool"), "Permit", "xpl*", "held"),
    Case("second pool DN", _pem("carol", "Carol Pool"), "Permit", "xpl*", "would lease"),
    Case("lease made before", _pem("hank", "Hank Held"), "Permit", "xpl*", "held",
         before=_hold_lease),
    Case("VOMS group mapping", _pem("dave", "Dave Voms", fqans=[DTEAM]), "Permit", "xdt*",
         "would lease"),
    Case("banned FQAN", _pem("frank", "Frank Voms", fqans=[BANNED_FQAN]), "Deny"),
    Case("unmapped DN", _pem("zoe", "Zoe Unknown"), "Deny"),
    Case("expired proxy", _pem("gina", "Gina Pool", lifetime=timedelta(minutes=1),
                               not_before=None), "Deny"),
    Case("wrong CA", _other_ca, "Deny"),
    Case("limited proxy", _pem("carol", "Carol Pool", limited=True), "Permit", "xpl*", "held"),
    Case("revoked user certificate", _revoked, "Deny"),
    Case("pool exhausted", _pem("fiona", "Fiona Full"), "Deny"),
    Case("no route for resource", lambda es: [*_pem("alice", "Alice Local")(es),
                                              "--resource-type", "se", "--action", "access"],
         "Deny"),
    Case("unverified DN, local account", _dn("Alice Local"), "Permit", "xplocal"),
    Case("unverified DN, pool with its lease", _dn("Bob Pool"), "Permit", "xpl*", "held"),
    Case("unverified banned FQAN", _dn("Bob Pool", "/dteam/Role=banned/Capability=NULL"),
         "Deny"),
    Case("unverified DN on a verify_proxy policy", _dn("Alice Local", resource="wn",
                                                      action="execute-now"), "Deny"),
    Case("timeslot refusal", _pem("alice", "Alice Local"), "Deny", site="closed"),
    Case("gridmapdir gone", _pem("gina", "Gina Pool"), "Indeterminate",
         before=_hide_gridmapdir),
]


def _query(argv: list[str]) -> bytes:
    """The query a PEP sends for the same subject."""
    opts = dict(zip(argv[::2], argv[1::2], strict=False))
    fqans = [v for k, v in zip(argv[::2], argv[1::2], strict=False) if k == "--fqan"]
    kw: dict[str, Any] = {"resource": opts.get("--resource-type", "wn"),
                          "action": opts.get("--action", "execute-now")}
    if "--pem" in opts:
        return xacml.build_request(subject_dn=None, cert_chain=read_chain(opts["--pem"]), **kw)
    return xacml.build_request(subject_dn=opts["--dn"], fqans=fqans, **kw)


def ask(srv: Server, argv: list[str]) -> xacml.Decision:
    status, body = srv.post(_query(argv))
    assert status == 200
    return xacml.parse_response(body)


@pytest.mark.parametrize("case", CASES, ids=[c.name for c in CASES])
def test_admin_explain_matches_the_server(
    case: Case, main_site: tuple[ExplainSite, Server], closed_site: tuple[ExplainSite, Server]
) -> None:
    """The case's expected outcome holds, and explain (run first, changing nothing) says
    exactly what the real server then answers and writes in its audit line."""
    es, srv = main_site if case.site == "main" else closed_site
    argv = case.argv(es)
    if case.before is not None:
        case.before(es, srv)
    before = snapshot(es.gridmapdir)
    try:
        code, doc = explain(es, *argv)
        real = ask(srv, argv)
    finally:
        if os.path.exists(es.gridmapdir + ".away"):
            os.rename(es.gridmapdir + ".away", es.gridmapdir)
    audit = es.site.audit_lines()[-1]
    assert (doc["decision"], real.decision) == (case.decision, case.decision), doc
    assert code == (0 if case.decision == "Permit" else 1)
    assert doc["reason"] == (real.status_message or "")
    assert doc["detail"] == audit.get("reason", "")
    if case.decision == "Permit":
        acct = doc["account"]
        assert (acct["username"], acct["uid"], acct["gid"], tuple(acct["sgids"])) == (
            real.username, real.uid, real.gid, real.sgids)
        assert acct["username"] == audit["account"] and acct["lease"] == audit.get("lease")
        _check_account(case, acct, doc["leases"], before)
    else:
        assert doc["account"] is None and real.uid is None


def _check_account(case: Case, acct: dict[str, Any], notes: list[dict[str, Any]],
                   before: dict[str, tuple[int, int, int, int]]) -> None:
    """A local account by name; a pool account is the lease held before explain ran, or the
    first free entry of the pool in directory order, as the case says."""
    assert case.account is not None
    name = acct["username"]
    if not case.account.endswith("*"):
        assert name == case.account and not notes
        return
    assert [(n["account"], n["state"]) for n in notes] == [(name, case.lease_state)]
    if case.lease_state == "held":
        assert before[acct["lease"]][0] == before[name][0]  # the lease was that account's link
    else:
        assert acct["lease"] not in before
        free = [n for n in before if n.startswith(case.account[:-1]) and before[n][1] == 1]
        assert name == free[0]


def test_admin_explain_traces_every_step(main_site: tuple[ExplainSite, Server]) -> None:
    """The human report names each LCAS plugin, each LCMAPS step with its branch, the
    account and the decision; a banned user's report says who refused and why."""
    es, _srv = main_site
    proxy = es.site.pki.proxy(es.user("ivan", "Ivan Voms"), fqans=[BANNED_FQAN])
    proc = subprocess.run(
        [os.path.join(os.path.dirname(sys.executable), "scas-admin"), "explain",
         "--config", es.site.config_path, "--pem", proxy],
        capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1, proc.stderr
    lines = proc.stdout.splitlines()
    assert lines[0] == f"subject: {USERS}Ivan Voms (verified credential)"
    assert "fqan: /dteam/Role=banned/Capability=NULL" in lines
    assert "route: wn execute-now -> LCMAPS policies voms_policy, dn_policy" in lines
    assert "  1. lcas_userban.mod: allow" in lines
    assert any(line.startswith("  2. lcas_timeslots.mod: allow: time slot at ") for line in lines)
    steps = [line for line in lines if line.startswith(("  voms_policy:", "  dn_policy:"))]
    assert steps[0] == ("  voms_policy: lcmaps_verify_proxy.mod -> success -> "
                        "lcmaps_ban_dn.mod")
    assert steps[2].startswith("  voms_policy: lcmaps_ban_fqan.mod -> failure "
                               "(lcmaps_ban_fqan: /dteam/Role=banned/Capability=NULL is banned)"
                               " -> policy dn_policy: lcmaps_verify_proxy.mod")
    assert steps[-1].startswith("  dn_policy: lcmaps_ban_fqan.mod -> failure") and \
        steps[-1].endswith("-> end")
    assert lines[-2:] == ["account: none",
                          "decision: Deny: banned [LCMAPS: lcmaps_ban_fqan: "
                          "/dteam/Role=banned/Capability=NULL is banned]"]


def test_admin_explain_names_the_account_it_would_lease(
    main_site: tuple[ExplainSite, Server],
) -> None:
    """Unverified DN mode says so, and the pool account is the first free one, unleased."""
    es, _srv = main_site
    code, out = run_admin("explain", "--config", es.site.config_path, "--dn",
                          USERS + "Gina Pool", "--resource-type", "ce", "--action", "queue")
    assert code == 0
    lines = out.splitlines()
    assert lines[0] == f"subject: {USERS}Gina Pool (unverified: taken as given)"
    free = [n for n in os.listdir(es.gridmapdir)
            if n.startswith("xpl") and os.stat(os.path.join(es.gridmapdir, n)).st_nlink == 1]
    assert any(line.startswith(f"  would lease {free[0]} (first free of pool .xpl in ")
               for line in lines) or any(f"would lease {n} " in out for n in free)
    assert not any(os.path.basename(p).startswith("%2fdc%3dorg%2fdc%3dexample%2fo%3dusers"
                                                  "%2fcn%3dgina")
                   for p in os.listdir(es.gridmapdir))


def test_admin_explain_usage_errors(main_site: tuple[ExplainSite, Server],
                                    capsys: pytest.CaptureFixture[str]) -> None:
    """A proxy file that does not exist and --fqan with --pem are usage errors (exit 2,
    one line on stderr), not a decision."""
    es, _srv = main_site
    code, _ = run_admin("explain", "--config", es.site.config_path, "--pem", "/nonexistent.pem")
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and len(err) == 1 and err[0].startswith("scas-admin: /nonexistent.pem: ")
    code, _ = run_admin("explain", "--config", es.site.config_path, "--pem", "/x",
                        "--fqan", "/dteam")
    assert code == 2
