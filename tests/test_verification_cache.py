"""The verified-chain and verified-credential caches must never outlive what they rest on.

Each test verifies once (filling the cache), changes one thing a site admin or
time can change, and checks the next verification sees it.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime, timedelta

import pytest

from credentials import errors as err
from credentials import proxy_chain
from credentials.credential import TrustStore, load_proxy_file, verify_credential
from credentials.credential_cache import CredentialCache
from testkit.pki import TestPKI

DN = "/DC=org/DC=example/O=Users/CN=Cache Tester"
FQANS = ("/dteam/Role=NULL/Capability=NULL",)


def _chain_pem(path: str) -> bytes:
    return load_proxy_file(path).pem_chain()


@pytest.fixture
def own(tmp_path: os.PathLike[str]) -> TestPKI:
    return TestPKI(tmp_path, reuse_keys=True)


def test_chain_cache_repeat_verification_is_a_hit(own: TestPKI) -> None:
    proxy = own.proxy(own.user("t", DN))
    trust = TrustStore(own.certdir)
    before = proxy_chain.CACHE.hits
    verify_credential(load_proxy_file(proxy), trust)
    verify_credential(load_proxy_file(proxy), trust)
    assert proxy_chain.CACHE.hits == before + 1


def test_chain_cache_new_crl_revokes_at_once(own: TestPKI) -> None:
    user = own.user("t", DN)
    proxy, trust = own.proxy(user), TrustStore(own.certdir)
    assert verify_credential(load_proxy_file(proxy), trust).verified
    own.revoke(user.cert)
    with pytest.raises(err.Revoked):
        verify_credential(load_proxy_file(proxy), trust)


def test_chain_cache_removed_ca_is_untrusted_at_once(own: TestPKI) -> None:
    proxy, trust = own.proxy(own.user("t", DN)), TrustStore(own.certdir)
    assert verify_credential(load_proxy_file(proxy), trust).verified
    os.unlink(os.path.join(own.certdir, own.ca_hash + ".0"))
    with pytest.raises(err.UntrustedIssuer):
        verify_credential(load_proxy_file(proxy), trust)


def test_chain_cache_expiry_is_exact(own: TestPKI) -> None:
    proxy, trust = own.proxy(own.user("t", DN), lifetime=timedelta(hours=1)), \
        TrustStore(own.certdir)
    cred = verify_credential(load_proxy_file(proxy), trust)
    verify_credential(load_proxy_file(proxy), trust, now=cred.not_after)  # last valid instant
    with pytest.raises(err.Expired):
        verify_credential(load_proxy_file(proxy), trust,
                          now=cred.not_after + timedelta(seconds=1))


def test_chain_cache_policy_applies_on_a_hit(own: TestPKI) -> None:
    proxy, trust = own.proxy(own.user("t", DN), limited=True), TrustStore(own.certdir)
    assert verify_credential(load_proxy_file(proxy), trust).limited
    with pytest.raises(err.LimitedProxyRefused):
        verify_credential(load_proxy_file(proxy), trust,
                          policy=proxy_chain.ProxyPolicy(allow_limited=False))


def test_credential_cache_hit_returns_the_same_attributes(own: TestPKI) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN), fqans=FQANS))
    cache = CredentialCache(TrustStore(own.certdir, own.vomsdir))
    first = cache.verify(pem)
    second = cache.verify(pem)
    assert (cache.hits, cache.misses) == (1, 1)
    assert second is first and second.fqans == FQANS and second.identity == DN


def test_credential_cache_edited_lsc_refuses_at_once(own: TestPKI) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN), fqans=FQANS))
    cache = CredentialCache(TrustStore(own.certdir, own.vomsdir))
    cache.verify(pem)
    lsc = own.trust_vo("dteam")
    with open(lsc, "w") as fh:
        fh.write("/DC=org/DC=example/CN=another voms server\n" + own.ca_dn + "\n")
    with pytest.raises(err.ACUntrusted):
        cache.verify(pem)


def test_credential_cache_ac_expiry_is_exact(own: TestPKI) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN), fqans=FQANS,
                               ac_lifetime=timedelta(minutes=30)))
    cache = CredentialCache(TrustStore(own.certdir, own.vomsdir))
    ac_end = cache.verify(pem).voms[0].not_after
    with pytest.raises(err.ACExpired):
        cache.verify(pem, now=ac_end + timedelta(seconds=1))


def test_credential_cache_does_not_remember_refusals(own: TestPKI) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN), fqans=FQANS, ac_forged=True))
    cache = CredentialCache(TrustStore(own.certdir, own.vomsdir))
    for _ in range(2):
        with pytest.raises(err.ACSignatureInvalid):
            cache.verify(pem)
    assert cache.hits == 0 and cache.misses == 2


def test_credential_cache_not_yet_valid_proxy_is_refused(own: TestPKI) -> None:
    start = datetime.now(UTC) + timedelta(hours=1)
    pem = _chain_pem(own.proxy(own.user("t", DN), not_before=start))
    cache = CredentialCache(TrustStore(own.certdir))
    assert cache.verify(pem, now=start + timedelta(minutes=1)).verified
    with pytest.raises(err.NotYetValid):
        cache.verify(pem)
