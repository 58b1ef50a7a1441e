"""VOMS attribute certificates: find them in a proxy, read the FQANs, verify them.

A VOMS proxy carries, in extension ``1.3.6.1.4.1.8005.100.100.5``, a
SEQUENCE OF SEQUENCE OF AttributeCertificate (RFC 5755). Each AC names its
VO in the FQAN attribute's policy authority (``vo://host:port``) and
usually embeds the VOMS server's certificate chain. Trust comes from the
vomsdir exactly as the C VOMS library arranges it: ``<vo>/<host>.lsc``
lists the expected subject/issuer DN chain of the signer, or a plain
certificate file in ``<vo>/`` or the vomsdir root is the signer itself.

The ACs are read by :mod:`credentials.voms_ac` (a DER walker over the extension's
bytes) and the parse is cached by those bytes; verification (holder, time, signer,
signature) runs every call. The vomsdir is read through caches that ``stat`` what
they rest on every call: an ``.lsc`` file is parsed again when its (inode, size,
mtime) changes, a directory is listed again when its own state changes
(:func:`~credentials.chain_cache.dir_listing`), a certificate file is loaded again
when it changes. An edited, added or removed vomsdir file counts from the next query.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from functools import lru_cache
from stat import S_ISREG
from typing import TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from credentials import certbytes, proxy_chain, voms_ac
from credentials.chain_cache import FileState, dir_listing, settled, stat_of
from credentials.errors import (
    ACExpired,
    ACHolderMismatch,
    ACMalformed,
    ACNotYetValid,
    ACSignatureInvalid,
    ACUntrusted,
    CredentialError,
)
from credentials.lru import BoundedLRU, MiB
from credentials.voms_ac import decode_ac, split_acs

__all__ = ["VomsAttributes", "parse_attributes", "verified_attributes"]

T = TypeVar("T")

OID_VOMS_ACSEQ = x509.ObjectIdentifier("1.3.6.1.4.1.8005.100.100.5")
OID_FQAN = voms_ac.OID_FQAN  # dotted strings
OID_AC_CERTS = voms_ac.OID_AC_CERTS

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


class _ParsedAC:
    """One AC as read, what verifying it needs (a plain class: a dataclass costs a one-shot
    ~0.5 ms to make). Cached by the extension's bytes: never changed once made."""

    __slots__ = ("acinfo_der", "attrs", "certs", "holder_issuer", "holder_serial", "host",
                 "sig_oid", "signature")

    def __init__(self, attrs: VomsAttributes, host: str, acinfo_der: bytes, signature: bytes,
                 sig_oid: str, holder_issuer: str, holder_serial: int | None,
                 certs: tuple[x509.Certificate, ...]) -> None:
        self.attrs, self.host, self.certs = attrs, host, certs
        self.acinfo_der, self.signature, self.sig_oid = acinfo_der, signature, sig_oid
        self.holder_issuer, self.holder_serial = holder_issuer, holder_serial


#: the VOMS servers' certificates embedded in ACs, by DER: the same few come back in every
#: AC, and a kept object keeps its decoded public key and its place in the chain cache
_embedded_certs: BoundedLRU[bytes, x509.Certificate] = BoundedLRU(256, 4 * MiB)


def _embedded(der: bytes) -> x509.Certificate:
    cert = _embedded_certs.get(der)
    if cert is None:
        cert = x509.load_der_x509_certificate(der)
        certbytes.remember(cert, der)
        _embedded_certs.put(der, cert, 2 * len(der) + 1024)
    return cert


def _parse_one(raw_ac: bytes) -> _ParsedAC:
    fields = decode_ac(raw_ac)
    vo, sep, hostport = fields.authority.partition("://")
    if not sep or not vo:
        raise ACMalformed(f"VOMS AC policy authority {fields.authority!r} is not vo://host:port")
    certs = tuple(_embedded(der) for der in fields.certs_der)
    attrs = VomsAttributes(
        vo=vo,
        fqans=fields.fqans,
        not_before=fields.not_before,
        not_after=fields.not_after,
        server_subject=fields.issuer,
        server_issuer=certbytes.issuer_line(certs[0]) if certs else "",
        uri=hostport,
        serial=fields.serial,
    )
    return _ParsedAC(
        attrs=attrs,
        host=hostport.rsplit(":", 1)[0],
        acinfo_der=fields.acinfo_der,
        signature=fields.signature,
        sig_oid=fields.sig_oid,
        holder_issuer=fields.holder_issuer,
        holder_serial=fields.holder_serial,
        certs=certs,
    )


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
        return tuple(_parse_one(raw_ac) for raw_ac in split_acs(value))
    except ACMalformed:
        raise
    except ValueError as exc:  # an embedded certificate cryptography cannot read
        raise ACMalformed(f"VOMS extension cannot be decoded: {exc}".splitlines()[0]) from None


def _find_acs(chain: Sequence[x509.Certificate]) -> tuple[_ParsedAC, ...]:
    """The ACs of the proxy nearest the leaf that carries any (as the VOMS library does)."""
    for cert in chain:
        if not certbytes.may_carry(cert, OID_VOMS_ACSEQ):
            continue
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
    key = certbytes.public_key(cert)
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


def _regular(path: str) -> FileState | None:
    """The state of ``path`` if it is a regular file (one ``stat``), else None."""
    st = stat_of(path)
    if st is None or not S_ISREG(st.st_mode):
        return None
    return (path, st.st_ino, st.st_size, st.st_mtime_ns)


def _cached(load: Callable[[str, FileState], T], path: str, state: FileState) -> T:
    """``load(path, state)``, from its cache only once the file has settled (a file
    changed within the current mtime tick could change again unseen)."""
    return load(path, state) if settled(state) else load.__wrapped__(path, state)  # type: ignore[attr-defined]


@lru_cache(maxsize=256)
def _lsc_chains(path: str, state: FileState) -> tuple[tuple[str, ...], ...]:
    """The DN chains an ``.lsc`` file lists; cached by its (inode, size, mtime)."""
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
    return tuple(tuple(c) for c in chains if c)


@lru_cache(maxsize=256)
def _load_cert_file(path: str, state: FileState) -> tuple[x509.Certificate, ...]:
    with open(path, "rb") as fh:
        return tuple(certbytes.load_pem(fh.read()))


def _candidates(vomsdir: str, vo: str) -> list[str]:
    """Certificate files that may vouch for a VO's server: ``<vo>/*`` (not ``.lsc``), then
    the regular files of the vomsdir root, each sorted."""
    out: list[str] = []
    vo_dir = os.path.join(vomsdir, vo)
    listing = dir_listing(vo_dir)
    if listing is not None:  # as glob("*") lists them: no dot files
        out.extend(os.path.join(vo_dir, n) for n in listing.names if n[0] != ".")
    root = dir_listing(vomsdir)
    if root is not None:
        out.extend(os.path.join(vomsdir, n) for n in root.names
                   if n in root.files and n[0] != ".")
    return [p for p in out if not p.endswith(".lsc")]


def _lsc_signer(parsed: _ParsedAC, lsc: str, state: FileState, certdir: str,
                now: datetime) -> x509.Certificate:
    vo = parsed.attrs.vo
    if not parsed.certs:
        raise ACUntrusted(f"VOMS AC for {vo} embeds no certificate to match {lsc}")
    dns = (certbytes.subject_line(parsed.certs[0]),
           *(certbytes.issuer_line(c) for c in parsed.certs))
    try:
        listed = _cached(_lsc_chains, lsc, state)
    except OSError as exc:
        raise ACUntrusted(f"{lsc} is unreadable: {exc.strerror}") from None
    if not any(dns[: len(chain)] == chain for chain in listed):
        raise ACUntrusted(f"VOMS server {dns[0]} does not match {lsc}")
    try:
        proxy_chain.verify_chain(parsed.certs, 0, certdir, now=now,
                                 policy=proxy_chain.ProxyPolicy())
    except CredentialError as exc:
        raise ACUntrusted(f"VOMS server certificate not trusted: {exc.reason}") from None
    return parsed.certs[0]


def _signer(parsed: _ParsedAC, vomsdir: str, certdir: str, now: datetime) -> x509.Certificate:
    vo, host = parsed.attrs.vo, parsed.host
    lsc = os.path.join(vomsdir, vo, host + ".lsc")
    lsc_state = _regular(lsc)
    if lsc_state is not None:
        return _lsc_signer(parsed, lsc, lsc_state, certdir, now)
    for path in _candidates(vomsdir, vo):
        state = _regular(path)
        if state is None:
            continue
        try:
            certs = _cached(_load_cert_file, path, state)
        except (OSError, ValueError):
            continue
        for cert in certs:
            named = certbytes.subject_line(cert) == parsed.attrs.server_subject
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
    ee_issuer = certbytes.issuer_line(ee)
    for parsed in parsed_acs:
        attrs = parsed.attrs
        # The C VOMS library accepts the EE's subject or issuer in the holder's
        # issuer field (voms-proxy-fake writes the subject); the serial must match.
        holder_names = (ee_issuer, certbytes.subject_line(ee))
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
                f"VOMS AC for {attrs.vo} is not signed by {certbytes.subject_line(signer)}"
            )
    return tuple(p.attrs for p in parsed_acs)

