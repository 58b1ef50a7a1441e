"""Credential loading and verification: every kind of bad proxy gets its own reason."""

from __future__ import annotations

import os
import shutil
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from credentials import errors as err
from credentials.credential import (
    ProxyPolicy,
    ProxyType,
    TrustStore,
    load_pem,
    load_proxy_file,
    verify_credential,
)
from testkit.pki import TestPKI, User

DTEAM = "/dteam/Role=NULL/Capability=NULL"
PROD = "/dteam/production/Role=NULL/Capability=NULL"


@pytest.fixture(scope="module")
def trust(pki: TestPKI) -> TrustStore:
    return TrustStore(pki.certdir, pki.vomsdir)


def verify(path: str, trust: TrustStore, **kw: object):  # type: ignore[no-untyped-def]
    return verify_credential(load_proxy_file(path), trust, **kw)  # type: ignore[arg-type]


def expect(kind: type[err.CredentialError], path: str, trust: TrustStore, **kw: object) -> str:
    with pytest.raises(kind) as info:
        verify(path, trust, **kw)
    reason = str(info.value)
    assert "\n" not in reason and reason == info.value.reason
    return reason


def test_credential_rfc3820_proxy_verifies(pki: TestPKI, users: dict[str, User],
                                           trust: TrustStore) -> None:
    cred = verify(pki.proxy(users["alice"]), trust)
    assert cred.verified
    assert cred.identity == "/DC=org/DC=example/O=Users/CN=Alice Smith"
    assert cred.issuer == cred.identity
    assert cred.subject.startswith(cred.identity + "/CN=")
    assert cred.proxy_type is ProxyType.RFC3820
    assert cred.proxy_depth == 1 and not cred.limited
    assert cred.fqans == () and cred.vo is None
    assert 11 * 3600 < cred.time_left() <= 12 * 3600


def test_credential_legacy_and_limited_proxies(pki: TestPKI, users: dict[str, User],
                                               trust: TrustStore) -> None:
    legacy = verify(pki.proxy(users["alice"], legacy=True), trust)
    assert legacy.proxy_type is ProxyType.LEGACY and not legacy.limited
    assert legacy.subject.endswith("/CN=proxy")
    legacy_limited = verify(pki.proxy(users["alice"], legacy=True, limited=True), trust)
    assert legacy_limited.limited and legacy_limited.subject.endswith("/CN=limited proxy")
    rfc_limited = verify(pki.proxy(users["alice"], limited=True), trust)
    assert rfc_limited.limited and rfc_limited.proxy_type is ProxyType.RFC3820


def test_credential_limited_proxy_policy(pki: TestPKI, users: dict[str, User],
                                         trust: TrustStore) -> None:
    limited = pki.proxy(users["alice"], limited=True)
    reason = expect(err.LimitedProxyRefused, limited, trust,
                    policy=ProxyPolicy(allow_limited=False))
    assert "limited" in reason
    full = pki.proxy(users["alice"])
    expect(err.LimitedProxyRefused, full, trust, policy=ProxyPolicy(require_limited=True))
    assert verify(limited, trust, policy=ProxyPolicy(require_limited=True)).limited
    # A proxy derived from a limited proxy is limited too.
    child = pki.proxy(users["alice"], parent=limited)
    expect(err.LimitedProxyRefused, child, trust, policy=ProxyPolicy(allow_limited=False))


def test_credential_two_level_proxy(pki: TestPKI, users: dict[str, User],
                                    trust: TrustStore) -> None:
    first = pki.proxy(users["bob"])
    second = verify(pki.proxy(users["bob"], parent=first), trust)
    assert second.proxy_depth == 2
    assert second.identity == "/DC=org/DC=example/O=Users/CN=Bob Jones"
    legacy2 = verify(pki.proxy(users["bob"], legacy=True,
                               parent=pki.proxy(users["bob"], legacy=True)), trust)
    assert legacy2.proxy_depth == 2 and legacy2.subject.endswith("/CN=proxy/CN=proxy")


def test_credential_expired_and_not_yet_valid(pki: TestPKI, users: dict[str, User],
                                              trust: TrustStore) -> None:
    past = datetime.now(UTC) - timedelta(days=2)
    expired = pki.proxy(users["alice"], not_before=past, lifetime=timedelta(hours=1))
    assert "expired" in expect(err.Expired, expired, trust)
    future = pki.proxy(users["alice"], not_before=datetime.now(UTC) + timedelta(days=1))
    assert "not valid before" in expect(err.NotYetValid, future, trust)
    # The clock is injectable: a fresh proxy is expired tomorrow and not valid last week.
    fresh = pki.proxy(users["alice"])
    expect(err.Expired, fresh, trust, now=datetime.now(UTC) + timedelta(days=1))
    expect(err.NotYetValid, fresh, trust, now=datetime.now(UTC) - timedelta(days=7))


def test_credential_wrong_signing_key(pki: TestPKI, users: dict[str, User],
                                      trust: TrustStore) -> None:
    forged = pki.proxy(users["alice"], wrong_key=True)
    assert "not signed by" in expect(err.UntrustedIssuer, forged, trust)


def test_credential_path_length_exceeded(pki: TestPKI, users: dict[str, User],
                                         trust: TrustStore) -> None:
    parent = pki.proxy(users["alice"], path_len=0)
    assert verify(parent, trust).proxy_depth == 1
    child = pki.proxy(users["alice"], parent=parent)
    assert "allows 0 further" in expect(err.PathLengthExceeded, child, trust)
    ok_parent = pki.proxy(users["alice"], path_len=1)
    assert verify(pki.proxy(users["alice"], parent=ok_parent), trust).proxy_depth == 2


def test_credential_untrusted_ca(tmp_path: os.PathLike[str], trust: TrustStore) -> None:
    rogue = TestPKI(tmp_path, ca_dn="/DC=org/DC=rogue/CN=Rogue CA")
    mallory = rogue.user("mallory", "/DC=org/DC=example/O=Users/CN=Alice Smith")
    reason = expect(err.UntrustedIssuer, rogue.proxy(mallory), trust)
    assert "issuer certificate" in reason


def test_credential_revoked_end_entity(tmp_path: os.PathLike[str]) -> None:
    own = TestPKI(tmp_path)
    carol = own.user("carol", "/DC=org/DC=example/O=Users/CN=Carol White")
    proxy = own.proxy(carol)
    own_trust = TrustStore(own.certdir, own.vomsdir)
    assert verify(proxy, own_trust).verified
    own.revoke(carol.cert)
    assert "revoked" in expect(err.Revoked, proxy, own_trust)


def test_credential_out_of_date_crl_refused(tmp_path: os.PathLike[str]) -> None:
    own = TestPKI(tmp_path)
    dave = own.user("dave", "/DC=org/DC=example/O=Users/CN=Dave Black")
    own.write_crl(next_update=datetime.now(UTC) - timedelta(hours=1))
    reason = expect(err.UntrustedIssuer, own.proxy(dave), TrustStore(own.certdir))
    assert "CRL" in reason and "out of date" in reason


def test_credential_malformed_inputs(tmp_path: os.PathLike[str], pki: TestPKI,
                                     users: dict[str, User]) -> None:
    with pytest.raises(err.MalformedCredential, match="no parseable certificate"):
        load_pem(b"this is not a proxy")
    with pytest.raises(err.MalformedCredential, match="cannot read"):
        load_proxy_file(os.path.join(tmp_path, "missing.pem"))
    with pytest.raises(err.MalformedCredential, match="larger than"):
        load_pem(b"A" * (300 * 1024))
    # A proxy file whose key belongs to another certificate.
    with open(pki.proxy(users["alice"]), "rb") as fh:
        good = fh.read()
    other_key = rsa.generate_private_key(65537, 2048).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption())
    certs = [c.public_bytes(serialization.Encoding.PEM)
             for c in x509.load_pem_x509_certificates(good)]
    with pytest.raises(err.MalformedCredential, match="does not match"):
        load_pem(certs[0] + other_key + certs[1])
    # Proxies with their end-entity missing.
    with pytest.raises(err.MalformedCredential, match="no end-entity"):
        load_pem(certs[0])
    # Truncated base64 inside the PEM armour.
    with pytest.raises(err.MalformedCredential):
        load_pem(certs[0][:200] + b"\n-----END CERTIFICATE-----\n")


def test_credential_bare_chain_without_key(pki: TestPKI, users: dict[str, User],
                                           trust: TrustStore) -> None:
    """An XACML cert-chain attribute carries certificates only."""
    cred = load_proxy_file(pki.proxy(users["alice"], fqans=[DTEAM]))
    bare = load_pem(cred.pem_chain())
    assert bare.key is None
    checked = verify_credential(bare, trust)
    assert checked.identity == cred.identity and checked.fqans == (DTEAM,)


def _hand_made_proxy(issuer: User, subject: x509.Name, ext: x509.ExtensionType) -> bytes:
    """A proxy-like certificate signed by ``issuer`` with one critical extension, plus the
    issuer's certificate, as PEM: for shapes the test PKI refuses to make."""
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.cert.subject)
        .public_key(rsa.generate_private_key(65537, 2048).public_key())
        .serial_number(7)
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(ext, critical=True)
        .sign(issuer.key, hashes.SHA256())
    )
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem) + issuer.cert.public_bytes(pem)


def test_credential_proxy_not_named_after_issuer(pki: TestPKI, users: dict[str, User],
                                                 trust: TrustStore) -> None:
    subject = x509.Name.from_rfc4514_string("CN=12345,CN=Somebody Else,DC=org")
    pem = _hand_made_proxy(users["alice"], subject, pki._proxy_cert_info(False, None))
    with pytest.raises(err.NotAProxy, match="not named after its issuer"):
        verify_credential(load_pem(pem), trust)


def test_credential_end_entity_alone_is_not_a_proxy(pki: TestPKI, users: dict[str, User],
                                                    trust: TrustStore) -> None:
    cred = verify_credential(load_proxy_file(users["alice"].cert_path), trust)
    assert cred.proxy_type is ProxyType.NONE and cred.proxy_depth == 0
    assert cred.identity == cred.subject


def test_credential_level_lifetime_limits(pki: TestPKI, users: dict[str, User],
                                          trust: TrustStore) -> None:
    long_proxy = pki.proxy(users["alice"], lifetime=timedelta(hours=12))
    reason = expect(err.LifetimeExceeded, long_proxy, trust,
                    policy=ProxyPolicy(max_level_ttl={"L": timedelta(hours=1)}))
    assert "level L" in reason
    expect(err.LifetimeExceeded, long_proxy, trust,
           policy=ProxyPolicy(max_level_ttl={1: timedelta(hours=2)}))
    assert verify(long_proxy, trust, policy=ProxyPolicy(max_level_ttl={"L": timedelta(days=1)}))


def test_voms_fqans_in_ac_order(pki: TestPKI, users: dict[str, User], trust: TrustStore) -> None:
    first = verify(pki.proxy(users["alice"], fqans=[PROD, DTEAM]), trust)
    second = verify(pki.proxy(users["alice"], fqans=[DTEAM, PROD]), trust)
    assert first.fqans == (PROD, DTEAM) and second.fqans == (DTEAM, PROD)
    ac = first.voms[0]
    assert ac.vo == "dteam" and ac.uri == "voms.example.org:15000"
    assert ac.server_subject == "/DC=org/DC=example/CN=voms.example.org"
    assert ac.server_issuer == "/DC=org/DC=example/CN=Test CA"
    assert ac.not_before < datetime.now(UTC) < ac.not_after
    atlas = verify(pki.proxy(users["bob"], vo="atlas", fqans=["/atlas/Role=pilot"]), trust)
    assert atlas.vo == "atlas" and atlas.fqans == ("/atlas/Role=pilot",)


def test_voms_bad_attribute_certificates(pki: TestPKI, users: dict[str, User],
                                         trust: TrustStore) -> None:
    alice = users["alice"]
    forged = pki.proxy(alice, fqans=[DTEAM], ac_forged=True)
    assert "not signed by" in expect(err.ACSignatureInvalid, forged, trust)
    old = pki.proxy(alice, fqans=[DTEAM], ac_not_before=datetime.now(UTC) - timedelta(days=1),
                    ac_lifetime=timedelta(hours=1))
    assert "expired" in expect(err.ACExpired, old, trust)
    early = pki.proxy(alice, fqans=[DTEAM], ac_not_before=datetime.now(UTC) + timedelta(hours=2))
    expect(err.ACNotYetValid, early, trust)
    unknown_vo = pki.proxy(alice, vo="nosuchvo", fqans=["/nosuchvo/Role=NULL/Capability=NULL"])
    assert "nosuchvo" in expect(err.ACUntrusted, unknown_vo, trust)
    other_host = pki.proxy(alice, fqans=[DTEAM], ac_voms_host="voms.rogue.org")
    expect(err.ACUntrusted, other_host, trust)
    stolen = pki.proxy(alice, fqans=[DTEAM], ac_holder=users["bob"])
    assert "another certificate" in expect(err.ACHolderMismatch, stolen, trust)
    long_ac = pki.proxy(alice, fqans=[DTEAM], ac_lifetime=timedelta(hours=12))
    expect(err.LifetimeExceeded, long_ac, trust,
           policy=ProxyPolicy(max_voms_ttl=timedelta(hours=1)))


def test_voms_trust_by_certificate_file(tmp_path: os.PathLike[str], pki: TestPKI,
                                        users: dict[str, User]) -> None:
    """Without an .lsc, a copy of the VOMS server certificate in the vomsdir is trusted."""
    vomsdir = os.path.join(tmp_path, "vomsdir")
    os.makedirs(os.path.join(vomsdir, "dteam"))
    with open(os.path.join(vomsdir, "dteam", "voms.pem"), "wb") as fh:
        fh.write(pki.voms_cert.public_bytes(serialization.Encoding.PEM))
    proxy = pki.proxy(users["alice"], fqans=[DTEAM])
    assert verify(proxy, TrustStore(pki.certdir, vomsdir)).fqans == (DTEAM,)
    empty = os.path.join(tmp_path, "empty")
    os.makedirs(empty)
    expect(err.ACUntrusted, proxy, TrustStore(pki.certdir, empty))


def test_voms_lsc_naming_another_server_refused(tmp_path: os.PathLike[str], pki: TestPKI,
                                                users: dict[str, User]) -> None:
    vomsdir = os.path.join(tmp_path, "vomsdir")
    shutil.copytree(pki.vomsdir, vomsdir)
    with open(os.path.join(vomsdir, "dteam", "voms.example.org.lsc"), "w") as fh:
        fh.write("/DC=org/DC=example/CN=other.example.org\n/DC=org/DC=example/CN=Test CA\n")
    proxy = pki.proxy(users["alice"], fqans=[DTEAM])
    assert "does not match" in expect(err.ACUntrusted, proxy, TrustStore(pki.certdir, vomsdir))


def test_voms_not_read_without_vomsdir(pki: TestPKI, users: dict[str, User]) -> None:
    """Unverified FQANs are never handed out."""
    cred = verify(pki.proxy(users["alice"], fqans=[DTEAM]), TrustStore(pki.certdir))
    assert cred.fqans == ()


def test_credential_missing_ca_directory(pki: TestPKI, users: dict[str, User]) -> None:
    with pytest.raises(err.UntrustedIssuer, match="does not exist"):
        verify(pki.proxy(users["alice"]), TrustStore("/nonexistent/certificates"))


def test_credential_only_lifetime_checks_skips_chain_but_keeps_limits(
        pki: TestPKI, users: dict[str, User], trust: TrustStore) -> None:
    """verify_proxy --only-enforce-lifetime-checks: no chain verification, limits still hold."""
    lifetime_only = ProxyPolicy(only_lifetime_checks=True)
    forged = pki.proxy(users["alice"], wrong_key=True)
    assert verify(forged, trust, policy=lifetime_only).verified
    expect(err.UntrustedIssuer, forged, trust)  # the normal mode still refuses it
    long_proxy = pki.proxy(users["alice"], wrong_key=True, lifetime=timedelta(hours=12))
    expect(err.LifetimeExceeded, long_proxy, trust, policy=ProxyPolicy(
        only_lifetime_checks=True, max_level_ttl={"L": timedelta(hours=1)}))
    limited = pki.proxy(users["alice"], limited=True)
    expect(err.LimitedProxyRefused, limited, trust,
           policy=ProxyPolicy(only_lifetime_checks=True, allow_limited=False))


def test_credential_garbage_proxy_cert_info_is_malformed(users: dict[str, User]) -> None:
    """Bad DER inside ProxyCertInfo is the caller's malformed credential (a Deny), not an
    internal error of the service (which would send every client to another replica)."""
    alice = users["alice"]
    subject = x509.Name([*alice.cert.subject,
                         x509.NameAttribute(x509.NameOID.COMMON_NAME, "12345")])
    garbage = x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14"), b"\x30\x84\xff\xff\xff\xff"
    )
    with pytest.raises(err.MalformedCredential, match="ProxyCertInfo is not valid DER"):
        load_pem(_hand_made_proxy(alice, subject, garbage))


def test_pem_der_is_what_cryptography_encodes(pki: TestPKI, users: dict[str, User]) -> None:
    """certbytes parses each plain CERTIFICATE block's DER itself (sparing a re-encoding per
    certificate) and leaves anything else to cryptography's PEM reader. Either way it returns
    the certificates cryptography would, and the DER it keeps is each one's encoding."""
    from credentials import certbytes

    crl_junk = b"-----BEGIN X509 CRL-----\nAAAA\n-----END X509 CRL-----\n"
    header = b"-----BEGIN CERTIFICATE-----\nProc-Type: 4,MIC-ONLY\n"
    variants = {
        "as written": lambda b: b,
        "CRLF": lambda b: b.replace(b"\n", b"\r\n"),
        "text around": lambda b: b"# a comment\n" + b.replace(b"-----\n", b"-----\n\n", 1),
        "another kind of block": lambda b: crl_junk + b,
        "a header line": lambda b: b.replace(b"-----BEGIN CERTIFICATE-----\n", header, 1),
        "no END": lambda b: b[: b.rindex(b"-----END")],
        "bad base64": lambda b: b.replace(b"-----\nMII", b"-----\nM!I", 1),
    }
    for name, variant in variants.items():
        # new certificates each time; a proxy file's key block is another kind of block
        cred = load_proxy_file(pki.proxy(users["alice"]), with_key=False)
        data = variant(b"".join(c.public_bytes(serialization.Encoding.PEM) for c in cred.chain))
        plain = name in ("as written", "CRLF", "text around")
        assert (certbytes._plain_blocks(data) is not None) == plain, name
        try:
            expected = x509.load_pem_x509_certificates(data)
        except ValueError:
            with pytest.raises(ValueError):
                certbytes.load_pem(data)
            continue
        certs = certbytes.load_pem(data)
        assert certs == expected, name
        assert [certbytes.der(c) for c in certs] == [
            c.public_bytes(serialization.Encoding.DER) for c in certs], name
    assert certbytes._plain_blocks(b"no certificate here") is None


