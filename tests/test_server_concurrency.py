"""200 distinct DNs from 20 concurrent clients against 2 gunicorn workers, real pool accounts.

Every DN asks twice, concurrently with everyone else: each DN must end up with exactly one
account and no account may go to two DNs (the gridmapdir's link(2) protocol across processes).
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections import defaultdict
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import pytest
from server_harness import Server, Site

from client import xacml

pytestmark = [
    pytest.mark.slow,
    pytest.mark.root,
    pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                       reason="needs root and useradd to create pool accounts"),
]

POOL = 200
GROUP = "scastpool"


def _names() -> list[str]:
    return [f"{GROUP}{i:03d}" for i in range(1, POOL + 1)]


@pytest.fixture(scope="module")
def pool_accounts() -> Iterator[list[str]]:
    import grp
    import pwd

    made: list[str] = []
    try:
        grp.getgrnam(GROUP)
        new_group = False
    except KeyError:
        subprocess.run(["groupadd", GROUP], check=True)
        new_group = True
    try:
        for name in _names():
            try:
                pwd.getpwnam(name)
                continue
            except KeyError:
                pass
            subprocess.run(
                ["useradd", "-M", "-N", "-g", GROUP, "-d", "/nonexistent",
                 "-s", "/usr/sbin/nologin", name],
                check=True,
            )  # fmt: skip
            made.append(name)
        yield _names()
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False)
        if new_group:
            subprocess.run(["groupdel", GROUP], check=False)


def test_server_200_dns_20_clients_one_account_each(
    pool_accounts: list[str], tmp_path_factory: pytest.TempPathFactory
) -> None:
    site = Site(str(tmp_path_factory.mktemp("scas-pool")))
    gridmapdir = os.path.join(site.directory, "gridmapdir")
    os.mkdir(gridmapdir)
    for name in pool_accounts:
        open(os.path.join(gridmapdir, name), "w").close()
    dns = [f"/DC=org/DC=example/O=Users/CN=Pool User {i:03d}" for i in range(POOL)]
    gridmapfile = os.path.join(site.directory, "grid-mapfile")
    with open(gridmapfile, "w") as fh:
        fh.writelines(f'"{dn}" .{GROUP}\n' for dn in dns)
    with open(os.path.join(site.directory, "lcmaps.db"), "w") as fh:
        fh.write(
            'noop = "lcmaps_voms.mod"\n'
            f'pool = "lcmaps_poolaccount.mod" " -gridmapfile {gridmapfile}"'
            f' " -gridmapdir {gridmapdir}"\n\n'
            "glexec_get_account:\nnoop -> pool\n\ngatekeeper:\nnoop -> pool\n"
        )
    chains = {}
    for i, dn in enumerate(dns):
        user = site.pki.user(f"pool{i:03d}", dn)
        with open(user.cert_path, "rb") as fh:
            chains[dn] = fh.read()
    srv = Server(site, site.write_config(workers=2))
    try:
        def ask(dn: str) -> tuple[str, xacml.Decision]:
            status, body = srv.post(xacml.build_request(subject_dn=dn, cert_chain=chains[dn]))
            assert status == 200
            return dn, xacml.parse_response(body)

        with ThreadPoolExecutor(max_workers=20) as pool:
            results = list(pool.map(ask, dns + dns[::-1]))
    finally:
        srv.stop()

    uids_of: dict[str, set[int]] = defaultdict(set)
    dns_of: dict[int, set[str]] = defaultdict(set)
    for dn, decision in results:
        assert decision.decision == "Permit", decision.status_message
        assert decision.uid is not None
        uids_of[dn].add(decision.uid)
        dns_of[decision.uid].add(dn)
    assert len(uids_of) == POOL
    assert all(len(uids) == 1 for uids in uids_of.values())
    assert all(len(owners) == 1 for owners in dns_of.values())
    assert len(dns_of) == POOL
    # every pool account is leased exactly once on disk: account file + one lease link
    assert all(os.stat(os.path.join(gridmapdir, n)).st_nlink == 2 for n in pool_accounts)
    workers = {line["worker"] for line in site.audit_lines()}
    assert len(workers) >= 2
