"""Fixtures for differential tests against the real C LCMAPS (Debian packages).

Skipped with a clear reason where liblcmaps0/plugins are not installed or
when not root (test accounts are created with useradd). Accounts use the
prefix ``c`` (cpool001.., groups cdteam/cprod/cadmin) so they never clash
with the oracle demo's ``o`` accounts; they are removed at the end.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent))
from oracle import Oracle, build_oracle, missing_reason

GROUPS = ("cdteam", "cprod", "cadmin")
USERS = ("cpool001", "cpool002", "cpool003", "cdteam001", "cdteam002", "cdteam003",
         "cextra001", "cjohn")
USER_DNS = {
    "alice": "/DC=org/DC=example/O=Users/CN=Alice Smith",
    "bob": "/DC=org/DC=example/O=Users/CN=Bob Jones",
    "carol": "/DC=org/DC=example/O=Users/CN=Carol White",
    "dave": "/DC=org/DC=example/O=Users/CN=Dave Black",
    "eve": "/DC=org/DC=example/O=Users/CN=Eve Intruder",
    "frank": "/DC=org/DC=example/O=Users/CN=Frank Local",
    "jurgen": "/DC=org/DC=example/O=Users/CN=Jürgen Müller",
}
VOMS = [
    ("alice", "voms_prod_first", "/dteam/production/Role=NULL/Capability=NULL",
     "/dteam/Role=NULL/Capability=NULL"),
    ("alice", "voms_dteam_first", "/dteam/Role=NULL/Capability=NULL",
     "/dteam/production/Role=NULL/Capability=NULL"),
    ("bob", "voms_banned", "/dteam/Role=banned/Capability=NULL"),
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    reason = missing_reason()
    if reason is None and os.geteuid() != 0:
        reason = "needs root to create test accounts (useradd)"
    for item in items:
        if "compat" in str(item.fspath):
            item.add_marker(pytest.mark.compat)
            if reason is not None:
                item.add_marker(pytest.mark.skip(reason=f"C oracle unavailable: {reason}"))


@pytest.fixture(scope="session")
def oracle(tmp_path_factory: pytest.TempPathFactory) -> Oracle:
    return build_oracle(tmp_path_factory.mktemp("oracle-build"))


@pytest.fixture(scope="session")
def test_accounts() -> Iterator[dict[str, int]]:
    made_groups, made_users = [], []
    for g in GROUPS:
        if subprocess.run(["getent", "group", g], capture_output=True).returncode != 0:
            subprocess.run(["groupadd", g], check=True)
            made_groups.append(g)
    for u in USERS:
        if subprocess.run(["id", u], capture_output=True).returncode != 0:
            subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", u], check=True)
            made_users.append(u)
    subprocess.run(["usermod", "-a", "-G", "cprod", "cjohn"], check=True)
    import pwd

    yield {u: pwd.getpwnam(u).pw_uid for u in USERS}
    for u in made_users:
        subprocess.run(["userdel", u], capture_output=True)
    for g in made_groups:
        subprocess.run(["groupdel", g], capture_output=True)


@dataclass(frozen=True)
class Creds:
    directory: Path
    certdir: Path
    vomsdir: Path

    def proxy(self, user: str, name: str = "proxy") -> Path:
        return self.directory / user / f"{name}.pem"


@pytest.fixture(scope="session")
def creds(oracle: Oracle, tmp_path_factory: pytest.TempPathFactory) -> Creds:
    d = tmp_path_factory.mktemp("creds")
    mc = str(oracle.make_creds)
    subprocess.run([mc, str(d), "init"], check=True, capture_output=True)
    for user, dn in USER_DNS.items():
        subprocess.run([mc, str(d), "user", user, dn], check=True, capture_output=True)
    for user, out, *fqans in VOMS:
        subprocess.run([mc, str(d), "voms", user, out, "dteam", *fqans], check=True,
                       capture_output=True)
    return Creds(d, d / "certificates", d / "vomsdir")
