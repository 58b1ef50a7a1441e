"""LCAS inside the live service: a banned user gets Deny before LCMAPS runs, and a ban
added to the ban file and picked up by SIGHUP takes effect without a restart."""

from __future__ import annotations

import os
import time
from collections.abc import Iterator

import pytest
from server_harness import USER_DN, Server, Site

from client import xacml

pytestmark = pytest.mark.slow

BANNED_DN = "/DC=org/DC=example/O=Users/CN=Eve Banned"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(str(tmp_path_factory.mktemp("scas-lcas")))
    with open(os.path.join(site.directory, "ban_users.db"), "w") as fh:
        fh.write(f'# banned users\n"{BANNED_DN}"\n')
    with open(os.path.join(site.directory, "lcas.db"), "w") as fh:
        fh.write('pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    site.eve = site.pki.user("eve", BANNED_DN)  # type: ignore[attr-defined]
    return site


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Server]:
    srv = Server(site, site.write_config())
    yield srv
    srv.stop()


def _query_for(site: Site, user_cert: str, dn: str) -> bytes:
    with open(user_cert, "rb") as fh:
        return xacml.build_request(subject_dn=dn, cert_chain=fh.read())


def test_server_lcas_ban_denies(server: Server, site: Site) -> None:
    status, body = server.post(_query_for(site, site.eve.cert_path, BANNED_DN))  # type: ignore[attr-defined]
    decision = xacml.parse_response(body)
    assert status == 200 and decision.decision == "Deny"
    assert decision.uid is None and decision.username is None
    line = site.audit_lines()[-1]
    assert line["dn"] == BANNED_DN and line["decision"] == "Deny"
    assert line["reason"].startswith("LCAS: user is banned") and "\n" not in line["reason"]
    status, body = server.post(site.query())
    assert xacml.parse_response(body).decision == "Permit"


def test_server_lcas_ban_added_by_reload(server: Server, site: Site) -> None:
    with open(os.path.join(site.directory, "ban_users.db"), "a") as fh:
        fh.write(f'"{USER_DN}"\n')
    server.hup()
    deadline = time.monotonic() + 20
    decision = None
    while time.monotonic() < deadline:
        _, body = server.post(site.query())
        decision = xacml.parse_response(body).decision
        if decision == "Deny":
            break
        time.sleep(0.2)
    assert decision == "Deny"
