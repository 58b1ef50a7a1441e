"""DN strings must be byte-identical to C's X509_NAME_oneline: they key every mapfile.

Two independent references: a four-line C program linked against Debian's
libcrypto (the library C LCMAPS uses), and the real C LCMAPS itself through
the oracle, which only maps a proxy when the grid-mapfile key equals the DN
it computed.
"""

from __future__ import annotations

import shutil
import subprocess
from datetime import datetime
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from credentials.credential import load_proxy_file
from credentials.dn import DNError, oneline, oneline_from_der
from testkit.pki import TestPKI, User

ONELINE_C = r"""
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
int main(int argc, char **argv) {
    for (int i = 1; i < argc; i++) {
        FILE *f = fopen(argv[i], "r");
        X509 *x = f ? PEM_read_X509(f, NULL, NULL, NULL) : NULL;
        char buf[2048];
        if (!x) return 2;
        X509_NAME_oneline(X509_get_subject_name(x), buf, sizeof buf);
        puts(buf);
        X509_free(x);
        fclose(f);
    }
    return 0;
}
"""

R = x509.RelativeDistinguishedName
A = x509.NameAttribute
ASN1 = x509.name._ASN1Type

NAMES = {
    "plain": x509.Name([R([A(NameOID.DOMAIN_COMPONENT, "org")]),
                        R([A(NameOID.COMMON_NAME, "Alice Smith")])]),
    "utf8": x509.Name([R([A(NameOID.ORGANIZATION_NAME, "Users")]),
                       R([A(NameOID.COMMON_NAME, "Jürgen Müller")])]),
    "slash_plus": x509.Name([R([A(NameOID.ORGANIZATIONAL_UNIT_NAME, "a/b+c")]),
                             R([A(NameOID.COMMON_NAME, "x=y, z")])]),
    "multi_valued": x509.Name([R([A(NameOID.COMMON_NAME, "Bob"), A(NameOID.USER_ID, "bob1")])]),
    "email_and_unknown": x509.Name([
        R([A(NameOID.EMAIL_ADDRESS, "a@example.org")]),
        R([A(x509.ObjectIdentifier("1.2.3.4.5"), "odd")]),
        R([A(NameOID.SERIAL_NUMBER, "42")]),
    ]),
    "bmp": x509.Name([R([A(NameOID.COMMON_NAME, "Zoë", _type=ASN1.BMPString)])]),
    "universal": x509.Name([R([A(NameOID.COMMON_NAME, "Ünï", _type=ASN1.UniversalString)])]),
    "control": x509.Name([R([A(NameOID.COMMON_NAME, "tab\there")])]),
}


@pytest.fixture(scope="module")
def c_oneline(tmp_path_factory: pytest.TempPathFactory) -> Path:
    if shutil.which("cc") is None or not Path("/usr/include/openssl/x509.h").exists():
        pytest.skip("needs a C compiler and libssl-dev to build the reference")
    work = tmp_path_factory.mktemp("oneline")
    (work / "oneline.c").write_text(ONELINE_C)
    subprocess.run(["cc", "-o", str(work / "oneline"), str(work / "oneline.c"), "-lcrypto"],
                   check=True, capture_output=True)
    return work / "oneline"


@pytest.mark.parametrize("label", sorted(NAMES))
def test_dn_oneline_matches_debian_openssl(label: str, c_oneline: Path, tmp_path: Path) -> None:
    name = NAMES[label]
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (
        x509.CertificateBuilder().subject_name(name).issuer_name(name)
        .public_key(key.public_key()).serial_number(1)
        .not_valid_before(datetime(2020, 1, 1))
        .not_valid_after(datetime(2030, 1, 1))
        .sign(key, hashes.SHA256())
    )
    pem = tmp_path / "c.pem"
    pem.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    expected = subprocess.run([str(c_oneline), str(pem)], check=True, capture_output=True,
                              text=True).stdout.rstrip("\n")
    assert oneline(cert.subject) == expected


def test_dn_test_identities_match_openssl(pki: TestPKI, users: dict[str, User],
                                          c_oneline: Path) -> None:
    for user in users.values():
        expected = subprocess.run([str(c_oneline), user.cert_path], check=True,
                                  capture_output=True, text=True).stdout.rstrip("\n")
        assert load_proxy_file(pki.proxy(user)).identity == expected
    assert load_proxy_file(users["jurgen"].cert_path).identity == (
        "/DC=org/DC=example/O=Users/CN=J\\xC3\\xBCrgen M\\xC3\\xBCller")


def test_dn_rejects_malformed_der() -> None:
    for bad in (b"", b"\x31\x00", b"\x30\x05\x31\x03\x30\x01", b"\x30\x84\xff\xff\xff\xff"):
        with pytest.raises(DNError):
            oneline_from_der(bad)
