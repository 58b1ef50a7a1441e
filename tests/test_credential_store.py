"""The kept CA store, CRLs and vomsdir reads must see every change a site admin makes.

Cold verifications (a fresh proxy each time, as production sees) no longer rebuild the
OpenSSL store, re-read the ``.lsc`` or re-check CRL signatures per query: they keep
what they read with the files' states. Each test changes one thing on disk between two
cold verifications and checks the second one sees it, including changes that land in
the same mtime tick as the first read. The proxy checks OpenSSL now does alone (the
duplicate Python signature check is gone for RFC 3820 chains) are shown to still refuse.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from OpenSSL import crypto

from credentials import ca_store, proxy_chain
from credentials import errors as err
from credentials.credential import TrustStore, load_pem, load_proxy_file, verify_credential
from testkit.pki import TestPKI, User, parse_oneline

DN = "/DC=org/DC=example/O=Users/CN=Store Tester"
OTHER_DN = "/DC=org/DC=other/O=Users/CN=Other Tester"
DTEAM = "/dteam/Role=NULL/Capability=NULL"


@pytest.fixture
def own(tmp_path: Path) -> TestPKI:
    return TestPKI(tmp_path / "own", reuse_keys=True)


def _verify(pki_dir: TestPKI, proxy: str, **kw: object):  # type: ignore[no-untyped-def]
    trust = TrustStore(pki_dir.certdir, pki_dir.vomsdir)
    return verify_credential(load_proxy_file(proxy), trust, **kw)  # type: ignore[arg-type]


def _settle(directory: str, seconds: float = 60) -> None:
    """Age a directory and its entries, as files look minutes after they were written."""
    past = time.time() - seconds
    for root, dirs, files in os.walk(directory):
        for name in files + dirs:
            os.utime(os.path.join(root, name), (past, past))
        os.utime(root, (past, past))


def _copy_ca(src: TestPKI, certdir: str) -> None:
    for suffix in (".0", ".r0", ".signing_policy"):
        shutil.copy2(os.path.join(src.certdir, src.ca_hash + suffix), certdir)


# -- the CA directory ------------------------------------------------------------------------


def test_store_kept_between_cold_queries_while_nothing_changes(own: TestPKI) -> None:
    user = own.user("t", DN)
    _settle(own.certdir)
    assert _verify(own, own.proxy(user)).verified
    kept = ca_store.anchors_for(own.certdir)
    assert _verify(own, own.proxy(user)).verified
    assert ca_store.anchors_for(own.certdir) is kept  # no rebuild for a fresh proxy


def test_added_ca_trusted_from_the_next_cold_query(own: TestPKI, tmp_path: Path) -> None:
    user = own.user("t", DN)
    other = TestPKI(tmp_path / "other", ca_dn="/DC=org/DC=other/CN=Other CA", reuse_keys=True)
    stranger = other.user("s", OTHER_DN)
    _settle(own.certdir)
    assert _verify(own, own.proxy(user)).verified
    with pytest.raises(err.UntrustedIssuer):
        _verify(own, other.proxy(stranger))
    _copy_ca(other, own.certdir)
    assert _verify(own, other.proxy(stranger)).identity == OTHER_DN


def test_removed_ca_refuses_the_next_cold_query(own: TestPKI) -> None:
    user = own.user("t", DN)
    _settle(own.certdir)
    assert _verify(own, own.proxy(user)).verified
    os.unlink(os.path.join(own.certdir, own.ca_hash + ".0"))
    with pytest.raises(err.UntrustedIssuer):
        _verify(own, own.proxy(user))


def test_ca_file_rewritten_in_place_is_seen(own: TestPKI, tmp_path: Path) -> None:
    """Same inode, same directory mtime: only the file's own state tells."""
    user = own.user("t", DN)
    rogue = TestPKI(tmp_path / "rogue", ca_dn=own.ca_dn, reuse_keys=True)  # same name
    path = os.path.join(own.certdir, own.ca_hash + ".0")
    _settle(own.certdir)
    assert _verify(own, own.proxy(user)).verified
    before = os.stat(own.certdir).st_mtime_ns, os.stat(path).st_ino
    with open(path, "r+b") as fh:
        fh.truncate(0)
        fh.write(rogue.ca_cert.public_bytes(serialization.Encoding.PEM))
    assert (os.stat(own.certdir).st_mtime_ns, os.stat(path).st_ino) == before
    with pytest.raises(err.UntrustedIssuer):
        _verify(own, own.proxy(user))


def test_change_within_the_same_mtime_tick_is_seen(own: TestPKI, tmp_path: Path) -> None:
    """The kernel stamps mtimes with a coarse clock: a CA added right after the store was
    read can leave the directory's mtime as it was. A store read from a directory that
    had just changed is not trusted to be current."""
    user = own.user("t", DN)
    other = TestPKI(tmp_path / "other", ca_dn="/DC=org/DC=other/CN=Other CA", reuse_keys=True)
    stranger = other.user("s", OTHER_DN)
    assert _verify(own, own.proxy(user)).verified  # the directory was written just now
    st = os.stat(own.certdir)
    _copy_ca(other, own.certdir)
    os.utime(own.certdir, ns=(st.st_atime_ns, st.st_mtime_ns))  # as if in the same tick
    assert _verify(own, other.proxy(stranger)).identity == OTHER_DN


def test_forged_crl_refused_cold_and_cached(own: TestPKI) -> None:
    """CRL signatures are checked when the file is read, so a replaced CRL is checked."""
    user = own.user("t", DN)
    _settle(own.certdir)
    cached = own.proxy(user)
    assert _verify(own, cached).verified
    forger = rsa.generate_private_key(65537, 2048)
    forged = (
        x509.CertificateRevocationListBuilder().issuer_name(own.ca_cert.subject)
        .last_update(datetime.now(UTC) - timedelta(minutes=5))
        .next_update(datetime.now(UTC) + timedelta(days=1))
        .sign(forger, hashes.SHA256())
    )  # fmt: skip
    with open(os.path.join(own.certdir, own.ca_hash + ".r0"), "wb") as fh:
        fh.write(forged.public_bytes(serialization.Encoding.PEM))
    for proxy in (cached, own.proxy(user)):
        with pytest.raises(err.UntrustedIssuer, match="bad signature"):
            _verify(own, proxy)


def _short_lived_ca(certdir: Path) -> x509.Certificate:
    """A CA directory whose CA expires in an hour, and an end-entity that outlives it."""
    now = datetime.now(UTC)
    ca_key, user_key = (rsa.generate_private_key(65537, 2048) for _ in range(2))
    ca_name = x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "Short CA")])
    ca = (
        x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
        .public_key(ca_key.public_key()).serial_number(1)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    user = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(x509.NameOID.COMMON_NAME, "User")]))
        .issuer_name(ca_name).public_key(user_key.public_key()).serial_number(2)
        .not_valid_before(now - timedelta(hours=1)).not_valid_after(now + timedelta(days=30))
        .sign(ca_key, hashes.SHA256())
    )  # fmt: skip
    certdir.mkdir()
    (certdir / f"{proxy_chain.subject_hash(ca)}.0").write_bytes(
        ca.public_bytes(serialization.Encoding.PEM))
    _settle(str(certdir))
    return user


def test_concurrent_verifications_at_different_times_do_not_mix(tmp_path: Path) -> None:
    """The verification time is a setting of the shared OpenSSL store: threads verifying
    at different times (the CA valid at one, expired at the other) must each get their
    own verdict."""
    user = _short_lived_ca(tmp_path / "certificates")
    certdir = str(tmp_path / "certificates")
    ossl = crypto.X509.from_cryptography(user)
    now, later = datetime.now(UTC), datetime.now(UTC) + timedelta(hours=2)
    wrong: list[str] = []

    def work(expired: bool) -> None:
        for _ in range(300):
            try:
                ca_store.verify(certdir, [user], [ossl], later if expired else now)
                ok = True
            except crypto.X509StoreContextError:
                ok = False
            if ok == expired:
                wrong.append(f"expired={expired} gave ok={ok}")

    threads = [threading.Thread(target=work, args=(i % 2 == 1,)) for i in range(6)]
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # switch threads as often as the interpreter can
    try:
        for t in threads:
            t.start()
        for t in threads:
            t.join()
    finally:
        sys.setswitchinterval(interval)
    assert not wrong, wrong[:3]


# -- the vomsdir ---------------------------------------------------------------------------


def test_edited_lsc_refuses_the_next_cold_query(own: TestPKI) -> None:
    user = own.user("t", DN)
    _settle(own.dir)
    assert _verify(own, own.proxy(user, fqans=[DTEAM])).fqans == (DTEAM,)
    lsc = os.path.join(own.vomsdir, "dteam", own.voms_host + ".lsc")
    with open(lsc, "w") as fh:
        fh.write("/DC=org/DC=example/CN=another voms server\n" + own.ca_dn + "\n")
    with pytest.raises(err.ACUntrusted):
        _verify(own, own.proxy(user, fqans=[DTEAM]))


def test_vomsdir_certificate_added_and_removed_cold(own: TestPKI) -> None:
    """Trust by a copy of the VOMS server's certificate (no .lsc): counted from the next
    query when it appears and when it goes, even within the same mtime tick."""
    user = own.user("t", DN)
    os.unlink(os.path.join(own.vomsdir, "dteam", own.voms_host + ".lsc"))
    with pytest.raises(err.ACUntrusted):
        _verify(own, own.proxy(user, fqans=[DTEAM]))
    vo_dir = os.path.join(own.vomsdir, "dteam")
    st = os.stat(vo_dir)
    cert = os.path.join(vo_dir, "voms.pem")
    with open(cert, "wb") as fh:
        fh.write(own.voms_cert.public_bytes(serialization.Encoding.PEM))
    os.utime(vo_dir, ns=(st.st_atime_ns, st.st_mtime_ns))  # as if in the same tick
    assert _verify(own, own.proxy(user, fqans=[DTEAM])).fqans == (DTEAM,)
    os.unlink(cert)
    with pytest.raises(err.ACUntrusted):
        _verify(own, own.proxy(user, fqans=[DTEAM]))


def test_hidden_files_in_the_vomsdir_vouch_for_nobody(own: TestPKI) -> None:
    """As before (glob "*"): a dot file is not a trusted VOMS server certificate."""
    user = own.user("t", DN)
    os.unlink(os.path.join(own.vomsdir, "dteam", own.voms_host + ".lsc"))
    with open(os.path.join(own.vomsdir, "dteam", ".voms.pem"), "wb") as fh:
        fh.write(own.voms_cert.public_bytes(serialization.Encoding.PEM))
    with pytest.raises(err.ACUntrusted):
        _verify(own, own.proxy(user, fqans=[DTEAM]))


# -- proxy checks OpenSSL does alone for RFC 3820 chains ------------------------------------


def _proxy(issuer: User, pki: TestPKI, *, last: x509.NameAttribute | None = None,
           sign_with: rsa.RSAPrivateKey | None = None,
           extra: tuple[tuple[x509.ExtensionType, bool], ...] = ()) -> bytes:
    """An RFC 3820 proxy of ``issuer`` (AKID naming the issuer's key), varied one way."""
    now = datetime.now(UTC)
    key = rsa.generate_private_key(65537, 2048)
    attr = last or x509.NameAttribute(x509.NameOID.COMMON_NAME, "31337")
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([*issuer.cert.subject, attr]))
        .issuer_name(issuer.cert.subject).public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(pki._proxy_cert_info(False, None), True)
        .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
            issuer.key.public_key()), False)
    )  # fmt: skip
    for ext, critical in extra:
        builder = builder.add_extension(ext, critical)
    cert = builder.sign(sign_with or issuer.key, hashes.SHA256())
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem) + issuer.cert.public_bytes(pem)


def test_rfc_proxy_checks_openssl_does(own: TestPKI) -> None:
    user = own.user("t", DN)
    trust = TrustStore(own.certdir)
    assert verify_credential(load_pem(_proxy(user, own)), trust).verified  # the baseline
    bad_signature = _proxy(user, own, sign_with=rsa.generate_private_key(65537, 2048))
    with pytest.raises(err.UntrustedIssuer, match="not signed by"):
        verify_credential(load_pem(bad_signature), trust)
    not_a_cn = _proxy(user, own, last=x509.NameAttribute(x509.NameOID.ORGANIZATIONAL_UNIT_NAME,
                                                         "31337"))
    with pytest.raises(err.NotAProxy):
        verify_credential(load_pem(not_a_cn), trust)
    ca_proxy = _proxy(user, own, extra=((x509.BasicConstraints(ca=True, path_length=None),
                                         True),))
    with pytest.raises(err.CredentialError):
        verify_credential(load_pem(ca_proxy), trust)
    unknown_critical = _proxy(user, own, extra=((x509.UnrecognizedExtension(
        x509.ObjectIdentifier("1.3.6.1.4.1.99999.1"), b"\x05\x00"), True),))
    with pytest.raises(err.CredentialError):
        verify_credential(load_pem(unknown_critical), trust)
    with_san = _proxy(user, own, extra=((x509.SubjectAlternativeName(
        [x509.DNSName("wn.example.org")]), False),))
    with pytest.raises(err.CredentialError):
        verify_credential(load_pem(with_san), trust)


def test_proxy_of_a_certificate_that_may_not_sign_is_refused(own: TestPKI) -> None:
    """OpenSSL's rule: the issuer of a proxy needs digitalSignature in its key usage."""
    key = rsa.generate_private_key(65537, 2048)
    dn = "/DC=org/DC=example/O=Users/CN=Cannot Sign"
    no_signing = x509.KeyUsage(False, False, True, False, False, False, False, False, False)
    cert = own._sign(parse_oneline(dn), key.public_key(), own.ca_cert.subject, own.ca_key,
                     extensions=[(x509.BasicConstraints(ca=False, path_length=None), True),
                                 (no_signing, True)])
    with pytest.raises(err.UntrustedIssuer, match="digital signature"):
        verify_credential(load_pem(_proxy(User("n", dn, "", "", cert, key), own)),
                          TrustStore(own.certdir))


def test_legacy_proxy_signature_still_checked_here(own: TestPKI) -> None:
    """OpenSSL cannot check a legacy (CN=proxy) proxy's signature: that check stays ours."""
    user = own.user("t", DN)
    forged = own.proxy(user, legacy=True, wrong_key=True)
    with pytest.raises(err.UntrustedIssuer, match="not signed by"):
        _verify(own, forged)
    assert _verify(own, own.proxy(user, legacy=True)).verified
