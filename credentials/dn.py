"""Distinguished names in OpenSSL's one-line form, byte-compatible with C LCMAPS.

C LCMAPS keys every mapfile on ``X509_NAME_oneline()`` output, e.g.
``/DC=org/DC=example/O=Users/CN=J\\xC3\\xBCrgen``: each attribute as
``/<short name>=<value>`` (``+`` between members of a multi-valued RDN),
where every byte of the raw ASN.1 string outside printable ASCII is written
as ``\\xHH`` (upper-case hex) and ``/`` and ``+`` are backslash-escaped, as
Debian 12's OpenSSL 3.0 does. Only exact bytes
give exact keys, so this module reads the names' DER itself instead of
going through decoded Python strings.
"""

from __future__ import annotations

from functools import lru_cache

from cryptography import x509

__all__ = ["DNError", "oid_to_dotted", "oneline", "oneline_from_der", "read_tlv"]

# OpenSSL short names (OBJ_nid2sn) for the attribute types seen in grid DNs.
SHORT_NAMES = {
    "2.5.4.3": "CN",
    "2.5.4.4": "SN",
    "2.5.4.5": "serialNumber",
    "2.5.4.6": "C",
    "2.5.4.7": "L",
    "2.5.4.8": "ST",
    "2.5.4.9": "street",
    "2.5.4.10": "O",
    "2.5.4.11": "OU",
    "2.5.4.12": "title",
    "2.5.4.13": "description",
    "2.5.4.15": "businessCategory",
    "2.5.4.17": "postalCode",
    "2.5.4.41": "name",
    "2.5.4.42": "GN",
    "2.5.4.43": "initials",
    "2.5.4.44": "generationQualifier",
    "2.5.4.46": "dnQualifier",
    "2.5.4.65": "pseudonym",
    "2.5.4.97": "organizationIdentifier",
    "0.9.2342.19200300.100.1.1": "UID",
    "0.9.2342.19200300.100.1.25": "DC",
    "1.2.840.113549.1.9.1": "emailAddress",
    "1.2.840.113549.1.9.2": "unstructuredName",
    "1.3.6.1.4.1.311.60.2.1.3": "jurisdictionC",
}

_GENERAL_STRING = 0x1B
_HEX = "0123456789ABCDEF"


class DNError(ValueError):
    """The DER bytes are not an X.501 Name."""


def read_tlv(der: bytes, pos: int) -> tuple[int, int, int]:
    """Return (tag, content start, content end) of the element at ``pos``."""
    if pos + 2 > len(der):
        raise DNError("truncated DER element")
    tag = der[pos]
    length = der[pos + 1]
    pos += 2
    if length & 0x80:
        count = length & 0x7F
        if count == 0 or count > 4 or pos + count > len(der):
            raise DNError("bad DER length")
        length = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    end = pos + length
    if end > len(der):
        raise DNError("DER element runs past its container")
    return tag, pos, end


@lru_cache(maxsize=1024)
def oid_to_dotted(body: bytes) -> str:
    """Decode the content octets of an OBJECT IDENTIFIER (a handful recur: cached)."""
    if not body:
        raise DNError("empty OID")
    arcs: list[int] = []
    value = 0
    for byte in body:
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            arcs.append(value)
            value = 0
    if body[-1] & 0x80:
        raise DNError("truncated OID")
    first = arcs[0]
    head = [min(first // 40, 2), first - 40 * min(first // 40, 2)]
    return ".".join(str(a) for a in head + arcs[1:])


def _escape(tag: int, raw: bytes) -> str:
    keep = [True, True, True, True]
    if tag == _GENERAL_STRING and len(raw) % 4 == 0:
        # OpenSSL's heuristic for 4-byte wide strings stored as GeneralString.
        nonzero = [False] * 4
        for i, byte in enumerate(raw):
            if byte:
                nonzero[i & 3] = True
        if not (nonzero[0] or nonzero[1] or nonzero[2]):
            keep = [False, False, False, True]
    out: list[str] = []
    for i, byte in enumerate(raw):
        if not keep[i & 3]:
            continue
        if byte < 0x20 or byte > 0x7E:
            out.append("\\x" + _HEX[byte >> 4] + _HEX[byte & 0xF])
        elif byte in (0x2F, 0x2B):  # '/' and '+' would be read as separators
            out.append("\\" + chr(byte))
        else:
            out.append(chr(byte))
    return "".join(out)


@lru_cache(maxsize=4096)
def oneline_from_der(der: bytes) -> str:
    """``X509_NAME_oneline`` of a DER-encoded Name (RDN sequence)."""
    tag, pos, end = read_tlv(der, 0)
    if tag != 0x30:
        raise DNError("a Name must be a SEQUENCE")
    parts: list[str] = []
    while pos < end:
        set_tag, set_pos, set_end = read_tlv(der, pos)
        if set_tag != 0x31:
            raise DNError("an RDN must be a SET")
        separator = "/"
        while set_pos < set_end:
            seq_tag, atv_pos, atv_end = read_tlv(der, set_pos)
            if seq_tag != 0x30:
                raise DNError("an attribute must be a SEQUENCE")
            oid_tag, oid_pos, oid_end = read_tlv(der, atv_pos)
            if oid_tag != 0x06:
                raise DNError("attribute type is not an OID")
            dotted = oid_to_dotted(der[oid_pos:oid_end])
            val_tag, val_pos, val_end = read_tlv(der, oid_end)
            if val_end != atv_end:
                raise DNError("trailing data in attribute")
            name = SHORT_NAMES.get(dotted, dotted)
            parts.append(f"{separator}{name}={_escape(val_tag, der[val_pos:val_end])}")
            separator = "+"  # further members of a multi-valued RDN
            set_pos = atv_end
        pos = set_end
    return "".join(parts)


def oneline(name: x509.Name) -> str:
    """One-line form of a cryptography :class:`~cryptography.x509.Name`."""
    return oneline_from_der(name.public_bytes())
