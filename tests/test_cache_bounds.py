"""The verification caches are bounded and keyed on what was verified, not on the bytes sent.

A caller must not be able to grow a worker's memory by sending one valid chain in
many byte forms (junk certificates appended, other whitespace, extra PEM blocks):
every form lands on one entry. Every cache is bounded in entries and in bytes, with
least-recently-used eviction, and the CRL cache keeps one entry per CRL file.
"""

from __future__ import annotations

import itertools
import os
import threading
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from credentials import errors as err
from credentials import proxy_chain
from credentials.chain_cache import BoundedLRU, Verdict, VerdictCache
from credentials.credential import TrustStore, load_proxy_file
from credentials.credential_cache import CredentialCache
from testkit.pki import TestPKI, User, parse_oneline

DN = "/DC=org/DC=example/O=Users/CN=Bounds Tester"
FQANS = ("/dteam/Role=NULL/Capability=NULL",)


@pytest.fixture
def own(tmp_path: os.PathLike[str]) -> TestPKI:
    return TestPKI(tmp_path, reuse_keys=True)


@pytest.fixture(autouse=True)
def fresh_chain_cache(monkeypatch: pytest.MonkeyPatch) -> VerdictCache[Verdict]:
    """A private verified-chain cache, so counts do not depend on other tests."""
    cache: VerdictCache[Verdict] = VerdictCache()
    monkeypatch.setattr(proxy_chain, "CACHE", cache)
    return cache


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _chain_pem(path: str) -> bytes:
    return load_proxy_file(path).pem_chain()


def _junk(count: int, *, subject: x509.Name | None = None) -> list[bytes]:
    """Self-signed certificates nobody trusts (EC keys: quick to make)."""
    now = datetime.now(UTC)
    out = []
    for i in range(count):
        key = ec.generate_private_key(ec.SECP256R1())
        name = subject or x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"junk {i}")])
        cert = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )  # fmt: skip
        out.append(_pem(cert))
    return out


def _variants(pem: bytes, junk: list[bytes], count: int) -> list[bytes]:
    """``count`` distinct byte forms of ``pem``: junk appended in every order, other spacing."""
    spacings = [
        lambda b: b,
        lambda b: b.replace(b"\n", b"\r\n"),
        lambda b: b"\n\n" + b.replace(b"-----\n-----", b"-----\n\n\n-----") + b"\n",
        lambda b: b"a note\n" + b.replace(b"-----\n-----", b"-----\nx\n-----"),
    ]
    out: list[bytes] = []
    for spacing in spacings:
        for k in range(len(junk) + 1):
            for extra in itertools.permutations(junk, k):
                out.append(spacing(pem + b"".join(extra)))
    out = list(dict.fromkeys(out))
    assert len(out) >= count
    return out[:count]


# -- (a) one chain, many byte forms: one entry -----------------------------------------------


def test_junk_padded_variants_share_one_entry(
    own: TestPKI, fresh_chain_cache: VerdictCache[Verdict]
) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN), fqans=FQANS))
    cache = CredentialCache(TrustStore(own.certdir, own.vomsdir), index_entries=64)
    first = cache.verify(pem)
    one_entry, one_verdicts = cache.nbytes, fresh_chain_cache.nbytes
    assert len(cache) == 1 and one_entry > 0
    variants = _variants(pem, _junk(5), 200)
    for variant in variants:
        cred = cache.verify(variant)
        assert cred is first
        assert (cred.identity, cred.fqans) == (DN, FQANS)
        assert len(cache) == 1
        assert cache.nbytes == one_entry
    assert len(cred.chain) == 2  # proxy and end-entity: no junk kept
    assert cache.index_len <= 64
    # the verified-chain cache: the user's chain, the end-entity's own (which every proxy
    # of that user rests on) and the VOMS server's, whatever was sent
    assert len(fresh_chain_cache) == 3
    assert fresh_chain_cache.nbytes <= 2 * one_verdicts
    assert fresh_chain_cache.index_len <= fresh_chain_cache.index_max_entries
    # a repeat of a known byte form is a hit, without verification
    misses = cache.misses
    assert cache.verify(variants[-1]) is first
    assert cache.misses == misses


def test_whitespace_and_extra_blocks_share_one_entry(own: TestPKI) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN)))
    cache = CredentialCache(TrustStore(own.certdir))
    first = cache.verify(pem)
    key_block = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    for variant in (pem.replace(b"\n", b"\r\n"), b"\n\n\n" + pem + b"\n\n", pem + key_block,
                    key_block + pem, pem + _pem(own.ca_cert)):
        assert cache.verify(variant) is first
    assert len(cache) == 1


def test_a_shared_entry_still_sees_a_new_crl_and_a_removed_ca(own: TestPKI) -> None:
    user = own.user("t", DN)
    pem = _chain_pem(own.proxy(user, fqans=FQANS))
    padded = pem + b"".join(_junk(2))
    cache = CredentialCache(TrustStore(own.certdir, own.vomsdir))
    assert cache.verify(padded) is cache.verify(pem)
    own.revoke(user.cert)
    for form in (pem, padded):
        with pytest.raises(err.Revoked):
            cache.verify(form)
    other = _chain_pem(own.proxy(own.user("u", DN + " 2")))
    cache.verify(other + _pem(own.ca_cert))
    os.unlink(os.path.join(own.certdir, own.ca_hash + ".0"))
    for form in (other, other + _pem(own.ca_cert)):
        with pytest.raises(err.UntrustedIssuer):
            cache.verify(form)
    assert len(cache) == 0


def test_each_variant_was_verified_once_itself(own: TestPKI) -> None:
    """A byte form new to the index is verified in full; a refused one is not indexed."""
    pem = _chain_pem(own.proxy(own.user("t", DN)))
    cache = CredentialCache(TrustStore(own.certdir))
    cache.verify(pem)
    bad = pem.replace(b"-----BEGIN CERTIFICATE-----", b"-----BEGIN CERTIFICATE-----\nAAAA", 1)
    for _ in range(2):
        with pytest.raises(err.MalformedCredential):
            cache.verify(bad)
    assert (len(cache), cache.index_len) == (1, 1)


# -- (b), (c) byte and entry bounds, least recently used out ---------------------------------


def _three_chains(own: TestPKI) -> list[bytes]:
    user = own.user("t", DN)
    return [_chain_pem(own.proxy(user)) for _ in range(3)]


def test_byte_bound_evicts_least_recently_used(own: TestPKI) -> None:
    a, b, c = _three_chains(own)
    trust = TrustStore(own.certdir)
    probe = CredentialCache(trust)
    probe.verify(a)
    one = probe.nbytes
    cache = CredentialCache(trust, max_bytes=one * 5 // 2)  # room for two, not three
    cache.verify(a)
    cache.verify(b)
    cache.verify(a)  # a is now the most recently used
    assert cache.hits == 1
    cache.verify(c)  # evicts b
    assert len(cache) == 2 and cache.nbytes <= one * 5 // 2
    hits, misses = cache.hits, cache.misses
    cache.verify(a)
    cache.verify(c)
    assert (cache.hits, cache.misses) == (hits + 2, misses)
    cache.verify(b)
    assert cache.misses == misses + 1


def test_entry_bound_evicts_least_recently_used(own: TestPKI) -> None:
    a, b, c = _three_chains(own)
    cache = CredentialCache(TrustStore(own.certdir), max_entries=2, index_entries=2)
    cache.verify(a)
    cache.verify(b)
    cache.verify(a)
    cache.verify(c)  # evicts b
    assert len(cache) == 2 and cache.index_len == 2
    hits, misses = cache.hits, cache.misses
    cache.verify(a)
    cache.verify(c)
    cache.verify(b)
    assert (cache.hits, cache.misses) == (hits + 2, misses + 1)
    assert len(cache) == 2


def test_entry_larger_than_the_byte_bound_is_not_kept(own: TestPKI) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN)))
    cache = CredentialCache(TrustStore(own.certdir), max_bytes=100)
    for _ in range(2):
        assert cache.verify(pem).identity == DN
    assert (len(cache), cache.nbytes, cache.hits) == (0, 0, 0)


def test_chain_cache_is_bounded(own: TestPKI, monkeypatch: pytest.MonkeyPatch) -> None:
    small: VerdictCache[Verdict] = VerdictCache(max_entries=2, index_entries=3)
    monkeypatch.setattr(proxy_chain, "CACHE", small)
    trust = TrustStore(own.certdir)
    for pem in _three_chains(own):
        CredentialCache(trust).verify(pem)
    assert len(small) == 2 and small.index_len == 3


def test_bounded_lru_bytes_entries_and_eviction_hook() -> None:
    gone: list[tuple[str, int]] = []
    lru: BoundedLRU[str, int] = BoundedLRU(3, 100, on_evict=lambda k, v: gone.append((k, v)))
    assert lru.put("a", 1, 40) and lru.put("b", 2, 40)
    assert lru.get("a") == 1  # b is now least recently used
    assert lru.put("c", 3, 40)  # 120 > 100: b goes
    assert lru.keys() == ["a", "c"] and lru.nbytes == 80 and gone == [("b", 2)]
    assert lru.put("a", 4, 10)  # replaced: the old value leaves, the bytes follow
    assert lru.nbytes == 50 and gone[-1] == ("a", 1)
    assert lru.put("d", 5, 1) and lru.put("e", 6, 1)  # 4 entries > 3: c goes
    assert lru.keys() == ["a", "d", "e"] and gone[-1] == ("c", 3)
    assert not lru.put("big", 7, 101) and "big" not in lru
    lru.pop("d", only_if=lambda v: v == 99)
    assert "d" in lru
    lru.pop("d")
    assert "d" not in lru and lru.nbytes == 11
    lru.clear()
    assert len(lru) == 0 and lru.nbytes == 0 and len(gone) == 6


def test_concurrent_variants_stay_bounded(own: TestPKI) -> None:
    pem = _chain_pem(own.proxy(own.user("t", DN), fqans=FQANS))
    cache = CredentialCache(TrustStore(own.certdir, own.vomsdir), index_entries=16)
    cache.verify(pem)
    one = cache.nbytes
    variants = _variants(pem, _junk(3), 60)
    failures: list[BaseException] = []

    def work(part: list[bytes]) -> None:
        try:
            for v in part:
                cred = cache.verify(v)
                assert (cred.identity, cred.fqans) == (DN, FQANS)
        except BaseException as exc:  # reported by the main thread
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(variants[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not failures
    assert len(cache) == 1 and cache.nbytes == one and cache.index_len <= 16


# -- (d) CRL cache: one entry per CRL file ---------------------------------------------------


def test_crl_cache_keeps_one_entry_per_path(own: TestPKI, monkeypatch: pytest.MonkeyPatch) -> None:
    crls: BoundedLRU[str, object] = BoundedLRU(8, 1 << 20)
    monkeypatch.setattr(proxy_chain, "_crl_cache", crls)
    user = own.user("t", DN)
    proxy, trust = own.proxy(user), TrustStore(own.certdir)
    cache = CredentialCache(trust)
    pem = _chain_pem(proxy)
    path = os.path.join(own.certdir, own.ca_hash + ".r0")
    for i in range(6):
        own.write_crl(next_update=own.now + timedelta(days=30, minutes=i))  # new file each time
        assert cache.verify(pem).identity == DN
        assert crls.keys() == [path]
        st = os.stat(path)
        cached = crls.peek(path)
        assert cached is not None and cached[0] == (st.st_ino, st.st_mtime_ns, st.st_size)
    own.revoke(user.cert)  # the rewritten CRL still counts at once
    with pytest.raises(err.Revoked):
        cache.verify(pem)
    assert crls.keys() == [path] and 0 < crls.nbytes <= os.path.getsize(path)


def test_crl_cache_is_bounded(tmp_path: os.PathLike[str], monkeypatch: pytest.MonkeyPatch) -> None:
    crls: BoundedLRU[str, object] = BoundedLRU(1, 1 << 20)
    monkeypatch.setattr(proxy_chain, "_crl_cache", crls)
    for name in ("one", "two"):
        pki = TestPKI(os.path.join(os.fspath(tmp_path), name), reuse_keys=True)
        user = pki.user("t", DN)
        trust = TrustStore(pki.certdir)
        assert CredentialCache(trust).verify(_chain_pem(pki.proxy(user))).identity == DN
        assert len(crls) == 1
        pki.revoke(user.cert)
        with pytest.raises(err.Revoked):  # evicted or not, the CRL is read
            CredentialCache(trust).verify(_chain_pem(pki.proxy(user)))


# -- (e) certificates that could change the path ---------------------------------------------


def _intermediate_user(own: TestPKI) -> tuple[User, x509.Certificate]:
    """A user below an intermediate CA that only the client carries (not in the CA dir)."""
    now = own.now - timedelta(minutes=5)
    sub_key = ec.generate_private_key(ec.SECP256R1())
    sub_name = parse_oneline("/DC=org/DC=example/CN=Sub CA")
    sub = (
        x509.CertificateBuilder().subject_name(sub_name).issuer_name(own.ca_cert.subject)
        .public_key(sub_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=30))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .add_extension(x509.KeyUsage(False, False, False, False, False, True, True, False, False),
                       True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(sub_key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            own.ca_key.public_key()), False)
        .sign(own.ca_key, hashes.SHA256())
    )  # fmt: skip
    user_key = own._new_key()
    dn = "/DC=org/DC=example/O=Users/CN=Sub User"
    cert = (
        x509.CertificateBuilder().subject_name(parse_oneline(dn)).issuer_name(sub_name)
        .public_key(user_key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now).not_valid_after(now + timedelta(days=10))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
        .add_extension(x509.KeyUsage(True, False, True, True, False, False, False, False, False),
                       True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(user_key.public_key()), False)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            sub_key.public_key()), False)
        .sign(sub_key, hashes.SHA256())
    )  # fmt: skip
    os.makedirs(os.path.join(own.dir, "sub"), exist_ok=True)
    return User("sub", dn, "", "", cert, user_key), sub


def test_intermediates_are_part_of_the_key_junk_and_lookalikes_are_not(own: TestPKI) -> None:
    user, sub = _intermediate_user(own)
    proxy = load_proxy_file(own.proxy(user))
    bare = _pem(proxy.chain[0]) + _pem(user.cert)
    cache = CredentialCache(TrustStore(own.certdir))
    with pytest.raises(err.UntrustedIssuer):  # the intermediate is needed: it is verified
        cache.verify(bare)
    first = cache.verify(bare + _pem(sub))
    assert first.identity == user.dn and len(first.chain) == 3 and first.chain[2] == sub
    lookalike = _junk(1, subject=sub.subject)[0]  # the intermediate's name, another key
    fake_root = _junk(1, subject=own.ca_cert.subject)[0]
    for extra in (lookalike, fake_root, _pem(own.ca_cert), lookalike + fake_root):
        for variant in (bare + _pem(sub) + extra, bare + extra + _pem(sub)):
            assert cache.verify(variant) is first
    assert len(cache) == 1


# -- (f) what the cold path keeps: certificate facts, AC signers, CA stores, listings ---------


def test_cold_path_memos_are_bounded(tmp_path: os.PathLike[str],
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    """A stream of fresh proxies (each one new bytes) fills the per-certificate facts, the
    parsed AC signers, the CA stores and the directory listings only up to their bounds."""
    from credentials import ca_store, certbytes, chain_cache, voms
    from credentials.lru import BoundedLRU as LRU

    facts: LRU[x509.Certificate, object] = LRU(5, 1 << 30)
    signers: LRU[bytes, x509.Certificate] = LRU(1, 1 << 30)
    stores: LRU[str, object] = LRU(2, 1 << 30)
    listings: LRU[str, object] = LRU(3, 1 << 30)
    monkeypatch.setattr(certbytes, "_by_content", facts)
    monkeypatch.setattr(certbytes, "_by_id", certbytes._ById(7))
    monkeypatch.setattr(voms, "_embedded_certs", signers)
    monkeypatch.setattr(ca_store, "_anchors", stores)
    monkeypatch.setattr(chain_cache, "_listings", listings)
    for name in ("a", "b", "c"):  # three sites: three CA directories and vomsdirs
        pki = TestPKI(os.path.join(os.fspath(tmp_path), name), reuse_keys=True)
        user = pki.user("t", DN)
        cache = CredentialCache(TrustStore(pki.certdir, pki.vomsdir))
        for _ in range(4):
            assert cache.verify(_chain_pem(pki.proxy(user, fqans=FQANS))).fqans == FQANS
            assert len(facts) <= 5 and len(certbytes._by_id.items) <= 7
            assert len(signers) <= 1 and len(stores) <= 2 and len(listings) <= 3
    assert len(facts) == 5 and len(stores) == 2  # they were used, up to the bound
