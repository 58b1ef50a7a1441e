"""``scas-admin check``: a clean site passes (exit 0), and each planted problem is reported at
the right ``file:line`` with exit 1. Every site is real files: the session's test PKI (CA dir
with CRL, vomsdir), lcas.db, lcmaps.db with real plugins, mapfiles, a gridmapdir with real
pool accounts and an Ed25519 ticket key."""

from __future__ import annotations

import io
import json
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import redirect_stdout
from dataclasses import dataclass

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from unix_accounts import unix_accounts

from site_admin.cli import main as admin_main
from testkit.pki import TestPKI

pytestmark = pytest.mark.skipif(os.geteuid() != 0,
                                reason="needs root to create pool accounts (useradd)")

POOL = ("xck001", "xck002")
USERS = "/DC=org/DC=example/O=Users/CN="


@pytest.fixture(scope="module")
def accounts() -> Iterator[None]:
    with unix_accounts(POOL):
        yield


def _write(path: str, text: str, mode: int = 0o644) -> None:
    with open(path, "w") as fh:
        fh.write(text)
    os.chmod(path, mode)


@dataclass
class CheckSite:
    d: str
    certdir: str
    vomsdir: str
    ca_hash: str

    @property
    def config(self) -> str:
        return f"{self.d}/scas.yaml"

    @property
    def gridmapdir(self) -> str:
        return f"{self.d}/gridmapdir"

    def line_of(self, name: str, text: str) -> int:
        """The 1-based line of ``name`` that contains ``text``."""
        with open(f"{self.d}/{name}") as fh:
            for lineno, line in enumerate(fh, 1):
                if text in line:
                    return lineno
        raise AssertionError(f"{text!r} not in {name}")

    def edit(self, name: str, old: str, new: str) -> None:
        path = f"{self.d}/{name}"
        with open(path) as fh:
            text = fh.read()
        assert old in text
        with open(path, "w") as fh:
            fh.write(text.replace(old, new, 1))


def build_site(d: str, pki: TestPKI) -> CheckSite:
    certdir, vomsdir = f"{d}/certificates", f"{d}/vomsdir"
    shutil.copytree(pki.certdir, certdir)
    shutil.copytree(pki.vomsdir, vomsdir)
    os.makedirs(f"{d}/gridmapdir")
    os.makedirs(f"{d}/audit")
    for name in POOL:
        open(f"{d}/gridmapdir/{name}", "w").close()
    _write(f"{d}/grid-mapfile", f'"{USERS}Alice" nobody\n"{USERS}Bob" .xck\n"/dteam/*" .xck\n')
    _write(f"{d}/groupmapfile", '"/dteam/*" users\n')
    _write(f"{d}/ban_users.db", f'# banned\n"{USERS}Eve"\n')
    _write(f"{d}/timeslots.db", "* * * * * *\n")
    _write(f"{d}/lcas.db", 'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n'
                           'pluginname="lcas_timeslots.mod",pluginargs="timeslots.db"\n')
    _write(f"{d}/lcmaps.db", f"""\
verifyproxy = "lcmaps_verify_proxy.mod" "-certdir {certdir}"
banuser = "lcmaps_ban_dn.mod" "-banmapfile {d}/ban_users.db"
localaccount = "lcmaps_localaccount.mod" "-gridmapfile {d}/grid-mapfile"
poolaccount = "lcmaps_poolaccount.mod" "-gridmapfile {d}/grid-mapfile" "-gridmapdir {d}/gridmapdir"
vomslocalgroup = "lcmaps_voms_localgroup.mod" "-groupmapfile {d}/groupmapfile"

posixenf = "lcmaps_posix_enf.mod" "-maxuid 1" "-maxpgid 1" "-maxsgid 32"

voms:
verifyproxy -> banuser
banuser -> vomslocalgroup

glexec_get_account:
verifyproxy -> banuser
banuser -> localaccount
localaccount -> posixenf | poolaccount
poolaccount -> posixenf
""")
    key = Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption()).decode()
    _write(f"{d}/ticket.key", key, 0o600)
    _write(f"{d}/scas.yaml", yaml.safe_dump({
        "listen": f"unix:{d}/scas.sock",
        "trust": {"certdir": certdir, "vomsdir": vomsdir},
        "lcas": {"db": "lcas.db"},
        "lcmaps": {"db": "lcmaps.db"},
        "policies": [{"resource": "wn", "action": "execute-now",
                      "lcmaps": ["glexec_get_account"]}],
        "ticket": {"key": "ticket.key"},
        "audit": {"file": f"{d}/audit/audit.log"},
    }, sort_keys=False))
    return CheckSite(d, certdir, vomsdir, pki.ca_hash)


@pytest.fixture
def site(tmp_path: os.PathLike[str], pki: TestPKI, accounts: None) -> CheckSite:
    return build_site(os.fspath(tmp_path), pki)


def run_check(site: CheckSite, *extra: str) -> tuple[int, str]:
    out = io.StringIO()
    with redirect_stdout(out):
        code = admin_main(["check", "--config", site.config, *extra])
    return code, out.getvalue()


def test_admin_check_clean_site_passes(site: CheckSite) -> None:
    """A correct site: exit 0 and one summary line naming how many files were looked at."""
    code, out = run_check(site)
    assert (code, out.count("\n")) == (0, 1), out
    count = int(out.split()[1])
    assert out == f"ok: {count} files checked\n" and count >= 10
    code, out = run_check(site, "--json")
    assert (code, json.loads(out)) == (0, [])


@dataclass(frozen=True)
class Plant:
    name: str
    plant: Callable[[CheckSite], None]
    where: Callable[[CheckSite], tuple[str, int | None]]
    says: str


def _yaml_unknown_key(s: CheckSite) -> None:
    with open(s.config, "a") as fh:
        fh.write("colour: blue\n")


def _yaml_missing_policy(s: CheckSite) -> None:
    s.edit("scas.yaml", "- glexec_get_account", "- glexec_get_acount")


def _lcas_bad_line(s: CheckSite) -> None:
    with open(f"{s.d}/lcas.db", "a") as fh:
        fh.write('pluginname="lcas_userallow.mod",colour=blue\n')


def _crl_garbage(s: CheckSite) -> None:
    _write(f"{s.certdir}/{s.ca_hash}.r0", "-----BEGIN X509 CRL-----\nnot base64\n")


def _ca_renamed(s: CheckSite) -> None:
    os.rename(f"{s.certdir}/{s.ca_hash}.0", f"{s.certdir}/0badc0de.0")


def _lsc_not_dn(s: CheckSite) -> None:
    with open(f"{s.vomsdir}/dteam/voms.example.org.lsc", "a") as fh:
        fh.write("voms.example.org\n")


def _two_leases_one_account(s: CheckSite) -> None:
    for name in ("%2fcn%3da", "%2fcn%3db"):
        os.link(f"{s.gridmapdir}/xck001", f"{s.gridmapdir}/{name}")


PLANTS = [
    Plant("unknown YAML key", _yaml_unknown_key,
          lambda s: ("scas.yaml", s.line_of("scas.yaml", "colour:")), "colour: unknown key"),
    Plant("YAML syntax error", lambda s: s.edit("scas.yaml", "lcas:\n", "lcas:\n\tdb: x\n"),
          lambda s: ("scas.yaml", s.line_of("scas.yaml", "\tdb: x")), "'\\t' that cannot start"),
    Plant("route names a missing policy", _yaml_missing_policy,
          lambda s: ("scas.yaml", s.line_of("scas.yaml", "glexec_get_acount") - 1),
          "'glexec_get_acount' is not in"),
    Plant("malformed lcas.db line", _lcas_bad_line, lambda s: ("lcas.db", 3), "colour"),
    Plant("LCMAPS plugin refuses its arguments",
          lambda s: s.edit("lcmaps.db", '"-banmapfile', '"-colour blue" "-banmapfile'),
          lambda s: ("lcmaps.db", 2), "cannot initialise lcmaps_ban_dn.mod"),
    Plant("grid-mapfile parse error",
          lambda s: s.edit("grid-mapfile", '"/dteam/*" .xck', '"/dteam/* .xck'),
          lambda s: ("grid-mapfile", 3), "quote"),
    Plant("grid-mapfile account missing",
          lambda s: s.edit("grid-mapfile", " nobody", " nosuchuser"),
          lambda s: ("grid-mapfile", 1), "account 'nosuchuser' does not exist"),
    Plant("pool without gridmapdir entries",
          lambda s: s.edit("grid-mapfile", f'"{USERS}Bob" .xck', f'"{USERS}Bob" .xnone'),
          lambda s: ("grid-mapfile", 2), "pool .xnone has no account in gridmapdir"),
    Plant("groupmapfile group missing",
          lambda s: s.edit("groupmapfile", " users", " nosuchgroup"),
          lambda s: ("groupmapfile", 1), "group 'nosuchgroup' does not exist"),
    Plant("ban file parse error (LCAS and LCMAPS)",
          lambda s: s.edit("ban_users.db", 'Eve"', "Eve"),
          lambda s: ("ban_users.db", 2), "quote"),
    Plant("timeslots parse error", lambda s: _write(f"{s.d}/timeslots.db", "* * *\n"),
          lambda s: ("timeslots.db", 1), "expected 6 fields"),
    Plant("CRL does not parse", _crl_garbage,
          lambda s: (f"certificates/{s.ca_hash}.r0", None), "CRL does not parse"),
    Plant("CA certificate under the wrong hash", _ca_renamed,
          lambda s: ("certificates/0badc0de.0", None), "named for the wrong hash"),
    Plant(".lsc line that is not a DN", _lsc_not_dn,
          lambda s: ("vomsdir/dteam/voms.example.org.lsc", 3), "not a DN"),
    Plant("ticket key readable by others", lambda s: os.chmod(f"{s.d}/ticket.key", 0o644),
          lambda s: ("ticket.key", None), "mode 0644; it must be 0600 or 0400"),
    Plant("group-writable lcmaps.db", lambda s: os.chmod(f"{s.d}/lcmaps.db", 0o664),
          lambda s: ("lcmaps.db", None), "group- or world-writable (mode 0664)"),
    Plant("policy file owned by another user",
          lambda s: os.chown(f"{s.d}/grid-mapfile", 65534, -1),
          lambda s: ("grid-mapfile", None), "owned by nobody"),
    Plant("corrupt lease", _two_leases_one_account,
          lambda s: ("gridmapdir/%2fcn%3da", None), "corrupt lease (link count 3)"),
]


@pytest.mark.parametrize("plant", PLANTS, ids=[p.name for p in PLANTS])
def test_admin_check_finds_planted_problem(plant: Plant, site: CheckSite) -> None:
    """The planted problem is reported at its file and line, and the exit status is 1."""
    plant.plant(site)
    code, out = run_check(site, "--json")
    problems = json.loads(out)
    name, line = plant.where(site)
    path = os.path.join(site.d, name)
    hits = [p for p in problems if p["file"] == path and p["line"] == line
            and plant.says in p["reason"]]
    assert code == 1 and hits, problems
    assert set(hits[0]) == {"file", "line", "reason", "severity"}
    code, text = run_check(site)
    where = f"{path}:{line}" if line else path
    assert code == 1 and any(t.startswith(f"{where}: ") for t in text.splitlines()), text
    assert text.splitlines()[-1].endswith(" files checked")


def test_admin_check_unreadable_config_is_a_problem(tmp_path: os.PathLike[str]) -> None:
    """A config file that does not exist is one problem line, exit 1."""
    missing = os.path.join(os.fspath(tmp_path), "nope.yaml")
    out = io.StringIO()
    with redirect_stdout(out):
        code = admin_main(["check", "--config", missing])
    assert code == 1
    assert out.getvalue().splitlines()[0].startswith(f"{missing}: cannot read")
