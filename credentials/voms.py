"""VOMS attribute certificates: find them in a proxy, read the FQANs, verify them.

A VOMS proxy carries, in extension ``1.3.6.1.4.1.8005.100.100.5``, a
SEQUENCE OF SEQUENCE OF AttributeCertificate (RFC 5755). Each AC names its
VO in the FQAN attribute's policy authority (``vo://host:port``) and
usually embeds the VOMS server's certificate chain. Trust comes from the
vomsdir exactly as the C VOMS library arranges it: ``<vo>/<host>.lsc``
lists the expected subject/issuer DN chain of the signer, or a plain
certificate file in ``<vo>/`` or the vomsdir root is the signer itself.

Decoding ACs with pyasn1 costs milliseconds, so results are cached by the
extension's bytes; verification (signature, holder, time) runs every call.
"""

from __future__ import annotations

import glob
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import univ
from pyasn1_modules import rfc5755

from credentials import proxy_chain
from credentials.dn import oneline, oneline_from_der, read_tlv
from credentials.errors import (
    ACExpired,
    ACHolderMismatch,
    ACMalformed,
    ACNotYetValid,
    ACSignatureInvalid,
    ACUntrusted,
    CredentialError,
)

__all__ = ["VomsAttributes", "parse_attributes", "verified_attributes"]

OID_VOMS_ACSEQ = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
OID_FQAN = univ.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.4")
OID_AC_CERTS = univ.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.10")

_SIG_HASHES: dict[str, hashes.HashAlgorithm] = {
    "1.2.840.113549.1.1.5": hashes.SHA1(),
    "1.2.840.113549.1.1.11": hashes.SHA256(),
    "1.2.840.113549.1.1.12": hashes.SHA384(),
    "1.2.840.113549.1.1.13": hashes.SHA512(),
    "1.2.840.10045.4.3.2": hashes.SHA256(),
    "1.2.840.10045.4.3.3": hashes.SHA384(),
    "1.2.840.10045.4.3.4": hashes.SHA512(),
}


@dataclass(frozen=True)
class VomsAttributes:
    """What one AC says. ``server_issuer`` is empty when the AC embeds no certificate."""

    vo: str
    fqans: tuple[str, ...]
    not_before: datetime
    not_after: datetime
    server_subject: str
    server_issuer: str
    uri: str
    serial: int


@dataclass(frozen=True)
class _ParsedAC:
    attrs: VomsAttributes
    host: str
    acinfo_der: bytes
    signature: bytes
    sig_oid: str
    holder_issuer: str
    holder_serial: int | None
    certs: tuple[x509.Certificate, ...]


def _general_name_dn(names: univ.SequenceOf) -> str:
    for gn in names:
        if gn.getName() == "directoryName":
            return oneline_from_der(encoder.encode(gn["directoryName"]["rdnSequence"]))
    return ""


def _time(value: univ.Any) -> datetime:
    return value.asDateTime.astimezone(UTC)


def _fqans(attributes: univ.SequenceOf) -> tuple[str, tuple[str, ...]]:
    for attribute in attributes:
        if attribute["type"] != OID_FQAN:
            continue
        for raw in attribute["values"]:
            syntax, _ = decoder.decode(bytes(raw), asn1Spec=rfc5755.IetfAttrSyntax())
            authority = ""
            if syntax["policyAuthority"].isValue:
                for gn in syntax["policyAuthority"]:
                    if gn.getName() == "uniformResourceIdentifier":
                        authority = str(gn["uniformResourceIdentifier"])
            values = []
            for choice in syntax["values"]:
                kind = choice.getName()
                item = choice[kind]
                values.append(bytes(item).decode("utf-8", "replace") if kind == "octets"
                              else str(item))
            return authority, tuple(values)
    raise ACMalformed("VOMS AC has no FQAN attribute")


def _embedded_certs(info: univ.Sequence) -> tuple[x509.Certificate, ...]:
    if not info["extensions"].isValue:
        return ()
    for ext in info["extensions"]:
        if ext["extnID"] == OID_AC_CERTS:
            return _split_certs(bytes(ext["extnValue"]))
    return ()


def _is_certificate(value: bytes, pos: int) -> bool:
    """A Certificate is SEQUENCE { tbsCertificate SEQUENCE { [0] version | serial ...} ...}."""
    tag, body, _ = read_tlv(value, pos)
    if tag != 0x30:
        return False
    tbs_tag, tbs_body, _ = read_tlv(value, body)
    return tbs_tag == 0x30 and value[tbs_body] in (0xA0, 0x02)


def _split_certs(value: bytes) -> tuple[x509.Certificate, ...]:
    """VOMS writes SEQUENCE { SEQUENCE OF Certificate }; accept the bare list too."""
    _, pos, end = read_tlv(value, 0)
    if pos < end and not _is_certificate(value, pos):
        _, pos, end = read_tlv(value, pos)  # step into the nested list
    certs = []
    while pos < end:
        _, _, stop = read_tlv(value, pos)
        certs.append(x509.load_der_x509_certificate(value[pos:stop]))
        pos = stop
    return tuple(certs)


def _parse_one(ac: univ.Sequence, raw_ac: bytes) -> _ParsedAC:
    info = ac["acinfo"]
    _, body, _ = read_tlv(raw_ac, 0)
    _, _, stop = read_tlv(raw_ac, body)
    acinfo_der = raw_ac[body:stop]  # the signed bytes exactly as the VOMS server wrote them
    authority, fqans = _fqans(info["attributes"])
    vo, sep, hostport = authority.partition("://")
    if not sep or not vo:
        raise ACMalformed(f"VOMS AC policy authority {authority!r} is not vo://host:port")
    issuer = info["issuer"]
    issuer_names = issuer["v2Form"]["issuerName"] if issuer.getName() == "v2Form" \
        else issuer["v1Form"]
    holder = info["holder"]
    holder_issuer, holder_serial = "", None
    if holder["baseCertificateID"].isValue:
        holder_issuer = _general_name_dn(holder["baseCertificateID"]["issuer"])
        holder_serial = int(holder["baseCertificateID"]["serial"])
    certs = _embedded_certs(info)
    period = info["attrCertValidityPeriod"]
    attrs = VomsAttributes(
        vo=vo,
        fqans=fqans,
        not_before=_time(period["notBeforeTime"]),
        not_after=_time(period["notAfterTime"]),
        server_subject=_general_name_dn(issuer_names),
        server_issuer=oneline(certs[0].issuer) if certs else "",
        uri=hostport,
        serial=int(info["serialNumber"]),
    )
    return _ParsedAC(
        attrs=attrs,
        host=hostport.rsplit(":", 1)[0],
        acinfo_der=acinfo_der,
        signature=ac["signatureValue"].asOctets(),
        sig_oid=str(ac["signatureAlgorithm"]["algorithm"]),
        holder_issuer=holder_issuer,
        holder_serial=holder_serial,
        certs=certs,
    )


def _raw_acs(value: bytes) -> list[bytes]:
    """Split SEQUENCE OF SEQUENCE OF AC into each AC's original DER."""
    tag, pos, end = read_tlv(value, 0)
    if tag != 0x30 or end != len(value):
        raise ACMalformed("VOMS extension is not one SEQUENCE")
    found = []
    while pos < end:
        tag, inner, inner_end = read_tlv(value, pos)
        if tag != 0x30:
            raise ACMalformed("VOMS extension holds a non-SEQUENCE")
        while inner < inner_end:
            _, _, ac_end = read_tlv(value, inner)
            found.append(value[inner:ac_end])
            inner = ac_end
        pos = inner_end
    return found


#: VOMS extensions up to this size are remembered (a real one is 2-8 KiB); larger ones,
#: which only a user signing odd proxies sends, are parsed every time, so the cache stays
#: under 1024 x 16 KiB whatever callers send
_CACHED_EXTENSION = 16 * 1024


def _parse_extension(value: bytes) -> tuple[_ParsedAC, ...]:
    if len(value) <= _CACHED_EXTENSION:
        return _parse_extension_cached(value)
    return _parse_extension_now(value)


@lru_cache(maxsize=1024)
def _parse_extension_cached(value: bytes) -> tuple[_ParsedAC, ...]:
    return _parse_extension_now(value)


def _parse_extension_now(value: bytes) -> tuple[_ParsedAC, ...]:
    try:
        parsed = []
        for raw_ac in _raw_acs(value):
            ac, rest = decoder.decode(raw_ac, asn1Spec=rfc5755.AttributeCertificate())
            if rest:
                raise ACMalformed("trailing bytes after a VOMS AC")
            parsed.append(_parse_one(ac, raw_ac))
        return tuple(parsed)
    except (PyAsn1Error, ValueError, KeyError) as exc:
        raise ACMalformed(f"VOMS extension cannot be decoded: {exc}".splitlines()[0]) from None


def _find_acs(chain: Sequence[x509.Certificate]) -> tuple[_ParsedAC, ...]:
    """The ACs of the proxy nearest the leaf that carries any (as the VOMS library does)."""
    for cert in chain:
        try:
            ext = cert.extensions.get_extension_for_oid(OID_VOMS_ACSEQ)
        except x509.ExtensionNotFound:
            continue
        value = ext.value
        if isinstance(value, x509.UnrecognizedExtension):
            return _parse_extension(value.value)
    return ()


def parse_attributes(chain: Sequence[x509.Certificate]) -> tuple[VomsAttributes, ...]:
    """The ACs' claims, unverified: for display, never for authorization."""
    return tuple(p.attrs for p in _find_acs(chain))


def _signature_ok(parsed: _ParsedAC, cert: x509.Certificate) -> bool:
    hash_alg = _SIG_HASHES.get(parsed.sig_oid)
    if hash_alg is None:
        raise ACSignatureInvalid(f"VOMS AC signature algorithm {parsed.sig_oid} is not accepted")
    key = cert.public_key()
    try:
        if isinstance(key, rsa.RSAPublicKey):
            key.verify(parsed.signature, parsed.acinfo_der, padding.PKCS1v15(), hash_alg)
        elif isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(parsed.signature, parsed.acinfo_der, ec.ECDSA(hash_alg))
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _lsc_chains(path: str) -> list[list[str]]:
    chains: list[list[str]] = [[]]
    with open(path, encoding="utf-8", errors="surrogateescape") as fh:
        for line in fh:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            if line.startswith("-"):
                chains.append([])
                continue
            chains[-1].append(line)
    return [c for c in chains if c]


@lru_cache(maxsize=256)
def _load_cert_file(path: str, mtime_ns: int) -> tuple[x509.Certificate, ...]:
    with open(path, "rb") as fh:
        return tuple(x509.load_pem_x509_certificates(fh.read()))


def _signer(parsed: _ParsedAC, vomsdir: str, certdir: str, now: datetime) -> x509.Certificate:
    vo, host = parsed.attrs.vo, parsed.host
    lsc = os.path.join(vomsdir, vo, host + ".lsc")
    if os.path.isfile(lsc):
        if not parsed.certs:
            raise ACUntrusted(f"VOMS AC for {vo} embeds no certificate to match {lsc}")
        dns = [oneline(parsed.certs[0].subject)] + [oneline(c.issuer) for c in parsed.certs]
        if not any(dns[: len(chain)] == chain for chain in _lsc_chains(lsc)):
            raise ACUntrusted(f"VOMS server {dns[0]} does not match {lsc}")
        try:
            proxy_chain.verify_chain(parsed.certs, 0, certdir, now=now,
                                     policy=proxy_chain.ProxyPolicy())
        except CredentialError as exc:
            raise ACUntrusted(f"VOMS server certificate not trusted: {exc.reason}") from None
        return parsed.certs[0]
    candidates = sorted(glob.glob(os.path.join(vomsdir, vo, "*"))) + sorted(
        p for p in glob.glob(os.path.join(vomsdir, "*")) if os.path.isfile(p)
    )
    for path in candidates:
        if path.endswith(".lsc"):
            continue
        try:
            certs = _load_cert_file(path, os.stat(path).st_mtime_ns)
        except (OSError, ValueError):
            continue
        for cert in certs:
            named = oneline(cert.subject) == parsed.attrs.server_subject
            if named and _signature_ok(parsed, cert):
                if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
                    raise ACUntrusted(f"VOMS server certificate {path} is outside its validity")
                return cert
    raise ACUntrusted(
        f"no {vo}/{host}.lsc or certificate in {vomsdir} vouches for VOMS server "
        f"{parsed.attrs.server_subject} of VO {vo}"
    )


def verified_attributes(
    chain: Sequence[x509.Certificate],
    ee_index: int,
    vomsdir: str,
    certdir: str,
    *,
    now: datetime,
) -> tuple[VomsAttributes, ...]:
    """Verify every AC in the proxy; any bad AC fails the whole credential (as C LCMAPS does)."""
    parsed_acs = _find_acs(chain[:ee_index])
    ee = chain[ee_index]
    ee_issuer = oneline(ee.issuer)
    for parsed in parsed_acs:
        attrs = parsed.attrs
        # The C VOMS library accepts the EE's subject or issuer in the holder's
        # issuer field (voms-proxy-fake writes the subject); the serial must match.
        holder_names = (ee_issuer, oneline(ee.subject))
        if parsed.holder_serial != ee.serial_number or parsed.holder_issuer not in holder_names:
            raise ACHolderMismatch(
                f"VOMS AC for {attrs.vo} was issued to another certificate "
                f"(holder {parsed.holder_issuer} serial {parsed.holder_serial})"
            )
        if now < attrs.not_before:
            raise ACNotYetValid(
                f"VOMS AC for {attrs.vo} is not valid before {attrs.not_before:%Y-%m-%d %H:%M:%S}Z"
            )
        if now > attrs.not_after:
            raise ACExpired(
                f"VOMS AC for {attrs.vo} expired at {attrs.not_after:%Y-%m-%d %H:%M:%S}Z"
            )
        signer = _signer(parsed, vomsdir, certdir, now)
        if not _signature_ok(parsed, signer):
            raise ACSignatureInvalid(
                f"VOMS AC for {attrs.vo} is not signed by {oneline(signer.subject)}"
            )
    return tuple(p.attrs for p in parsed_acs)

