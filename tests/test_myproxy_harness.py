"""Debian's myproxy-server through testkit/myproxy.py: only pilots may fetch users' proxies.

A user stores a VOMS proxy with myproxy-init and no passphrase; a pilot whose proxy carries the
VO's pilot role fetches it with myproxy-logon, without that passphrase, and gets a proxy that
the stack's own verifier accepts as the user's, VOMS attributes included. Anyone else is
refused by the server, and a forged pilot role does not pass the real VOMS library.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from credentials.credential import TrustStore, load_proxy_file, verify_credential
from testkit.myproxy import (
    MyProxyServer,
    RetrievalRefused,
    RetrieverPolicy,
    missing,
    myproxy_server,
)
from testkit.pki import TestPKI, User

pytestmark = pytest.mark.slow

ALICE = "/DC=org/DC=example/O=Users/CN=Alice MyProxy"
EVE = "/DC=org/DC=example/O=Users/CN=Eve MyProxy"
PILOT = "/DC=org/DC=example/O=Pilots/CN=atlas pilot 1"
PILOT2 = "/DC=org/DC=example/O=Pilots/CN=atlas pilot 2"
PILOT_ROLE = "/atlas/Role=pilot/Capability=NULL"
USER_FQAN = "/atlas/Role=NULL/Capability=NULL"
FQAN_POLICY = RetrieverPolicy.pilots_only("FQAN:/atlas/Role=pilot*")
DN_POLICY = RetrieverPolicy.pilots_only("/DC=org/DC=example/O=Pilots/*")


@pytest.fixture(scope="module")
def people(pki: TestPKI) -> dict[str, User]:
    return {
        "alice": pki.user("mp-alice", ALICE), "eve": pki.user("mp-eve", EVE),
        "pilot": pki.user("mp-pilot", PILOT), "pilot2": pki.user("mp-pilot2", PILOT2),
    }  # fmt: skip


def _server(tmp: pytest.TempPathFactory, pki: TestPKI, policy: RetrieverPolicy,
            name: str) -> Iterator[MyProxyServer]:  # fmt: skip
    gone = missing(policy)
    if gone:
        pytest.skip(f"not installed: {', '.join(gone)} (packages myproxy myproxy-server "
                    "libmyproxy-voms)")  # fmt: skip
    with myproxy_server(tmp.mktemp(name), pki, policy=policy) as server:
        yield server


@pytest.fixture(scope="module")
def by_role(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[MyProxyServer]:
    """Retrieval only for clients holding the VO's pilot role (a verified VOMS FQAN)."""
    yield from _server(tmp_path_factory, pki, FQAN_POLICY, "myproxy-role")


@pytest.fixture(scope="module")
def by_dn(tmp_path_factory: pytest.TempPathFactory, pki: TestPKI) -> Iterator[MyProxyServer]:
    """Retrieval only for clients with a pilot DN."""
    yield from _server(tmp_path_factory, pki, DN_POLICY, "myproxy-dn")


def _proxy(pki: TestPKI, user: User, *fqans: str, forged: bool = False) -> str:
    return pki.proxy(user, fqans=fqans, vo="atlas", ac_forged=forged)


@pytest.fixture(scope="module")
def stored(by_role: MyProxyServer, pki: TestPKI, people: dict[str, User]) -> str:
    """Alice's VOMS proxy stored on the role-policy server, no passphrase: its username."""
    by_role.store(_proxy(pki, people["alice"], USER_FQAN), "alice")
    return "alice"


def test_pilot_role_retrieves_users_proxy_without_passphrase(
    by_role: MyProxyServer, pki: TestPKI, people: dict[str, User], tmp_path: Path, stored: str
) -> None:
    out = by_role.retrieve(_proxy(pki, people["pilot"], PILOT_ROLE), stored,
                           tmp_path / "x509up_alice")  # fmt: skip
    assert os.stat(out).st_mode & 0o777 == 0o600
    cred = verify_credential(load_proxy_file(out), TrustStore(pki.certdir, pki.vomsdir))
    assert cred.identity == ALICE
    assert cred.key is not None  # a usable proxy: load_proxy_file matched key and leaf
    assert cred.fqans == (USER_FQAN,)  # the user's own VOMS attributes came along
    assert cred.time_left() <= 3600


@pytest.mark.parametrize("who, fqans", [
    ("eve", (USER_FQAN,)),      # a VO member without the pilot role
    ("pilot", (USER_FQAN,)),    # the pilot's own certificate, proxy without the role
    ("alice", ()),              # the owner herself, without a passphrase
])  # fmt: skip
def test_credentials_without_pilot_role_are_refused(
    by_role: MyProxyServer, pki: TestPKI, people: dict[str, User], tmp_path: Path,
    stored: str, who: str, fqans: tuple[str, ...],
) -> None:  # fmt: skip
    out = tmp_path / "x509up"
    with pytest.raises(RetrievalRefused) as refused:
        by_role.retrieve(_proxy(pki, people[who], *fqans), stored, out)
    assert "not authorized by server's trusted_retrievers policy" in refused.value.reason
    assert not out.exists()


def test_forged_pilot_role_is_refused(
    by_role: MyProxyServer, pki: TestPKI, people: dict[str, User], tmp_path: Path, stored: str
) -> None:
    """An AC claiming the pilot role but not signed by the VOMS server gets nothing."""
    forged = _proxy(pki, people["eve"], PILOT_ROLE, forged=True)
    with pytest.raises(RetrievalRefused):
        by_role.retrieve(forged, stored, tmp_path / "x509up")
    assert not (tmp_path / "x509up").exists()


def test_dn_policy_admits_pilot_dns_only(
    by_dn: MyProxyServer, pki: TestPKI, people: dict[str, User], tmp_path: Path
) -> None:
    by_dn.store(_proxy(pki, people["alice"]), "alice")
    got = by_dn.retrieve(_proxy(pki, people["pilot2"]), "alice", tmp_path / "ok")
    assert load_proxy_file(got).identity == ALICE
    with pytest.raises(RetrievalRefused) as refused:
        by_dn.retrieve(_proxy(pki, people["eve"]), "alice", tmp_path / "no")
    assert EVE in refused.value.reason


def test_per_credential_retriever_narrows_the_server_policy(
    by_dn: MyProxyServer, pki: TestPKI, people: dict[str, User], tmp_path: Path
) -> None:
    """myproxy-init -x -Z: the user lets one pilot DN in; another pilot DN is refused."""
    by_dn.store(_proxy(pki, people["alice"]), "alice-one", trusted_retriever=PILOT)
    assert "trusted retrieval policy: " + PILOT in by_dn.info(
        _proxy(pki, people["alice"]), "alice-one")  # fmt: skip
    with pytest.raises(RetrievalRefused) as refused:
        by_dn.retrieve(_proxy(pki, people["pilot2"]), "alice-one", tmp_path / "no")
    assert refused.value.reason == "no passphrase authentication failed"
    got = by_dn.retrieve(_proxy(pki, people["pilot"]), "alice-one", tmp_path / "ok")
    assert load_proxy_file(got).identity == ALICE


def test_passphrase_protected_credential_needs_the_passphrase(
    by_dn: MyProxyServer, pki: TestPKI, people: dict[str, User], tmp_path: Path
) -> None:
    """Trusted retrieval skips only the missing passphrase: a protected credential keeps it."""
    by_dn.store(_proxy(pki, people["alice"]), "alice-locked", passphrase="correct horse 42")
    pilot = _proxy(pki, people["pilot"])
    with pytest.raises(RetrievalRefused):
        by_dn.retrieve(pilot, "alice-locked", tmp_path / "no")
    with pytest.raises(RetrievalRefused):
        by_dn.retrieve(pilot, "alice-locked", tmp_path / "no", passphrase="wrong horse 42")
    got = by_dn.retrieve(pilot, "alice-locked", tmp_path / "ok", passphrase="correct horse 42")
    assert load_proxy_file(got).identity == ALICE


def test_server_answers_when_its_listener_descriptor_is_above_1024(
    tmp_path: Path, pki: TestPKI
) -> None:
    """A long test run holds many descriptors; select() cannot watch one numbered 1024 or more,
    and the listener once died silently there, leaving the probe hanging (CI, session 4)."""
    gone = missing(DN_POLICY)
    if gone:
        pytest.skip(f"not installed: {', '.join(gone)}")
    held = []
    try:
        while not held or held[-1] < 1100:
            held.append(os.open(os.devnull, os.O_RDONLY))
        with myproxy_server(tmp_path / "high-fd", pki, policy=DN_POLICY, timeout=30) as server:
            assert server._listener is not None and server._listener.sock.fileno() > 1024
            with pytest.raises(RetrievalRefused):
                server.retrieve(pki.proxy(pki.user("mp-high", EVE)), "nobody", tmp_path / "no")
    finally:
        for fd in held:
            os.close(fd)
