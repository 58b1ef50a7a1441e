"""The pilot fetching an owner's proxy: Debian's myproxy-server and myproxy-logon, and
voms-proxy-init for a proxy without the payload's VO, through pilot/proxy.py.

Each way the retrieval can fail lands in the class the loop acts on: the pilot itself not
authorized (stop, put the payload back), the owner's credential missing or wrong (the
payload fails), the service unreachable (put back, retry later).
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilot import proxy as proxies
from pilot.queue import MyProxySpec
from testkit.batch import free_port
from testkit.myproxy import MyProxyServer, RetrieverPolicy, missing, myproxy_server
from testkit.pki import TestPKI, User

pytestmark = pytest.mark.slow

POLICY = RetrieverPolicy.pilots_only("FQAN:/dteam/Role=pilot*")
OWNER_DN = "/DC=org/DC=example/O=Users/CN=Owner Pilotproxy"
PILOT_DN = "/DC=org/DC=example/O=Pilots/CN=pilot pilotproxy"
MEMBER = "/dteam/Role=NULL/Capability=NULL"


@pytest.fixture(scope="module")
def people(pki: TestPKI) -> dict[str, User]:
    return {"owner": pki.user("pp-owner", OWNER_DN), "pilot": pki.user("pp-pilot", PILOT_DN)}


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI,
           people: dict[str, User]) -> Iterator[MyProxyServer]:  # fmt: skip
    gone = missing(POLICY)
    if gone:
        pytest.skip(f"not installed: {', '.join(gone)} (myproxy myproxy-server libmyproxy-voms)")
    with myproxy_server(tmp_path_factory.mktemp("pilot-myproxy"), pki, policy=POLICY) as mp:
        mp.store(pki.proxy(people["owner"], fqans=[MEMBER]), "owner")
        mp.store(pki.proxy(people["owner"]), "owner-plain")
        yield mp


@pytest.fixture(scope="module")
def tools(pki: TestPKI) -> proxies.Tools:
    return proxies.Tools(certdir=pki.certdir, vomsdir=pki.vomsdir)


def _pilot(pki: TestPKI, people: dict[str, User], role: bool = True) -> str:
    fqan = "/dteam/Role=pilot/Capability=NULL" if role else MEMBER
    return pki.proxy(people["pilot"], fqans=[fqan])


def _spec(server: MyProxyServer, user: str) -> MyProxySpec:
    return MyProxySpec("localhost", server.port, user, server.host_dn)


def test_pilot_role_fetches_the_owners_voms_proxy(
    server: MyProxyServer, pki: TestPKI, people: dict[str, User], tools: proxies.Tools,
    tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / "proxy-1.pem"
    proxies.retrieve(_spec(server, "owner"), out, tools=tools, pilot_proxy=_pilot(pki, people))
    assert os.stat(out).st_mode & 0o777 == 0o600
    checked = proxies.check(out, owner=OWNER_DN, tools=tools)
    assert checked.identity == OWNER_DN and checked.seconds_left > 3000
    assert proxies.has_vo(checked.fqans, "dteam")  # kept: nothing to add
    with pytest.raises(proxies.PayloadProxyProblem, match="not the payload owner"):
        proxies.check(out, owner=PILOT_DN, tools=tools)
    assert proxies.destroy(out) and not out.exists() and not proxies.destroy(out)


def test_pilot_without_the_role_is_not_authorized(
    server: MyProxyServer, pki: TestPKI, people: dict[str, User], tools: proxies.Tools,
    tmp_path: Path,
) -> None:  # fmt: skip
    out = tmp_path / "proxy-1.pem"
    with pytest.raises(proxies.PilotNotAuthorized, match="trusted_retrievers"):
        proxies.retrieve(_spec(server, "owner"), out, tools=tools,
                         pilot_proxy=_pilot(pki, people, role=False))  # fmt: skip
    assert not out.exists()


def test_missing_credential_is_the_payloads_problem_and_a_dead_server_a_retry(
    server: MyProxyServer, pki: TestPKI, people: dict[str, User], tools: proxies.Tools,
    tmp_path: Path,
) -> None:  # fmt: skip
    pilot = _pilot(pki, people)
    with pytest.raises(proxies.PayloadProxyProblem, match="No credentials exist"):
        proxies.retrieve(_spec(server, "nobody"), tmp_path / "a", tools=tools, pilot_proxy=pilot)
    dead = MyProxySpec("localhost", free_port(), "owner")
    with pytest.raises(proxies.ProxyUnavailable, match="Unable to connect"):
        proxies.retrieve(dead, tmp_path / "b", tools=tools, pilot_proxy=pilot)
    assert list(tmp_path.iterdir()) == []


def test_a_proxy_without_the_vo_needs_voms_proxy_init(
    server: MyProxyServer, pki: TestPKI, people: dict[str, User], tools: proxies.Tools,
    tmp_path: Path,
) -> None:  # fmt: skip
    """No --vomses: the payload fails. With one, the real voms-proxy-init -noregen is run on
    the retrieved proxy; a VOMS server that does not answer is a retry, the proxy untouched."""
    out = tmp_path / "proxy-1.pem"
    proxies.retrieve(_spec(server, "owner-plain"), out, tools=tools,
                     pilot_proxy=_pilot(pki, people))  # fmt: skip
    assert proxies.check(out, owner=OWNER_DN, tools=tools).fqans == ()
    with pytest.raises(proxies.PayloadProxyProblem, match="no --vomses"):
        proxies.add_voms(out, "dteam", tools=tools)
    if not any(os.access(os.path.join(d, "voms-proxy-init"), os.X_OK)
               for d in os.environ.get("PATH", "/usr/bin").split(":")):  # fmt: skip
        pytest.skip("voms-proxy-init not installed (package voms-clients)")
    vomses = tmp_path / "vomses"
    vomses.write_text(f'"dteam" "127.0.0.1" "{free_port()}" "{pki.voms_dn}" "dteam"\n')
    before = out.read_bytes()
    with_vomses = proxies.Tools(certdir=tools.certdir, vomsdir=tools.vomsdir, vomses=str(vomses))
    with pytest.raises(proxies.ProxyUnavailable, match="voms-proxy-init -noregen -voms dteam"):
        proxies.add_voms(out, "dteam", tools=with_vomses)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == [
        "proxy-1.pem", "vomses"]  # fmt: skip
