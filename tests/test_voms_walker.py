"""The DER walker that reads VOMS ACs must read exactly what a full ASN.1 decoder reads.

The walker (:mod:`credentials.voms_ac`) replaced pyasn1 on the decision path. pyasn1 and
pyasn1-modules stay dependencies anyway (the test PKI builds its ACs with them), so the
old pyasn1 reading is kept here as the oracle: on every AC the test PKI and Debian's
``voms-proxy-fake`` make, both must agree field by field, the signed ``acinfo`` being the
exact bytes in the proxy. Random truncations, bit flips and byte edits of those ACs must
either read like pyasn1 reads them or be refused with ``ACMalformed`` (never another
exception, never a hang), and the walker never accepts what pyasn1 refuses.
"""

from __future__ import annotations

import os
import random
import shutil
import subprocess
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from pyasn1.codec.der import decoder, encoder
from pyasn1_modules import rfc5755

from credentials import errors as err
from credentials import voms
from credentials.credential import TrustStore, load_pem, load_proxy_file, verify_credential
from credentials.dn import oneline_from_der, read_tlv
from credentials.voms_ac import ACFields, decode_ac, split_acs
from testkit.pki import TestPKI, User

DTEAM = "/dteam/Role=NULL/Capability=NULL"
PROD = "/dteam/production/Role=NULL/Capability=NULL"
PILOT = "/dteam/Role=pilot/Capability=NULL"


# -- the oracle: the pyasn1 reading the decision path used before ---------------------------


def _names_dn(names: Any) -> str:
    for gn in names:
        if gn.getName() == "directoryName":
            return oneline_from_der(encoder.encode(gn["directoryName"]["rdnSequence"]))
    return ""


def _oracle_certs(value: bytes) -> tuple[bytes, ...]:
    _, pos, end = read_tlv(value, 0)
    tag, body, _ = read_tlv(value, pos)
    nested = tag == 0x30 and value[read_tlv(value, body)[1]] not in (0xA0, 0x02)
    if pos < end and nested:
        _, pos, end = read_tlv(value, pos)
    out = []
    while pos < end:
        _, _, stop = read_tlv(value, pos)
        out.append(value[pos:stop])
        pos = stop
    return tuple(out)


def oracle(raw: bytes) -> dict[str, Any]:
    """The fields pyasn1 reads from one AC (raises whatever pyasn1 raises)."""
    ac, rest = decoder.decode(raw, asn1Spec=rfc5755.AttributeCertificate())
    assert not rest, "trailing bytes"
    info = ac["acinfo"]
    _, body, _ = read_tlv(raw, 0)
    authority, fqans = None, ()
    for attribute in info["attributes"]:
        if str(attribute["type"]) != voms.OID_FQAN or authority is not None:
            continue
        for value in attribute["values"]:
            syntax, _ = decoder.decode(bytes(value), asn1Spec=rfc5755.IetfAttrSyntax())
            authority = ""
            if syntax["policyAuthority"].isValue:
                for gn in syntax["policyAuthority"]:
                    if gn.getName() == "uniformResourceIdentifier":
                        authority = str(gn["uniformResourceIdentifier"])
            fqans = tuple(
                bytes(c["octets"]).decode("utf-8", "replace") if c.getName() == "octets"
                else str(c[c.getName()]) for c in syntax["values"])
            break
    assert authority is not None, "no FQAN attribute"
    issuer = info["issuer"]
    names = issuer["v2Form"]["issuerName"] if issuer.getName() == "v2Form" else issuer["v1Form"]
    holder = info["holder"]
    holder_issuer, holder_serial = "", None
    if holder["baseCertificateID"].isValue:
        holder_issuer = _names_dn(holder["baseCertificateID"]["issuer"])
        holder_serial = int(holder["baseCertificateID"]["serial"])
    certs: tuple[bytes, ...] = ()
    if info["extensions"].isValue:
        for ext in info["extensions"]:
            if str(ext["extnID"]) == voms.OID_AC_CERTS:
                certs = _oracle_certs(bytes(ext["extnValue"]))
                break
    period = info["attrCertValidityPeriod"]
    return {
        "acinfo_der": raw[body : read_tlv(raw, body)[2]],
        "sig_oid": str(ac["signatureAlgorithm"]["algorithm"]),
        "signature": ac["signatureValue"].asOctets(),
        "holder_issuer": holder_issuer,
        "holder_serial": holder_serial,
        "issuer": _names_dn(names),
        "serial": int(info["serialNumber"]),
        "not_before": period["notBeforeTime"].asDateTime.astimezone(UTC),
        "not_after": period["notAfterTime"].asDateTime.astimezone(UTC),
        "authority": authority,
        "fqans": fqans,
        "certs_der": certs,
    }


def fields(ac: ACFields) -> dict[str, Any]:
    return {name: getattr(ac, name) for name in ACFields.__dataclass_fields__}


# -- vectors: every AC our test PKI and voms-proxy-fake make --------------------------------


def _extension(proxy_pem: bytes) -> bytes:
    leaf = x509.load_pem_x509_certificates(proxy_pem)[0]
    value = leaf.extensions.get_extension_for_oid(voms.OID_VOMS_ACSEQ).value
    assert isinstance(value, x509.UnrecognizedExtension)
    return value.value


def _fake(pki: TestPKI, user: User, out: Path, *extra: str) -> bytes:
    env = {**os.environ, "X509_CERT_DIR": pki.certdir, "X509_VOMS_DIR": pki.vomsdir,
           "HOME": pki.dir}
    subprocess.run(
        ["voms-proxy-fake", "-q", "-rfc", "-cert", user.cert_path, "-key", user.key_path,
         "-hostcert", pki.voms_cert_path, "-hostkey", pki.voms_key_path,
         "-certdir", pki.certdir, "-voms", "dteam", "-uri", f"{pki.voms_host}:15000",
         *extra, "-out", str(out)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL, env=env, timeout=60,
    )  # fmt: skip
    return out.read_bytes()


#: voms-proxy-fake option sets, each shaping the AC differently (-target crashes Debian's)
FAKE_OPTIONS = {
    "plain": ["-fqan", DTEAM],
    "three-fqans": ["-fqan", PROD, "-fqan", DTEAM, "-fqan", PILOT],
    "generic-attributes": ["-fqan", DTEAM, "-ga", "nick=alice", "-ga", "site=x (ctx)"],
    "new-format": ["-fqan", DTEAM, "-newformat"],
    "ac-lifetime": ["-fqan", DTEAM, "-vomslife", "3"],
    "ac-in-the-past": ["-fqan", DTEAM, "-pastac", "0:30"],
    "ac-extension": ["-fqan", DTEAM, "-acextension", "1.2.3.4.5:hello"],
    "limited-proxy": ["-fqan", DTEAM, "-limited", "-path-length", "2"],
}


@pytest.fixture(scope="module")
def fake_vectors(pki: TestPKI, users: dict[str, User],
                 tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    if shutil.which("voms-proxy-fake") is None:
        pytest.skip("voms-proxy-fake is not installed (Debian package voms-clients)")
    out = tmp_path_factory.mktemp("fake")
    return {name: _fake(pki, users["jurgen"], out / f"{name}.pem", *options)
            for name, options in FAKE_OPTIONS.items()}


@pytest.fixture(scope="module")
def kit_vectors(pki: TestPKI, users: dict[str, User]) -> dict[str, bytes]:
    alice, bob = users["alice"], users["bob"]
    made = {
        "one": pki.proxy(alice, fqans=[DTEAM]),
        "order": pki.proxy(alice, fqans=[PROD, DTEAM, PILOT]),
        "atlas": pki.proxy(bob, vo="atlas", fqans=["/atlas/Role=pilot/Capability=NULL"]),
        "utf8-fqan": pki.proxy(alice, fqans=["/dteam/Grüppe/Role=NULL/Capability=NULL"]),
        "forged": pki.proxy(alice, fqans=[DTEAM], ac_forged=True),
        "other-holder": pki.proxy(alice, fqans=[DTEAM], ac_holder=bob),
        "rogue-host": pki.proxy(alice, fqans=[DTEAM], ac_voms_host="voms.rogue.org"),
        "expired": pki.proxy(alice, fqans=[DTEAM], ac_lifetime=timedelta(hours=1),
                             ac_not_before=datetime.now(UTC) - timedelta(days=1)),
    }
    return {name: Path(path).read_bytes() for name, path in made.items()}


def _acs(vectors: dict[str, bytes]) -> list[tuple[str, bytes]]:
    return [(name, raw) for name, pem in vectors.items()
            for raw in split_acs(_extension(pem))]


# -- agreement on every vector ---------------------------------------------------------------


def _agree(raw: bytes) -> ACFields:
    ours = decode_ac(raw)
    assert fields(ours) == oracle(raw)
    return ours


def test_walker_reads_test_pki_acs_like_pyasn1(kit_vectors: dict[str, bytes]) -> None:
    seen = {name: _agree(raw) for name, raw in _acs(kit_vectors)}
    assert seen["order"].fqans == (PROD, DTEAM, PILOT)
    assert seen["utf8-fqan"].fqans == ("/dteam/Grüppe/Role=NULL/Capability=NULL",)
    assert seen["atlas"].authority == "atlas://voms.example.org:15000"
    assert seen["rogue-host"].authority == "dteam://voms.rogue.org:15000"
    assert seen["other-holder"].holder_issuer == "/DC=org/DC=example/CN=Test CA"


def test_walker_reads_voms_proxy_fake_acs_like_pyasn1(
        fake_vectors: dict[str, bytes], pki: TestPKI, users: dict[str, User]) -> None:
    jurgen = users["jurgen"].cert
    for name, raw in _acs(fake_vectors):
        ours = _agree(raw)
        assert ours.issuer == pki.voms_dn, name
        assert ours.holder_serial == jurgen.serial_number, name
        assert ours.authority == f"dteam://{pki.voms_host}:15000", name
        # the signed bytes are the proxy's own: the VOMS server's signature verifies on them
        signer = x509.load_der_x509_certificate(ours.certs_der[0])
        assert signer == pki.voms_cert
        assert voms._signature_ok(voms._parse_one(raw), signer), name
    by_name = dict(_acs(fake_vectors))
    assert decode_ac(by_name["three-fqans"]).fqans == (PROD, DTEAM, PILOT)


def test_voms_proxy_fake_proxies_verify_with_the_fqans_voms_proxy_info_reads(
        fake_vectors: dict[str, bytes], pki: TestPKI, tmp_path: Path) -> None:
    """End to end: every voms-proxy-fake shape verifies, and our FQANs are the ones the C
    VOMS library reports (voms-proxy-info lists generic attributes too: those are skipped)."""
    trust = TrustStore(pki.certdir, pki.vomsdir)
    env = {**os.environ, "X509_CERT_DIR": pki.certdir, "X509_VOMS_DIR": pki.vomsdir}
    for name, pem in fake_vectors.items():
        cred = verify_credential(load_pem(pem), trust)
        path = tmp_path / f"{name}.pem"
        path.write_bytes(pem)
        proc = subprocess.run(["voms-proxy-info", "--all", "--file", str(path)],
                              capture_output=True, text=True, env=env, timeout=60)
        listed = [line.split(":", 1)[1].strip() for line in proc.stdout.splitlines()
                  if line.startswith("attribute :") and " = " not in line]
        assert listed == list(cred.fqans), name


def test_walker_keeps_the_signed_bytes_exact(kit_vectors: dict[str, bytes]) -> None:
    """acinfo is sliced out of the proxy, never re-encoded: the good AC's signature verifies
    over it and the forged one's does not, on the same code path."""
    raw = dict(_acs(kit_vectors))
    for name, good in (("one", True), ("forged", False)):
        ours = decode_ac(raw[name])
        start = read_tlv(raw[name], 0)[1]
        assert raw[name][start : start + len(ours.acinfo_der)] == ours.acinfo_der
        signer = x509.load_der_x509_certificate(ours.certs_der[0])
        assert voms._signature_ok(voms._parse_one(raw[name]), signer) is good


# -- fuzzing: truncations, bit flips, byte edits ---------------------------------------------


def _mutations(raw: bytes, rng: random.Random) -> list[bytes]:
    out = [raw[:cut] for cut in sorted({*range(0, 64), *rng.sample(range(len(raw)), 60)})]
    for _ in range(250):
        pos, bit = rng.randrange(len(raw)), 1 << rng.randrange(8)
        out.append(raw[:pos] + bytes([raw[pos] ^ bit]) + raw[pos + 1 :])
    for _ in range(100):
        pos = rng.randrange(len(raw))
        out.append(raw[:pos] + bytes([rng.randrange(256)]) + raw[pos + 1 :])
    for _ in range(40):
        pos = rng.randrange(len(raw))
        out.append(raw[:pos] + raw[pos + 1 :])
        out.append(raw[:pos] + bytes([rng.randrange(256)]) + raw[pos:])
    # lengths that claim more than there is, and the longest length forms
    out.append(raw[:1] + b"\x84\xff\xff\xff\xff" + raw[2:])
    out.append(raw[:1] + b"\x80" + raw[2:])
    return out


def _oracle_accepts(raw: bytes) -> dict[str, Any] | None:
    try:
        return oracle(raw)
    except Exception:  # pyasn1 refuses in many ways; any of them is a refusal here
        return None


def test_walker_fuzzed_acs_read_like_pyasn1_or_are_malformed(
        kit_vectors: dict[str, bytes], fake_vectors: dict[str, bytes]) -> None:
    rng = random.Random(20240518)
    accepted = refused = 0
    for name, raw in _acs({**kit_vectors, **fake_vectors}):
        for mutated in _mutations(raw, rng):
            start = time.monotonic()
            try:
                ours = decode_ac(mutated)
            except err.ACMalformed as exc:
                assert "\n" not in str(exc)
                refused += 1
                continue
            finally:
                assert time.monotonic() - start < 1.0, f"{name}: the walker took too long"
            accepted += 1
            theirs = _oracle_accepts(mutated)
            assert theirs is not None, f"{name}: the walker accepted what pyasn1 refuses"
            assert fields(ours) == theirs, name
    assert accepted > 500 and refused > 500  # both outcomes were exercised


def test_fuzzed_voms_extensions_never_escape_as_other_errors(
        kit_vectors: dict[str, bytes]) -> None:
    """The whole extension (AC list, embedded certificates) through the parser the
    verifier uses: a CredentialError kind or a parse, nothing else."""
    rng = random.Random(7)
    value = _extension(kit_vectors["order"])
    for mutated in _mutations(value, rng):
        try:
            voms._parse_extension_now(mutated)
        except err.ACMalformed:
            pass


def _proxy_with_extension(pki: TestPKI, user: User, value: bytes) -> bytes:
    """A real RFC 3820 proxy of ``user`` whose VOMS extension is ``value``, signed."""
    now = datetime.now(UTC)
    key = user.key
    subject = x509.Name([*user.cert.subject,
                         x509.NameAttribute(x509.NameOID.COMMON_NAME, "424242")])
    cert = (
        x509.CertificateBuilder().subject_name(subject).issuer_name(user.cert.subject)
        .public_key(key.public_key()).serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1)).not_valid_after(now + timedelta(hours=1))
        .add_extension(pki._proxy_cert_info(False, None), True)
        .add_extension(x509.UnrecognizedExtension(voms.OID_VOMS_ACSEQ, value), False)
        .sign(key, hashes.SHA256())
    )  # fmt: skip
    pem = serialization.Encoding.PEM
    return cert.public_bytes(pem) + user.cert.public_bytes(pem)


def test_verification_refuses_broken_acs_with_a_credential_error(
        pki: TestPKI, users: dict[str, User], kit_vectors: dict[str, bytes]) -> None:
    """Proxies that are fine but for a mangled AC: refused as an AC failure (a Deny), or,
    in C LCMAPS' lenient mode, mapped by DN alone with the reason kept."""
    rng = random.Random(11)
    trust = TrustStore(pki.certdir, pki.vomsdir)
    alice = users["alice"]
    value = _extension(kit_vectors["one"])
    cuts = [value[:n] for n in (0, 2, 5, 40, len(value) // 2, len(value) - 1)]
    flips = []
    for _ in range(12):
        pos = rng.randrange(4, 200)
        flips.append(value[:pos] + bytes([value[pos] ^ 0x40]) + value[pos + 1 :])
    for mutated in [*cuts, *flips]:
        pem = _proxy_with_extension(pki, alice, mutated)
        try:
            cred = verify_credential(load_pem(pem), trust)
        except err.ACInvalid:
            lenient = verify_credential(load_pem(pem), trust, ignore_bad_acs=True)
            assert lenient.fqans == () and lenient.voms_error
        else:  # a flip the AC survives (a value byte): then it must still be the real AC
            assert cred.fqans == (DTEAM,)


def test_real_proxy_file_still_reads(pki: TestPKI, users: dict[str, User]) -> None:
    cred = load_proxy_file(pki.proxy(users["alice"], fqans=[DTEAM, PROD]))
    claims = voms.parse_attributes(cred.chain)
    assert claims[0].fqans == (DTEAM, PROD) and claims[0].vo == "dteam"
