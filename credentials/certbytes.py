"""A certificate's bytes, worked out once: its DER, its names' DER, its OpenSSL object.

``cryptography`` re-encodes a certificate on every ``public_bytes()`` and a name on
every ``Name.public_bytes()``, and pyOpenSSL parses a certificate again on every
``X509.from_cryptography()`` (OpenSSL 3 decodes the public key each time, about two
RSA verifications' worth). A cold verification needed each several times per
certificate, and the end-entity behind a user's fresh proxies is the same all day.
So the facts of a certificate are kept:

* by object identity, for the rest of this verification (an entry holds the object,
  so its ``id`` cannot be reused meanwhile);
* by content (the DER bytes, whose hash Python keeps), so the same end-entity or CA sent
  again in a new PEM finds its facts, OpenSSL object included;
* :func:`load_pem` parses each PEM block's DER itself, so every certificate it returns
  comes with the very bytes it was parsed from (re-encoding costs about 10 µs a
  certificate); :func:`remember` records DER already at hand (an AC's embedded
  certificates). Anything else is re-encoded once, when first asked.

:func:`names` reads the issuer's and subject's DER out of the certificate's DER; a name
with a multi-valued RDN is taken from ``cryptography`` instead, which re-encodes its
SETs in DER order, exactly as names were rendered before.
"""

from __future__ import annotations

import binascii
from functools import lru_cache

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import CertificatePublicKeyTypes
from OpenSSL import crypto

try:  # what x509 itself imports: free; the public package costs a one-shot 5 ms
    from cryptography.hazmat.primitives._serialization import Encoding
except ImportError:  # pragma: no cover - a cryptography that moved it
    from cryptography.hazmat.primitives.serialization import Encoding

from credentials.dn import DNError, oneline_from_der, read_tlv
from credentials.lru import BoundedLRU, MiB

__all__ = ["der", "extra_rdn", "issuer_line", "load_pem", "may_carry", "names", "public_key",
           "remember", "same_issuer", "subject_line", "to_openssl"]


class _Facts:
    """DER, issuer DER, subject DER and (once asked for) the OpenSSL object and public key."""

    __slots__ = ("der", "issuer", "key", "openssl", "subject")

    def __init__(self, der: bytes, issuer: bytes, subject: bytes) -> None:
        self.der, self.issuer, self.subject = der, issuer, subject
        self.openssl: crypto.X509 | None = None
        self.key: CertificatePublicKeyTypes | None = None


class _ById:
    """id(cert) -> (cert, facts), oldest out past ``limit``: looked up a few dozen times
    per verification, so a plain dict (atomic operations under the GIL), no LRU order."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: dict[int, tuple[x509.Certificate, _Facts]] = {}

    def get(self, cert: x509.Certificate) -> _Facts | None:
        found = self.items.get(id(cert))
        return found[1] if found is not None and found[0] is cert else None

    def put(self, cert: x509.Certificate, facts: _Facts) -> None:
        items = self.items
        items[id(cert)] = (cert, facts)
        while len(items) > self.limit:
            try:
                items.pop(next(iter(items)), None)
            except (StopIteration, RuntimeError):  # emptied or resized by another thread
                break


#: a cold query brings three or four certificates: these cover the last few hundred
_by_id = _ById(4096)
_by_content: BoundedLRU[bytes, _Facts] = BoundedLRU(2048, 64 * MiB)


def _name_ders(cert: x509.Certificate, data: bytes) -> tuple[bytes, bytes]:
    try:
        _, pos, _ = read_tlv(data, 0)  # Certificate
        _, pos, _ = read_tlv(data, pos)  # TBSCertificate
        tag, _, end = read_tlv(data, pos)
        if tag == 0xA0:  # [0] version
            pos = end
        for _skip in range(2):  # serialNumber, signature
            _, _, pos = read_tlv(data, pos)
        _, _, issuer_end = read_tlv(data, pos)
        issuer = data[pos:issuer_end]
        _, _, validity_end = read_tlv(data, issuer_end)
        _, _, subject_end = read_tlv(data, validity_end)
        subject = data[validity_end:subject_end]
    except DNError:
        issuer, subject = b"", b""
    if not (_single_valued(issuer) and _single_valued(subject)):
        return cert.issuer.public_bytes(), cert.subject.public_bytes()
    return issuer, subject


def _single_valued(name: bytes) -> bool:
    """A well-formed Name whose every RDN holds exactly one attribute."""
    try:
        tag, pos, end = read_tlv(name, 0)
        if tag != 0x30 or end != len(name):
            return False
        while pos < end:
            tag, inner, stop = read_tlv(name, pos)
            if tag != 0x31 or inner >= stop or read_tlv(name, inner)[2] != stop:
                return False
            pos = stop
    except DNError:
        return False
    return True


def _facts(cert: x509.Certificate, data: bytes | None = None) -> _Facts:
    facts = _by_id.get(cert)
    if facts is not None:
        return facts
    if not data:
        data = cert.public_bytes(Encoding.DER)
    facts = _by_content.get(data)
    if facts is None:
        facts = _Facts(data, *_name_ders(cert, data))
        _by_content.put(data, facts, 3 * len(data) + 2048)
    _by_id.put(cert, facts)
    return facts


def may_carry(cert: x509.Certificate, oid: x509.ObjectIdentifier) -> bool:
    """False when ``cert`` cannot hold an extension ``oid``: its DER nowhere holds that
    OBJECT IDENTIFIER's encoding (parsing the extensions costs far more than looking)."""
    return _oid_der(oid.dotted_string) in _facts(cert).der


@lru_cache(maxsize=64)
def _oid_der(dotted: str) -> bytes:
    arcs = [int(a) for a in dotted.split(".")]
    body = bytearray()
    for arc in [40 * arcs[0] + arcs[1], *arcs[2:]]:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body.extend(reversed(chunk))
    return bytes([0x06, len(body)]) + bytes(body)


def der(cert: x509.Certificate) -> bytes:
    """``cert.public_bytes(DER)``, computed once per certificate."""
    return _facts(cert).der


def public_key(cert: x509.Certificate) -> CertificatePublicKeyTypes:
    """``cert.public_key()``, decoded once per certificate: each call decodes it again, which
    for RSA costs about as much as the verification it is wanted for (a VOMS server's key
    checks every AC it signed)."""
    facts = _facts(cert)
    if facts.key is None:
        facts.key = cert.public_key()
    return facts.key


def remember(cert: x509.Certificate, data: bytes) -> None:
    """Record ``data`` as the DER ``cert`` was loaded from."""
    _facts(cert, data)


_BEGIN, _END = b"-----BEGIN CERTIFICATE-----", b"-----END CERTIFICATE-----"


def load_pem(data: bytes) -> list[x509.Certificate]:
    """The certificates of a PEM text, in order, as ``x509.load_pem_x509_certificates``
    reads them (and raising ValueError as it does), each with the DER it was parsed from.

    When every PEM block is a ``CERTIFICATE`` of plain base64, each block is decoded here
    and parsed as DER, so the DER kept is by construction the certificate's. Anything else
    (other blocks to skip, headers, bad base64) is left to cryptography's PEM reader, and
    the DER is then re-encoded when first needed.
    """
    ders = _plain_blocks(data)
    if ders is None:
        return x509.load_pem_x509_certificates(data)
    certs = []
    for der in ders:
        cert = x509.load_der_x509_certificate(der)
        _facts(cert, der)
        certs.append(cert)
    return certs


def _plain_blocks(data: bytes) -> list[bytes] | None:
    """The DER of each block when all are CERTIFICATE blocks of strict base64, else None."""
    if data.count(b"-----BEGIN ") != data.count(_BEGIN) or data.count(b"-----END ") != \
            data.count(_END):
        return None
    out = []
    start = data.find(_BEGIN)
    while start != -1:
        stop = data.find(_END, start)
        if stop == -1:
            return None
        body = data[start + len(_BEGIN) : stop].translate(None, b" \t\r\n")
        try:
            out.append(binascii.a2b_base64(body, strict_mode=True))
        except binascii.Error:
            return None
        start = data.find(_BEGIN, stop)
    return out or None


def names(cert: x509.Certificate) -> tuple[bytes, bytes]:
    """(issuer DER, subject DER) as ``Name.public_bytes()`` gives them."""
    facts = _facts(cert)
    return facts.issuer, facts.subject


def subject_line(cert: x509.Certificate) -> str:
    """``oneline(cert.subject)``."""
    return oneline_from_der(_facts(cert).subject)


def issuer_line(cert: x509.Certificate) -> str:
    """``oneline(cert.issuer)``."""
    return oneline_from_der(_facts(cert).issuer)


def same_issuer(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """``cert.issuer == issuer.subject``: equal bytes, or else equal as cryptography sees it."""
    return _facts(cert).issuer == _facts(issuer).subject or cert.issuer == issuer.subject


def extra_rdn(cert: x509.Certificate, issuer: x509.Certificate) -> int | None:
    """How many attributes the RDN that ``cert``'s subject adds to ``issuer``'s holds; None
    unless the subject is exactly the issuer's subject plus one RDN (a proxy's name)."""
    subject, base = names(cert)[1], names(issuer)[1]
    try:
        _, pos, end = read_tlv(subject, 0)
        _, base_pos, base_end = read_tlv(base, 0)
        head = base[base_pos:base_end]
        if subject[pos : pos + len(head)] != head or pos + len(head) >= end:
            return None
        tag, inner, stop = read_tlv(subject, pos + len(head))
        if tag != 0x31 or stop != end:
            return None
        count = 0
        while inner < stop:
            inner = read_tlv(subject, inner)[2]
            count += 1
    except DNError:
        return None
    return count


def to_openssl(cert: x509.Certificate, *, keep: bool) -> crypto.X509:
    """pyOpenSSL's object for ``cert``; ``keep`` it for the next query (non-leaf)."""
    facts = _facts(cert)
    if facts.openssl is not None:
        return facts.openssl
    ossl = crypto.load_certificate(crypto.FILETYPE_ASN1, facts.der)
    if keep:
        facts.openssl = ossl
    return ossl
