"""Proxy delegation, as the gLite WMProxy and GridSite delegation services did it.

No private key crosses the network:

1. the CE makes a key pair and a certificate request (:func:`new_request`), keeps the key;
2. the client signs a proxy certificate for the request's public key with the user's proxy
   (:func:`sign_request`): subject = the proxy's subject plus one CN, RFC 3820 (or legacy,
   like its parent), limited if its parent is, never outliving its parent;
3. the CE checks the returned chain against the key it kept and its CA directory
   (:func:`accept`) and stores certificate + its own key as the job's proxy (0600).

Every function that looks at a clock takes ``now=``.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from datetime import datetime, timedelta

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

from credentials.credential import Credential, TrustStore, load_pem, verify_credential
from credentials.errors import CredentialError
from credentials.proxy_chain import (
    OID_POLICY_INHERIT_ALL,
    OID_POLICY_LIMITED,
    OID_PROXY_CERT_INFO,
    proxy_info,
)

__all__ = ["DelegationError", "accept", "new_request", "proxy_file", "sign_request"]

KEY_TYPES = ("rsa2048", "rsa3072", "ec-p256")
#: a delegated proxy lives at most this long (gLite's default delegation was 12 h)
MAX_LIFETIME = timedelta(hours=12)
SKEW = timedelta(minutes=5)


class DelegationError(Exception):
    """The request, the user's proxy or the returned chain cannot be used (one line)."""


def new_request(key_type: str = "rsa2048") -> tuple[bytes, bytes]:
    """(private key PEM, certificate request PEM): the CE's half of a delegation."""
    if key_type == "ec-p256":
        key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = ec.generate_private_key(
            ec.SECP256R1()
        )
    elif key_type in ("rsa2048", "rsa3072"):
        key = rsa.generate_private_key(65537, int(key_type[3:]))
    else:
        raise DelegationError(f"unknown key type {key_type!r} (one of {', '.join(KEY_TYPES)})")
    csr = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "delegation")]))
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM,
                                serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())  # fmt: skip
    return key_pem, csr.public_bytes(serialization.Encoding.PEM)


def _proxy_cert_info(limited: bool) -> x509.UnrecognizedExtension:
    """ProxyCertInfo (RFC 3820): no path length limit, inherit-all or limited policy."""
    oid = OID_POLICY_LIMITED if limited else OID_POLICY_INHERIT_ALL
    body = x509.ObjectIdentifier(oid).dotted_string
    arcs = [int(a) for a in body.split(".")]
    der_oid = bytes([40 * arcs[0] + arcs[1]]) + b"".join(_base128(a) for a in arcs[2:])
    oid_tlv = b"\x06" + _der_len(len(der_oid)) + der_oid
    policy = b"\x30" + _der_len(len(oid_tlv)) + oid_tlv
    return x509.UnrecognizedExtension(OID_PROXY_CERT_INFO, b"\x30" + _der_len(len(policy))
                                      + policy)  # fmt: skip


def _base128(n: int) -> bytes:
    out = [n & 0x7F]
    n >>= 7
    while n:
        out.append(0x80 | (n & 0x7F))
        n >>= 7
    return bytes(reversed(out))


def _der_len(n: int) -> bytes:
    if n < 0x80:
        return bytes([n])
    body = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(body)]) + body


def _parent(proxy_pem: bytes) -> Credential:
    try:
        cred = load_pem(proxy_pem, source="the user's proxy")
    except CredentialError as exc:
        raise DelegationError(str(exc)) from None
    if cred.key is None:
        raise DelegationError("the user's proxy holds no private key: cannot sign a delegation")
    return cred


def sign_request(
    csr_pem: bytes, proxy_pem: bytes, *, now: datetime,
    lifetime: timedelta = MAX_LIFETIME,
) -> bytes:  # fmt: skip
    """The client's half: a proxy for the request's key, signed with the user's proxy.

    Returns the new certificate followed by the user's whole chain (PEM, no key).
    """
    try:
        csr = x509.load_pem_x509_csr(csr_pem)
    except ValueError as exc:
        raise DelegationError(f"the CE sent an unreadable certificate request: {exc}") from None
    if not csr.is_signature_valid:
        raise DelegationError("the CE's certificate request is not signed by its own key")
    parent = _parent(proxy_pem)
    issuer = parent.leaf
    info = proxy_info(issuer, parent.chain[1] if len(parent.chain) > 1 else None)
    not_after = min(now + min(lifetime, MAX_LIFETIME), parent.not_after)
    if not_after <= now:
        raise DelegationError(f"the user's proxy expired at {parent.not_after:%Y-%m-%d %H:%M}Z")
    legacy = info is not None and info.legacy
    cn = (
        ("limited proxy" if info.limited else "proxy")
        if info and legacy
        else str(secrets.randbelow(2**31 - 1) + 1)
    )
    subject = x509.Name(
        [
            *issuer.subject.rdns,
            x509.RelativeDistinguishedName([x509.NameAttribute(NameOID.COMMON_NAME, cn)]),
        ]
    )
    builder = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(issuer.subject)
        .public_key(csr.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(max(now - SKEW, parent.not_before))
        .not_valid_after(not_after)
        .add_extension(
            x509.KeyUsage(True, False, True, True, False, False, False, False, False),
            critical=True,
        )
    )
    if not legacy:
        builder = builder.add_extension(_proxy_cert_info(bool(info and info.limited)), True)
    assert parent.key is not None
    try:
        cert = builder.sign(parent.key, hashes.SHA256())  # type: ignore[arg-type]
    except (TypeError, ValueError) as exc:
        raise DelegationError(f"cannot sign with the user's proxy key: {exc}") from None
    return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in (cert, *parent.chain))


@dataclass(frozen=True)
class Delegated:
    """A verified delegated proxy: its credential, and the proxy file's bytes (cert, key,
    chain) for glexec."""

    credential: Credential
    pem: bytes

    @property
    def identity(self) -> str:
        return self.credential.identity


def accept(chain_pem: bytes, key_pem: bytes, trust: TrustStore, *, now: datetime) -> Delegated:
    """The CE's check of what the client returned: the first certificate is a proxy of the
    rest, for the key the CE kept, and the chain verifies against the CA directory."""
    try:
        cred = load_pem(chain_pem, source="the delegated chain")
        key = serialization.load_pem_private_key(key_pem, password=None)
    except (CredentialError, ValueError) as exc:
        raise DelegationError(str(exc)) from None
    if cred.key is not None:
        raise DelegationError("the delegated chain carries a private key: it must never be sent")
    if cred.leaf.public_key() != key.public_key():
        raise DelegationError("the delegated certificate is not for this delegation's key")
    if cred.identity_index == 0:
        raise DelegationError("the delegated certificate is not a proxy")
    try:
        verified = verify_credential(cred, TrustStore(trust.certdir), now=now,
                                     verify_voms=False)  # fmt: skip
    except CredentialError as exc:
        raise DelegationError(f"delegated proxy refused: {exc}") from None
    pem = proxy_file(verified.chain, key_pem)
    return Delegated(verified, pem)


def proxy_file(chain: tuple[x509.Certificate, ...], key_pem: bytes) -> bytes:
    """A proxy file as ``X509_USER_PROXY`` holds it: leaf, its key, then the rest."""
    pem = [c.public_bytes(serialization.Encoding.PEM) for c in chain]
    return pem[0] + key_pem + b"".join(pem[1:])
