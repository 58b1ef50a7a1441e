"""A throw-away grid PKI for tests, demos and benchmarks.

Makes, in one directory: a CA with a CRL in OpenSSL hashed layout
(``certdir``), a VOMS server with its ``.lsc`` in ``vomsdir``, user and host
certificates, and proxies of every kind the verifier must handle (RFC 3820,
legacy, limited, multi-level, expired, not yet valid, wrongly signed,
path-length violations, VOMS proxies with chosen FQANs in chosen order and
broken ACs). Nothing here is fit for production keys: it exists so every
test runs against real certificates.

    pki = TestPKI(tmpdir)
    alice = pki.user("alice", "/DC=org/DC=example/O=Users/CN=Alice Smith")
    path = pki.proxy(alice, fqans=["/dteam/Role=NULL/Capability=NULL"])
"""

from __future__ import annotations

import os
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID
from pyasn1.codec.der import decoder, encoder
from pyasn1.type import univ, useful
from pyasn1_modules import rfc5280, rfc5755

from credentials import proxy_chain, voms

__all__ = ["Host", "TestPKI", "User", "parse_oneline"]

_ATTRS = {
    "DC": NameOID.DOMAIN_COMPONENT,
    "C": NameOID.COUNTRY_NAME,
    "ST": NameOID.STATE_OR_PROVINCE_NAME,
    "L": NameOID.LOCALITY_NAME,
    "O": NameOID.ORGANIZATION_NAME,
    "OU": NameOID.ORGANIZATIONAL_UNIT_NAME,
    "CN": NameOID.COMMON_NAME,
    "UID": NameOID.USER_ID,
    "emailAddress": NameOID.EMAIL_ADDRESS,
    "serialNumber": NameOID.SERIAL_NUMBER,
}
_SHA256_RSA = univ.ObjectIdentifier("1.2.840.113549.1.1.11")


def parse_oneline(dn: str) -> x509.Name:
    """``/DC=org/CN=Jürgen`` -> Name (plain text values; no escapes, no multi-valued RDNs)."""
    if not dn.startswith("/"):
        raise ValueError(f"DN must start with '/': {dn!r}")
    rdns = []
    for part in dn[1:].split("/"):
        key, sep, value = part.partition("=")
        if not sep or key not in _ATTRS:
            raise ValueError(f"unsupported DN component {part!r}")
        rdns.append(x509.RelativeDistinguishedName([x509.NameAttribute(_ATTRS[key], value)]))
    return x509.Name(rdns)


@dataclass(frozen=True)
class User:
    name: str
    dn: str
    cert_path: str
    key_path: str
    cert: x509.Certificate
    key: rsa.RSAPrivateKey


@dataclass(frozen=True)
class Host:
    hostname: str
    cert_path: str
    key_path: str


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _write(path: str, data: bytes, mode: int = 0o644) -> None:
    tmp = f"{path}.tmp{os.getpid()}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    with os.fdopen(fd, "wb") as fh:
        fh.write(data)
    os.chmod(tmp, mode)
    os.replace(tmp, path)


class TestPKI:
    """A CA, a VOMS server and helpers to issue credentials below them."""

    __test__ = False  # not a pytest test class

    def __init__(
        self,
        directory: str | os.PathLike[str],
        *,
        ca_dn: str = "/DC=org/DC=example/CN=Test CA",
        voms_host: str = "voms.example.org",
        vos: Sequence[str] = ("dteam", "atlas", "cms"),
        key_bits: int = 2048,
        reuse_keys: bool = False,
        now: datetime | None = None,
    ) -> None:
        self.dir = os.fspath(directory)
        self.now = now or datetime.now(UTC)
        self.key_bits = key_bits
        self._shared_key: rsa.RSAPrivateKey | None = None
        self.reuse_keys = reuse_keys
        self.certdir = os.path.join(self.dir, "certificates")
        self.vomsdir = os.path.join(self.dir, "vomsdir")
        os.makedirs(self.certdir, exist_ok=True)
        os.makedirs(self.vomsdir, exist_ok=True)
        self.ca_dn = ca_dn
        self.ca_key = self._new_key(fresh=True)
        self.ca_cert = self._sign(
            parse_oneline(ca_dn), self.ca_key.public_key(), parse_oneline(ca_dn), self.ca_key,
            ca=True, days=3650,
        )
        self.ca_hash = proxy_chain.subject_hash(self.ca_cert)
        _write(os.path.join(self.dir, "ca.pem"), _pem(self.ca_cert))
        _write(os.path.join(self.certdir, self.ca_hash + ".0"), _pem(self.ca_cert))
        _write(
            os.path.join(self.certdir, self.ca_hash + ".signing_policy"),
            f"access_id_CA X509 '{ca_dn}'\npos_rights globus CA:sign\n"
            f"cond_subjects globus '\"/*\"'\n".encode(),
        )
        self._revoked: list[int] = []
        self.write_crl()
        self.voms_host = voms_host
        self.voms_dn = f"/DC=org/DC=example/CN={voms_host}"
        self.voms_key = self._new_key(fresh=True)
        self.voms_cert = self._issue_ee(self.voms_dn, self.voms_key, server=True, days=365)
        os.makedirs(os.path.join(self.dir, "voms"), exist_ok=True)
        self.voms_cert_path = os.path.join(self.dir, "voms", "vomscert.pem")
        self.voms_key_path = os.path.join(self.dir, "voms", "vomskey.pem")
        _write(self.voms_cert_path, _pem(self.voms_cert))
        _write(self.voms_key_path, _key_pem(self.voms_key), 0o600)
        for vo in vos:
            self.trust_vo(vo)

    # -- keys and certificates -------------------------------------------------

    def _new_key(self, fresh: bool = False) -> rsa.RSAPrivateKey:
        if self.reuse_keys and not fresh:
            if self._shared_key is None:
                self._shared_key = rsa.generate_private_key(65537, self.key_bits)
            return self._shared_key
        return rsa.generate_private_key(65537, self.key_bits)

    def _sign(
        self,
        subject: x509.Name,
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
        issuer: x509.Name,
        signing_key: rsa.RSAPrivateKey,
        *,
        ca: bool = False,
        days: float = 365,
        not_before: datetime | None = None,
        extensions: Sequence[tuple[x509.ExtensionType, bool]] = (),
        serial: int | None = None,
    ) -> x509.Certificate:
        start = not_before or (self.now - timedelta(minutes=5))
        builder = (
            x509.CertificateBuilder()
            .subject_name(subject)
            .issuer_name(issuer)
            .public_key(public_key)
            .serial_number(serial or x509.random_serial_number())
            .not_valid_before(start)
            .not_valid_after(start + timedelta(days=days))
        )
        if ca:
            builder = builder.add_extension(x509.BasicConstraints(ca=True, path_length=None), True)
            builder = builder.add_extension(
                x509.KeyUsage(False, False, False, False, False, True, True, False, False), True
            )
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key), False
            )
        if not ca:
            builder = builder.add_extension(
                x509.SubjectKeyIdentifier.from_public_key(public_key), False
            ).add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(signing_key.public_key()),
                False,
            )
        for ext, critical in extensions:
            builder = builder.add_extension(ext, critical)
        return builder.sign(signing_key, hashes.SHA256())

    def _issue_ee(
        self, dn: str, key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, *,
        server: bool = False, days: float = 365, hostname: str | None = None,
        not_before: datetime | None = None,
    ) -> x509.Certificate:
        usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
        if server:
            usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
        exts: list[tuple[x509.ExtensionType, bool]] = [
            (x509.BasicConstraints(ca=False, path_length=None), True),
            (x509.KeyUsage(True, False, True, True, False, False, False, False, False), True),
            (x509.ExtendedKeyUsage(usages), False),
        ]
        if hostname:
            exts.append((x509.SubjectAlternativeName([x509.DNSName(hostname)]), False))
        return self._sign(parse_oneline(dn), key.public_key(), self.ca_cert.subject, self.ca_key,
                          days=days, extensions=exts, not_before=not_before)

    def user(self, name: str, dn: str, *, days: float = 365,
             not_before: datetime | None = None) -> User:
        """An end-entity (user) certificate and its key, in ``<dir>/<name>/``."""
        home = os.path.join(self.dir, name)
        os.makedirs(home, exist_ok=True)
        key = self._new_key()
        cert = self._issue_ee(dn, key, days=days, not_before=not_before)
        cert_path, key_path = os.path.join(home, "usercert.pem"), os.path.join(home, "userkey.pem")
        _write(cert_path, _pem(cert))
        _write(key_path, _key_pem(key), 0o600)
        return User(name, dn, cert_path, key_path, cert, key)

    def host(self, hostname: str, dn: str | None = None, *, key_type: str = "rsa") -> Host:
        """A host certificate (serverAuth + clientAuth, DNS SAN) for TLS tests.

        ``key_type="ec"`` gives a P-256 key, to compare TLS handshake costs with RSA.
        """
        home = os.path.join(self.dir, "hosts", hostname)
        os.makedirs(home, exist_ok=True)
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
        if key_type == "ec":
            key = ec.generate_private_key(ec.SECP256R1())
        elif key_type == "rsa":
            key = self._new_key(fresh=True)
        else:
            raise ValueError(f"key_type must be rsa or ec, not {key_type!r}")
        cert = self._issue_ee(dn or f"/DC=org/DC=example/CN={hostname}", key, server=True,
                              hostname=hostname)
        cert_path, key_path = os.path.join(home, "hostcert.pem"), os.path.join(home, "hostkey.pem")
        _write(cert_path, _pem(cert))
        _write(key_path, _key_pem(key), 0o600)
        return Host(hostname, cert_path, key_path)

    # -- revocation and VOMS trust ---------------------------------------------

    def write_crl(self, *, next_update: datetime | None = None) -> str:
        """(Re)write the CA's CRL; a ``next_update`` in the past makes it out of date."""
        next_update = next_update or self.now + timedelta(days=30)
        last_update = min(self.now - timedelta(minutes=5), next_update - timedelta(hours=1))
        builder = (
            x509.CertificateRevocationListBuilder()
            .issuer_name(self.ca_cert.subject)
            .last_update(last_update)
            .next_update(next_update)
        )
        for serial in self._revoked:
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial)
                .revocation_date(self.now - timedelta(minutes=1)).build()
            )
        crl = builder.sign(self.ca_key, hashes.SHA256())
        path = os.path.join(self.certdir, self.ca_hash + ".r0")
        _write(path, crl.public_bytes(serialization.Encoding.PEM))
        return path

    def revoke(self, cert: x509.Certificate) -> None:
        self._revoked.append(cert.serial_number)
        self.write_crl()

    def trust_vo(self, vo: str) -> str:
        """Write ``vomsdir/<vo>/<host>.lsc`` naming this PKI's VOMS server."""
        os.makedirs(os.path.join(self.vomsdir, vo), exist_ok=True)
        path = os.path.join(self.vomsdir, vo, self.voms_host + ".lsc")
        _write(path, f"{self.voms_dn}\n{self.ca_dn}\n".encode())
        return path

    # -- proxies -----------------------------------------------------------------

    def proxy(
        self,
        user: User,
        *,
        out: str | None = None,
        fqans: Sequence[str] = (),
        vo: str = "dteam",
        limited: bool = False,
        legacy: bool = False,
        lifetime: timedelta = timedelta(hours=12),
        not_before: datetime | None = None,
        path_len: int | None = None,
        parent: str | None = None,
        wrong_key: bool = False,
        ac_lifetime: timedelta = timedelta(hours=12),
        ac_not_before: datetime | None = None,
        ac_forged: bool = False,
        ac_holder: User | None = None,
        ac_voms_host: str | None = None,
    ) -> str:
        """Write a proxy file (proxy cert, its key, then the chain) and return its path.

        ``parent`` (a proxy file) makes a proxy of a proxy; ``wrong_key`` signs
        with a key other than the issuer's; the ``ac_*`` options break the VOMS
        AC in one chosen way each.
        """
        if parent is not None:
            with open(parent, "rb") as fh:
                data = fh.read()
            chain = x509.load_pem_x509_certificates(data)
            issuer_key = serialization.load_pem_private_key(data, password=None)
            assert isinstance(issuer_key, rsa.RSAPrivateKey)
        else:
            chain, issuer_key = [user.cert], user.key
        issuer_cert = chain[0]
        key = self._new_key()
        start = not_before or (self.now - timedelta(minutes=5))
        if legacy:
            cn = "limited proxy" if limited else "proxy"
            exts: list[tuple[x509.ExtensionType, bool]] = []
        else:
            cn = str(secrets.randbelow(2**31))
            exts = [(self._proxy_cert_info(limited, path_len), True)]
        exts.append(
            (x509.KeyUsage(True, False, True, True, False, False, False, False, False), True)
        )
        if fqans:
            exts.append((self._voms_extension(
                ac_holder.cert if ac_holder else user.cert, vo, fqans,
                lifetime=ac_lifetime, not_before=ac_not_before, forged=ac_forged,
                voms_host=ac_voms_host), False))
        subject = x509.Name([
            *issuer_cert.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        ])
        signer = self._new_key(fresh=True) if wrong_key else issuer_key
        cert = self._sign(
            subject, key.public_key(), issuer_cert.subject, signer,
            days=lifetime.total_seconds() / 86400, not_before=start, extensions=exts,
        )
        path = out or os.path.join(self.dir, user.name, f"proxy-{secrets.token_hex(4)}.pem")
        blob = _pem(cert) + _key_pem(key) + b"".join(_pem(c) for c in chain)
        _write(path, blob, 0o600)
        return path

    @staticmethod
    def _proxy_cert_info(limited: bool, path_len: int | None) -> x509.UnrecognizedExtension:
        language = (
            proxy_chain.OID_POLICY_LIMITED if limited else proxy_chain.OID_POLICY_INHERIT_ALL
        )
        policy = univ.Sequence()
        policy.setComponentByPosition(0, univ.ObjectIdentifier(language))
        body = b""
        if path_len is not None:
            body += encoder.encode(univ.Integer(path_len))
        body += encoder.encode(policy)
        der = b"\x30" + _der_len(len(body)) + body
        return x509.UnrecognizedExtension(proxy_chain.OID_PROXY_CERT_INFO, der)

    def _ac_certs_value(self) -> bytes:
        """Built once per VOMS certificate: re-encoding it was most of a proxy's cost."""
        cached = getattr(self, "_ac_certs_cache", None)
        if cached is None or cached[0] is not self.voms_cert:
            cached = (self.voms_cert, _ac_certs_der(self.voms_cert))
            self._ac_certs_cache = cached
        return cached[1]

    def _voms_extension(
        self, holder: x509.Certificate, vo: str, fqans: Sequence[str], *,
        lifetime: timedelta, not_before: datetime | None, forged: bool, voms_host: str | None,
    ) -> x509.UnrecognizedExtension:
        host = voms_host or self.voms_host
        info = rfc5755.AttributeCertificateInfo()
        info["version"] = 1
        bci = info["holder"]["baseCertificateID"]
        _set_dn(bci["issuer"], holder.issuer)
        bci["serial"] = holder.serial_number
        _set_dn(info["issuer"]["v2Form"]["issuerName"], self.voms_cert.subject)
        info["signature"]["algorithm"] = _SHA256_RSA
        info["signature"]["parameters"] = univ.Null("")
        info["serialNumber"] = secrets.randbelow(2**63)
        start = not_before or (self.now - timedelta(minutes=5))
        period = info["attrCertValidityPeriod"]
        period["notBeforeTime"] = useful.GeneralizedTime(start.strftime("%Y%m%d%H%M%SZ"))
        period["notAfterTime"] = useful.GeneralizedTime(
            (start + lifetime).strftime("%Y%m%d%H%M%SZ"))
        syntax = rfc5755.IetfAttrSyntax()
        authority = syntax["policyAuthority"]
        authority[0]["uniformResourceIdentifier"] = f"{vo}://{host}:15000"
        for i, fqan in enumerate(fqans):
            syntax["values"][i]["octets"] = fqan.encode()
        attribute = info["attributes"][0]
        attribute["type"] = voms.OID_FQAN
        attribute["values"][0] = univ.Any(encoder.encode(syntax))
        certs_ext = info["extensions"][0]
        certs_ext["extnID"] = voms.OID_AC_CERTS
        certs_ext["critical"] = False
        certs_ext["extnValue"] = univ.OctetString(self._ac_certs_value())
        # The C VOMS library refuses ACs without these two, as real servers write them.
        no_rev = info["extensions"][1]
        no_rev["extnID"] = univ.ObjectIdentifier("2.5.29.56")
        no_rev["critical"] = False
        no_rev["extnValue"] = univ.OctetString(encoder.encode(univ.Null("")))
        aki = info["extensions"][2]
        aki["extnID"] = univ.ObjectIdentifier("2.5.29.35")
        aki["critical"] = False
        key_id = x509.SubjectKeyIdentifier.from_public_key(self.voms_cert.public_key()).digest
        aki["extnValue"] = univ.OctetString(b"\x30" + _der_len(len(key_id) + 2) + b"\x80"
                                            + _der_len(len(key_id)) + key_id)
        tbs = encoder.encode(info)
        signer = self._new_key(fresh=True) if forged else self.voms_key
        signature = signer.sign(tbs, padding.PKCS1v15(), hashes.SHA256())
        ac = rfc5755.AttributeCertificate()
        ac["acinfo"] = info
        ac["signatureAlgorithm"]["algorithm"] = _SHA256_RSA
        ac["signatureAlgorithm"]["parameters"] = univ.Null("")
        ac["signatureValue"] = univ.BitString.fromOctetString(signature)
        ac_der = encoder.encode(ac)
        inner = b"\x30" + _der_len(len(ac_der)) + ac_der
        outer = b"\x30" + _der_len(len(inner)) + inner
        return x509.UnrecognizedExtension(voms.OID_VOMS_ACSEQ, outer)


def _ac_certs_der(cert: x509.Certificate) -> bytes:
    """The AC's certificate-list extension value: VOMS nests the list in one more SEQUENCE."""
    der = cert.public_bytes(serialization.Encoding.DER)
    listed = b"\x30" + _der_len(len(der)) + der
    return b"\x30" + _der_len(len(listed)) + listed


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _set_dn(general_names: univ.SequenceOf, name: x509.Name) -> None:
    decoded, _ = decoder.decode(name.public_bytes(), asn1Spec=rfc5280.Name())
    general_names[0]["directoryName"]["rdnSequence"] = decoded["rdnSequence"]
