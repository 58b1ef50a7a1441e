"""A small DER walker for VOMS attribute certificates (RFC 5755), over the bytes at hand.

Decoding an AC with a general ASN.1 library cost more than every signature a decision
checks; this reads exactly the fields :mod:`credentials.voms` needs and checks the
structure of the rest, in one pass over the proxy extension's bytes. The signed
``acinfo`` is a slice of the input, never a re-encoding, so the signature is checked
over the bytes the VOMS server signed.

Stricter than BER on purpose, and never laxer than pyasn1's ``rfc5755`` reading it
replaced (the tests hold it to that on fuzzed ACs): definite lengths only (at most 4
length octets), no high tag numbers, every element inside its container, no trailing
bytes in any SEQUENCE read here, every OBJECT IDENTIFIER well formed, names checked
RDN by RDN, times in DER's ``YYYYMMDDHHMMSS[.f]Z`` form, the signature BIT STRING with
no unused bits, the issuer in the v2Form RFC 5755 requires, GeneralNames only in the
forms that carry names, no objectDigestInfo holder or issuer (VOMS writes none of
these). Anything else is :class:`~credentials.errors.ACMalformed` with a one-line
reason; no other exception leaves :func:`decode_ac`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import lru_cache

from credentials.dn import DNError, oid_to_dotted, oneline_from_der
from credentials.errors import ACMalformed

__all__ = ["ACFields", "decode_ac", "split_acs", "split_certificates"]

OID_FQAN = "1.3.6.1.4.1.8005.100.100.4"
OID_AC_CERTS = "1.3.6.1.4.1.8005.100.100.10"

_SEQ, _SET, _INT, _BITS, _OCTETS, _OID, _BOOL = 0x30, 0x31, 0x02, 0x03, 0x04, 0x06, 0x01
_UTF8, _GENTIME = 0x0C, 0x18
_DIRECTORY_NAME, _URI, _REGISTERED_ID = 0xA4, 0x86, 0x88
#: GeneralName forms read (RFC 5280): rfc822Name, dNSName, directoryName, URI, iPAddress,
#: registeredID
_GENERAL_NAME_TAGS = frozenset({0x81, 0x82, 0xA4, 0x86, 0x87, 0x88})
_TIME = re.compile(rb"[0-9]{14}(?:\.([0-9]{1,6}))?Z")


@dataclass(frozen=True)
class ACFields:
    """What one AC says, as read (nothing here is verified).

    Names are the first ``directoryName`` in OpenSSL one-line form (empty if none);
    ``authority`` is the last URI of the FQAN attribute's policy authority; ``certs_der``
    the certificates of the AC-certs extension (the VOMS server's chain), in order.
    """

    acinfo_der: bytes
    sig_oid: str
    signature: bytes
    holder_issuer: str
    holder_serial: int | None
    issuer: str
    serial: int
    not_before: datetime
    not_after: datetime
    authority: str
    fqans: tuple[str, ...]
    certs_der: tuple[bytes, ...]


def _tlv(buf: bytes, pos: int, end: int, what: str) -> tuple[int, int, int]:
    """(tag, content start, content end) of the element at ``pos``, inside ``[pos, end)``."""
    if pos + 2 > end:
        raise ACMalformed(f"VOMS AC: {what} is truncated")
    tag, length = buf[pos], buf[pos + 1]
    if tag & 0x1F == 0x1F:
        raise ACMalformed(f"VOMS AC: {what} uses a high tag number")
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > end:
            raise ACMalformed(f"VOMS AC: {what} has a bad length")
        length = int.from_bytes(buf[pos : pos + count], "big")
        pos += count
    stop = pos + length
    if stop > end:
        raise ACMalformed(f"VOMS AC: {what} runs past its container")
    return tag, pos, stop


def _expect(buf: bytes, pos: int, end: int, tag: int, what: str) -> tuple[int, int]:
    """(content start, content end) of the element at ``pos``, which must be a ``tag``
    (the common short-length case inline: this runs some fifty times per AC)."""
    if pos + 2 <= end and buf[pos] == tag and buf[pos + 1] < 0x80:
        stop = pos + 2 + buf[pos + 1]
        if stop <= end:
            return pos + 2, stop
    got, start, stop = _tlv(buf, pos, end, what)
    if got != tag:
        raise ACMalformed(f"VOMS AC: {what} has tag 0x{got:02x}, expected 0x{tag:02x}")
    return start, stop


def _done(pos: int, end: int, what: str) -> None:
    if pos != end:
        raise ACMalformed(f"VOMS AC: trailing bytes in {what}")


def _integer(buf: bytes, start: int, stop: int, what: str) -> int:
    if start == stop:
        raise ACMalformed(f"VOMS AC: {what} is an empty INTEGER")
    return int.from_bytes(buf[start:stop], "big", signed=True)


def _oid(buf: bytes, start: int, stop: int, what: str) -> str:
    try:
        return oid_to_dotted(buf[start:stop])
    except DNError as exc:
        raise ACMalformed(f"VOMS AC: {what}: {exc}") from None


def _time(buf: bytes, start: int, stop: int, what: str) -> datetime:
    text = buf[start:stop]
    match = _TIME.fullmatch(text)
    if match is None:
        raise ACMalformed(f"VOMS AC: {what} is not a DER GeneralizedTime")
    fraction = match.group(1)
    try:
        return datetime(int(text[0:4]), int(text[4:6]), int(text[6:8]), int(text[8:10]),
                        int(text[10:12]), int(text[12:14]),
                        int(fraction.ljust(6, b"0")) if fraction else 0, tzinfo=UTC)
    except ValueError as exc:
        raise ACMalformed(f"VOMS AC: {what} is not a valid time ({exc})") from None


def _bits(buf: bytes, start: int, stop: int, what: str) -> None:
    """A BIT STRING's content: the unused-bits octet (0-7, 0 when empty) and the bits."""
    if start == stop or buf[start] > 7 or (buf[start] and start + 1 == stop):
        raise ACMalformed(f"VOMS AC: {what} is not a valid BIT STRING")


def _name(buf: bytes, start: int, stop: int, what: str) -> str:
    """One-line form of the Name that is exactly ``buf[start:stop]`` (the same few names
    come in every AC: checked and rendered once each)."""
    return _checked_name(buf[start:stop], what)


@lru_cache(maxsize=1024)
def _checked_name(der: bytes, what: str) -> str:
    """SEQUENCE OF non-empty SET OF SEQUENCE { OID, one value }, every element checked
    before the name is rendered."""
    buf, start, stop = der, 0, len(der)
    pos, end = _expect(buf, start, stop, _SEQ, what)
    _done(end, stop, what)
    while pos < end:
        inner, set_end = _expect(buf, pos, end, _SET, what + " RDN")
        if inner == set_end:
            raise ACMalformed(f"VOMS AC: {what} has an empty RDN")
        while inner < set_end:
            atv, atv_end = _expect(buf, inner, set_end, _SEQ, what + " attribute")
            oid_start, oid_end = _expect(buf, atv, atv_end, _OID, what + " attribute type")
            _oid(buf, oid_start, oid_end, what + " attribute type")
            _done(_tlv(buf, oid_end, atv_end, what + " attribute value")[2], atv_end, what)
            inner = atv_end
        pos = set_end
    try:
        return oneline_from_der(buf[start:stop])
    except DNError as exc:
        raise ACMalformed(f"VOMS AC: {what}: {exc}") from None


def _general_names(buf: bytes, start: int, stop: int, what: str) -> tuple[str, str]:
    """(first directoryName or "", last URI or "") of a non-empty list of GeneralNames.

    Only the forms a name can usefully take here are read; otherName, x400Address and
    ediPartyName (never written by VOMS) are refused rather than skipped unchecked."""
    if start == stop:
        raise ACMalformed(f"VOMS AC: {what} is empty")
    name: str | None = None
    uri, pos = "", start
    while pos < stop:
        tag, body, end = _tlv(buf, pos, stop, what)
        if tag not in _GENERAL_NAME_TAGS:
            raise ACMalformed(f"VOMS AC: {what} holds an unsupported GeneralName (0x{tag:02x})")
        if tag == _DIRECTORY_NAME:
            dn = _name(buf, body, end, what + " directoryName")
            name = dn if name is None else name
        elif tag == _URI:
            try:
                uri = buf[body:end].decode("ascii")
            except UnicodeDecodeError:
                raise ACMalformed(f"VOMS AC: {what} URI is not ASCII") from None
        elif tag == _REGISTERED_ID:
            _oid(buf, body, end, what + " registeredID")
        pos = end
    return name or "", uri


def _sequence_names(buf: bytes, pos: int, end: int, what: str) -> tuple[tuple[str, str], int]:
    start, stop = _expect(buf, pos, end, _SEQ, what)
    return _general_names(buf, start, stop, what), stop


def _issuer_serial(buf: bytes, start: int, stop: int, what: str) -> tuple[str, int]:
    """IssuerSerial contents: (issuer name, serial)."""
    (name, _uri), pos = _sequence_names(buf, start, stop, what + " issuer")
    body, pos = _expect(buf, pos, stop, _INT, what + " serial")
    serial = _integer(buf, body, pos, what + " serial")
    if pos < stop:
        bits, pos = _expect(buf, pos, stop, _BITS, what + " issuerUID")
        _bits(buf, bits, pos, what + " issuerUID")
    _done(pos, stop, what)
    return name, serial


def _holder(buf: bytes, start: int, stop: int) -> tuple[str, int | None]:
    """baseCertificateID and/or entityName; an objectDigestInfo holder is refused."""
    name, serial, pos = "", None, start
    if pos < stop and buf[pos] == 0xA0:
        _, body, pos = _tlv(buf, pos, stop, "holder baseCertificateID")
        name, serial = _issuer_serial(buf, body, pos, "holder baseCertificateID")
    if pos < stop and buf[pos] == 0xA1:
        _, body, end = _tlv(buf, pos, stop, "holder entityName")
        _general_names(buf, body, end, "holder entityName")
        pos = end
    _done(pos, stop, "holder")
    return name, serial


def _issuer(buf: bytes, pos: int, end: int) -> tuple[str, int]:
    """AttCertIssuer v2Form [0]: (name, next pos). RFC 5755 forbids v1Form and VOMS
    never writes it, so it is refused (pyasn1 read it); so is an objectDigestInfo."""
    tag, start, stop = _tlv(buf, pos, end, "issuer")
    if tag != 0xA0:
        raise ACMalformed(f"VOMS AC: issuer has tag 0x{tag:02x}, expected v2Form")
    name, inner = "", start
    if inner < stop and buf[inner] == _SEQ:
        (name, _uri), inner = _sequence_names(buf, inner, stop, "issuer v2Form issuerName")
    if inner < stop and buf[inner] == 0xA0:
        _, body, inner_end = _tlv(buf, inner, stop, "issuer baseCertificateID")
        _issuer_serial(buf, body, inner_end, "issuer baseCertificateID")
        inner = inner_end
    _done(inner, stop, "issuer v2Form")
    return name, stop


def _algorithm(buf: bytes, pos: int, end: int, what: str) -> tuple[str, int]:
    start, stop = _expect(buf, pos, end, _SEQ, what)
    body, body_end = _expect(buf, start, stop, _OID, what)
    if body_end < stop:  # parameters: any one element
        _, _, body_end_params = _tlv(buf, body_end, stop, what + " parameters")
        _done(body_end_params, stop, what)
    return _oid(buf, body, body_end, what), stop


def _ietf_attr(buf: bytes, start: int, stop: int) -> tuple[str, tuple[str, ...]]:
    """IetfAttrSyntax: (policy authority URI, values) of one FQAN attribute value."""
    body, end = _expect(buf, start, stop, _SEQ, "FQAN attribute")
    _done(end, stop, "FQAN attribute value")
    authority, pos = "", body
    if pos < end and buf[pos] == 0xA0:
        _, names, names_end = _tlv(buf, pos, end, "policyAuthority")
        authority = _general_names(buf, names, names_end, "policyAuthority")[1]
        pos = names_end
    values_start, values_end = _expect(buf, pos, end, _SEQ, "FQAN values")
    _done(values_end, end, "FQAN attribute")
    values, pos = [], values_start
    while pos < values_end:
        tag, vstart, vstop = _tlv(buf, pos, values_end, "FQAN value")
        raw = buf[vstart:vstop]
        if tag == _OCTETS:
            values.append(raw.decode("utf-8", "replace"))
        elif tag == _OID:
            values.append(_oid(buf, vstart, vstop, "FQAN value"))
        elif tag == _UTF8:
            try:
                values.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise ACMalformed("VOMS AC: FQAN value is not UTF-8") from None
        else:
            raise ACMalformed(f"VOMS AC: FQAN value has tag 0x{tag:02x}")
        pos = vstop
    return authority, tuple(values)


def _attributes(buf: bytes, start: int, stop: int) -> tuple[str, tuple[str, ...]] | None:
    """The first value of the first FQAN attribute (as the VOMS library reads it)."""
    found, pos = None, start
    while pos < stop:
        body, end = _expect(buf, pos, stop, _SEQ, "attribute")
        oid_start, oid_end = _expect(buf, body, end, _OID, "attribute type")
        set_start, set_end = _expect(buf, oid_end, end, _SET, "attribute values")
        _done(set_end, end, "attribute")
        kind = _oid(buf, oid_start, oid_end, "attribute type")
        value = set_start
        while value < set_end:
            _, _, value_end = _tlv(buf, value, set_end, "attribute value")
            if found is None and kind == OID_FQAN:
                found = _ietf_attr(buf, value, value_end)
            value = value_end
        pos = end
    return found


def _extensions(buf: bytes, start: int, stop: int) -> tuple[bytes, ...]:
    """The certificates of the first AC-certs extension; every extension is checked."""
    if start == stop:
        raise ACMalformed("VOMS AC: extensions is empty")
    certs: tuple[bytes, ...] | None = None
    pos = start
    while pos < stop:
        body, end = _expect(buf, pos, stop, _SEQ, "extension")
        oid_start, oid_end = _expect(buf, body, end, _OID, "extension id")
        inner = oid_end
        if inner < end and buf[inner] == _BOOL:
            flag, inner = _expect(buf, inner, end, _BOOL, "extension critical flag")
            if inner - flag != 1:
                raise ACMalformed("VOMS AC: extension critical flag is not one octet")
        value_start, value_end = _expect(buf, inner, end, _OCTETS, "extension value")
        _done(value_end, end, "extension")
        if _oid(buf, oid_start, oid_end, "extension id") == OID_AC_CERTS and certs is None:
            certs = split_certificates(buf[value_start:value_end])
        pos = end
    return certs or ()


def _is_certificate(buf: bytes, pos: int, end: int) -> bool:
    """A Certificate is SEQUENCE { tbsCertificate SEQUENCE { [0] version | serial ...} ...}."""
    tag, body, stop = _tlv(buf, pos, end, "AC certificate")
    if tag != _SEQ or body >= stop:
        return False
    tbs_tag, tbs_body, tbs_end = _tlv(buf, body, stop, "AC certificate")
    return tbs_tag == _SEQ and tbs_body < tbs_end and buf[tbs_body] in (0xA0, 0x02)


def split_certificates(value: bytes) -> tuple[bytes, ...]:
    """VOMS writes SEQUENCE { SEQUENCE OF Certificate }; the bare list is accepted too."""
    start, end = _expect(value, 0, len(value), _SEQ, "AC certificates")
    _done(end, len(value), "AC certificates")
    if start < end and not _is_certificate(value, start, end):
        inner, inner_end = _expect(value, start, end, _SEQ, "AC certificate list")
        _done(inner_end, end, "AC certificates")
        start, end = inner, inner_end
    out, pos = [], start
    while pos < end:
        _, _, stop = _tlv(value, pos, end, "AC certificate")
        out.append(value[pos:stop])
        pos = stop
    return tuple(out)


def split_acs(value: bytes) -> list[bytes]:
    """Split the VOMS extension (SEQUENCE OF SEQUENCE OF AC) into each AC's DER."""
    tag, pos, end = _tlv(value, 0, len(value), "VOMS extension")
    if tag != _SEQ or end != len(value):
        raise ACMalformed("VOMS extension is not one SEQUENCE")
    found = []
    while pos < end:
        tag, inner, inner_end = _tlv(value, pos, end, "VOMS extension")
        if tag != _SEQ:
            raise ACMalformed("VOMS extension holds a non-SEQUENCE")
        while inner < inner_end:
            _, _, ac_end = _tlv(value, inner, inner_end, "VOMS AC")
            found.append(value[inner:ac_end])
            inner = ac_end
        pos = inner_end
    return found


def decode_ac(raw: bytes) -> ACFields:
    """Read one AttributeCertificate (exactly ``raw``); raise ACMalformed if it is not one."""
    body, end = _expect(raw, 0, len(raw), _SEQ, "AttributeCertificate")
    _done(end, len(raw), "AttributeCertificate")
    info_start, info_end = _expect(raw, body, end, _SEQ, "acinfo")
    sig_oid, pos = _algorithm(raw, info_end, end, "signatureAlgorithm")
    bits_start, bits_end = _expect(raw, pos, end, _BITS, "signatureValue")
    _done(bits_end, end, "AttributeCertificate")
    if bits_start == bits_end or raw[bits_start] != 0:
        raise ACMalformed("VOMS AC: signatureValue has unused bits")

    pos = info_start
    version_start, pos = _expect(raw, pos, info_end, _INT, "version")
    _integer(raw, version_start, pos, "version")
    holder_start, pos = _expect(raw, pos, info_end, _SEQ, "holder")
    holder_issuer, holder_serial = _holder(raw, holder_start, pos)
    issuer, pos = _issuer(raw, pos, info_end)
    _, pos = _algorithm(raw, pos, info_end, "signature")
    serial_start, pos = _expect(raw, pos, info_end, _INT, "serialNumber")
    serial = _integer(raw, serial_start, pos, "serialNumber")
    period_start, period_end = _expect(raw, pos, info_end, _SEQ, "attrCertValidityPeriod")
    nb_start, nb_end = _expect(raw, period_start, period_end, _GENTIME, "notBeforeTime")
    na_start, na_end = _expect(raw, nb_end, period_end, _GENTIME, "notAfterTime")
    _done(na_end, period_end, "attrCertValidityPeriod")
    attrs_start, pos = _expect(raw, period_end, info_end, _SEQ, "attributes")
    fqan = _attributes(raw, attrs_start, pos)
    if pos < info_end and raw[pos] == _BITS:
        bits, pos = _expect(raw, pos, info_end, _BITS, "issuerUniqueID")
        _bits(raw, bits, pos, "issuerUniqueID")
    certs: tuple[bytes, ...] = ()
    if pos < info_end:
        ext_start, pos = _expect(raw, pos, info_end, _SEQ, "extensions")
        certs = _extensions(raw, ext_start, pos)
    _done(pos, info_end, "acinfo")
    if fqan is None:
        raise ACMalformed("VOMS AC has no FQAN attribute")
    return ACFields(
        acinfo_der=raw[body:info_end],
        sig_oid=sig_oid,
        signature=raw[bits_start + 1 : bits_end],
        holder_issuer=holder_issuer,
        holder_serial=holder_serial,
        issuer=issuer,
        serial=serial,
        not_before=_time(raw, nb_start, nb_end, "notBeforeTime"),
        not_after=_time(raw, na_start, na_end, "notAfterTime"),
        authority=fqan[0],
        fqans=fqan[1],
        certs_der=certs,
    )
