"""Credentials: load an X.509 proxy (or a bare PEM chain) and verify it.

This is the one place that knows X.509 and VOMS. Everything else (LCAS,
LCMAPS plugins, the SCAS server, glexec) works with :class:`Credential`,
whose ``identity`` is the end-entity subject in OpenSSL one-line form, the
exact string C LCMAPS uses as the key of every mapfile.

Typical use::

    trust = TrustStore(certdir="/etc/grid-security/certificates",
                       vomsdir="/etc/grid-security/vomsdir")
    cred = verify_credential(load_proxy_file(path), trust)
    cred.identity, cred.fqans

Every check takes ``now=`` so tests never depend on the wall clock.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives.asymmetric.types import PrivateKeyTypes

from credentials import certbytes, proxy_chain, voms
from credentials.chain_cache import one_look
from credentials.errors import ACInvalid, MalformedCredential

__all__ = [
    "Credential",
    "ProxyPolicy",
    "ProxyType",
    "TrustStore",
    "VomsAttributes",
    "check_chain",
    "load_pem",
    "load_proxy_file",
    "verify_credential",
]

VomsAttributes = voms.VomsAttributes
ProxyType = proxy_chain.ProxyType
ProxyPolicy = proxy_chain.ProxyPolicy

# A proxy file is a few KB; anything much bigger is not a credential.
MAX_PEM_BYTES = 256 * 1024


@dataclass(frozen=True)
class TrustStore:
    """Where trust comes from: a hashed CA directory (with CRLs) and a vomsdir."""

    certdir: str
    vomsdir: str | None = None


@dataclass(frozen=True)
class Credential:
    """A parsed (and, after :func:`verify_credential`, verified) certificate chain.

    ``chain`` is leaf first: proxies, then the end-entity certificate, then
    any CA certificates the file carried. ``voms`` is empty until the ACs
    have been verified, unless the caller asked for them unverified.
    """

    chain: tuple[x509.Certificate, ...]
    key: PrivateKeyTypes | None = None
    identity_index: int = 0
    proxy_type: ProxyType = ProxyType.NONE
    limited: bool = False
    verified: bool = False
    voms: tuple[VomsAttributes, ...] = field(default=())
    voms_error: str | None = None  # why ACs were dropped (``ignore_bad_acs`` mode)

    @property
    def leaf(self) -> x509.Certificate:
        return self.chain[0]

    @property
    def end_entity(self) -> x509.Certificate:
        return self.chain[self.identity_index]

    @property
    def subject(self) -> str:
        return certbytes.subject_line(self.leaf)

    @property
    def issuer(self) -> str:
        return certbytes.issuer_line(self.leaf)

    @property
    def identity(self) -> str:
        """The user's DN: end-entity subject, OpenSSL one-line form."""
        return certbytes.subject_line(self.end_entity)

    @property
    def proxy_depth(self) -> int:
        return self.identity_index

    @property
    def not_before(self) -> datetime:
        return max(c.not_valid_before_utc for c in self.chain[: self.identity_index + 1])

    @property
    def not_after(self) -> datetime:
        return min(c.not_valid_after_utc for c in self.chain[: self.identity_index + 1])

    @property
    def fqans(self) -> tuple[str, ...]:
        """All FQANs, in AC order (the order LCMAPS maps them in)."""
        return tuple(f for ac in self.voms for f in ac.fqans)

    @property
    def vo(self) -> str | None:
        return self.voms[0].vo if self.voms else None

    def time_left(self, now: datetime | None = None) -> float:
        now = now or datetime.now(UTC)
        return max(0.0, (self.not_after - now).total_seconds())

    def pem_chain(self) -> bytes:
        """The chain as concatenated PEM (no key): what an XACML cert-chain carries."""
        from cryptography.hazmat.primitives import serialization  # not for one-shots

        return b"".join(c.public_bytes(serialization.Encoding.PEM) for c in self.chain)


def load_pem(data: bytes | str, *, source: str = "PEM data") -> Credential:
    """Parse a PEM chain, optionally with one private key (a proxy file).

    The chain is kept in file order (leaf first, as proxy files are written).
    The end-entity is located structurally (first certificate that is not a
    proxy of the next one); nothing is trusted yet.
    """
    return _load_pem(data, source)


def _load_pem(data: bytes | str, source: str) -> Credential:
    if isinstance(data, str):
        data = data.encode("utf-8", "surrogateescape")
    if len(data) > MAX_PEM_BYTES:
        raise MalformedCredential(f"{source}: larger than {MAX_PEM_BYTES} bytes")
    try:
        certs = certbytes.load_pem(data)
    except ValueError as exc:
        raise MalformedCredential(f"{source}: no parseable certificate ({exc})") from None
    key = _load_key(data, source)
    if key is not None and key.public_key() != certs[0].public_key():
        raise MalformedCredential(f"{source}: private key does not match the first certificate")
    ptype, limited, ee_index = proxy_chain.classify(certs)
    return Credential(
        chain=tuple(certs), key=key, identity_index=ee_index, proxy_type=ptype, limited=limited
    )


def load_proxy_file(path: str | os.PathLike[str], *, with_key: bool = True) -> Credential:
    """Read a proxy file (``X509_USER_PROXY`` style: cert, key, chain).

    ``with_key=False`` leaves the private key unread, as C LCAS/LCMAPS do: mapping needs the
    certificates only, and loading an RSA key costs the one-shot commands 50-100 ms.
    Certificates keep the DER read from the file (:func:`certbytes.load_pem
    <credentials.certbytes.load_pem>`), as :func:`load_pem`'s do.
    """
    try:
        with open(path, "rb") as fh:
            data = fh.read(MAX_PEM_BYTES + 1)
    except OSError as exc:
        raise MalformedCredential(f"{os.fspath(path)}: cannot read ({exc.strerror})") from None
    if not with_key:
        data = _KEY_BLOCK.sub(b"", data)
    return _load_pem(data, os.fspath(path))


#: a private key block of any kind (``RSA PRIVATE KEY``, ``PRIVATE KEY``, ``EC ...``)
_KEY_BLOCK = re.compile(rb"-----BEGIN ([A-Z0-9 ]*)PRIVATE KEY-----.*?-----END \1PRIVATE KEY-----",
                        re.DOTALL)


def _load_key(data: bytes, source: str) -> PrivateKeyTypes | None:
    marker = b"PRIVATE KEY-----"
    start = data.find(b"-----BEGIN ")
    while start != -1:
        end_of_line = data.find(b"\n", start)
        header = data[start:end_of_line]
        if header.endswith(marker) or header.rstrip(b"\r").endswith(marker):
            label = header[len(b"-----BEGIN ") :].rstrip(b"\r").rstrip(b"-")
            stop = data.find(b"-----END " + label + b"-----", start)
            if stop == -1:
                raise MalformedCredential(f"{source}: unterminated private key block")
            block = data[start : stop + len(b"-----END " + label + b"-----")]
            from cryptography.hazmat.primitives import serialization  # only with a key

            try:
                return serialization.load_pem_private_key(block, password=None)
            except (ValueError, TypeError) as exc:
                raise MalformedCredential(f"{source}: unreadable private key ({exc})") from None
        start = data.find(b"-----BEGIN ", start + 1)
    return None


def verify_credential(
    cred: Credential,
    trust: TrustStore,
    *,
    now: datetime | None = None,
    policy: ProxyPolicy | None = None,
    verify_voms: bool = True,
    ignore_bad_acs: bool = False,
) -> Credential:
    """Verify the chain (and the VOMS ACs) and return the credential marked verified.

    Raises a :class:`~credentials.errors.CredentialError` subclass naming
    the first failure. ``policy`` carries the site's proxy rules (limited
    proxies, path length, per-level lifetimes). With ``verify_voms`` false the
    ACs are not read at all (FQANs stay empty): unverified attributes are
    never handed out.

    A bad AC fails the whole credential by default. ``ignore_bad_acs=True``
    reproduces Debian's C LCMAPS 1.6.6 instead, which logs the AC failure and
    maps by DN alone: the FQANs are dropped and the reason is kept in
    ``voms_error``. Either way no unverified FQAN is ever returned.
    """
    with one_look():  # each file this rests on is stat-ed once per call
        return _verify(cred, trust, now or datetime.now(UTC), policy or ProxyPolicy(),
                       verify_voms, ignore_bad_acs)


def check_chain(cred: Credential, certdir: str, *, now: datetime, policy: ProxyPolicy) -> None:
    """:func:`verify_credential`'s chain checks alone, raising as it does: for a plugin that
    re-checks a credential its caller verified (a hit in the verified-chain cache)."""
    with one_look():
        proxy_chain.verify_chain(cred.chain, cred.identity_index, certdir, now=now,
                                 policy=policy)


def _verify(cred: Credential, trust: TrustStore, now: datetime, policy: ProxyPolicy,
            verify_voms: bool, ignore_bad_acs: bool) -> Credential:
    proxy_chain.verify_chain(cred.chain, cred.identity_index, trust.certdir, now=now,
                             policy=policy)
    acs: tuple[VomsAttributes, ...] = ()
    voms_error = None
    if verify_voms and trust.vomsdir is not None:
        try:
            acs = voms.verified_attributes(cred.chain, cred.identity_index, trust.vomsdir,
                                           trust.certdir, now=now)
            policy.check_voms_lifetime(acs, now=now)
        except ACInvalid as exc:
            if not ignore_bad_acs:
                raise
            acs, voms_error = (), exc.reason
    return replace(cred, verified=True, voms=acs, voms_error=voms_error)


def read_voms_unverified(cred: Credential) -> tuple[VomsAttributes, ...]:
    """The ACs as they claim to be, for display only (``inspect-proxy``)."""
    return voms.parse_attributes(cred.chain)
