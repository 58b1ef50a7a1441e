"""X.509 chain verification with proxy certificates (RFC 3820 and legacy Globus).

This is the only module that imports pyOpenSSL: the ``cryptography`` package
cannot verify proxy chains, OpenSSL can (``X509_V_FLAG_ALLOW_PROXY_CERTS``).
The order of checks gives each failure its own exception and a message an
admin can act on:

1. structure and validity window of every certificate (``now`` injectable);
2. the end-entity chain up to a CA in the hashed CA directory (OpenSSL);
3. revocation of the end-entity and intermediate CAs from ``<hash>.r<N>``
   CRLs, checked here explicitly because OpenSSL's proxy path may skip CRLs;
4. each proxy level: signed by the certificate above it, named after it
   (issuer + one CN), path-length constraints; RFC 3820 chains then go
   through OpenSSL as a whole once more;
5. the site's :class:`ProxyPolicy` (limited proxies, per-level lifetimes).
"""

from __future__ import annotations

import enum
import glob
import itertools
import os
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from cryptography.hazmat.primitives.serialization import Encoding
from OpenSSL import crypto

from credentials.chain_cache import (
    BoundedLRU,
    MiB,
    Verdict,
    VerdictCache,
    canonical_chain_key,
    chain_key,
    watch_files,
)
from credentials.dn import DNError, oid_to_dotted, oneline, read_tlv
from credentials.errors import (
    Expired,
    LifetimeExceeded,
    LimitedProxyRefused,
    MalformedCredential,
    NotAProxy,
    NotYetValid,
    PathLengthExceeded,
    Revoked,
    UntrustedIssuer,
)

__all__ = ["ProxyPolicy", "ProxyType", "classify", "subject_hash", "verify_chain"]

OID_PROXY_CERT_INFO = x509.ObjectIdentifier("1.3.6.1.5.5.7.1.14")
OID_PROXY_CERT_INFO_GT3 = x509.ObjectIdentifier("1.3.6.1.4.1.3536.1.222")
OID_POLICY_INHERIT_ALL = "1.3.6.1.5.5.7.21.1"
OID_POLICY_LIMITED = "1.3.6.1.4.1.3536.1.1.1.9"
_LEGACY_CNS = {"proxy": False, "limited proxy": True}


class ProxyType(enum.Enum):
    NONE = "none"  # a plain end-entity chain
    RFC3820 = "RFC 3820"
    LEGACY = "legacy"  # Globus GT2: CN=proxy / CN=limited proxy, no extension


@dataclass(frozen=True)
class ProxyPolicy:
    """Site rules on top of plain chain validity (the verify_proxy plugin's options).

    ``max_level_ttl`` limits the lifetime of proxy levels: key 1 is the proxy
    the end-entity signed, 2 the one below it, ..., ``"L"`` the leaf.
    """

    allow_limited: bool = True
    require_limited: bool = False
    max_level_ttl: dict[int | str, timedelta] = field(default_factory=dict)
    max_voms_ttl: timedelta | None = None
    only_lifetime_checks: bool = False

    def check_voms_lifetime(self, acs: Sequence[Any], *, now: datetime) -> None:
        if self.max_voms_ttl is None:
            return
        for ac in acs:
            if ac.not_after - ac.not_before > self.max_voms_ttl:
                raise LifetimeExceeded(
                    f"VOMS AC for {ac.vo} lives {ac.not_after - ac.not_before}, "
                    f"more than the allowed {self.max_voms_ttl}"
                )


@dataclass(frozen=True)
class _ProxyInfo:
    legacy: bool
    limited: bool
    path_len: int | None


def _der_int(body: bytes) -> int:
    return int.from_bytes(body, "big", signed=True)


def _parse_proxy_cert_info(value: bytes) -> tuple[int | None, str]:
    """(pCPathLenConstraint, policy language OID) from ProxyCertInfo DER."""
    try:
        return _proxy_cert_info(value)
    except DNError as exc:  # bad DER inside the extension: the certificate is malformed
        raise MalformedCredential(f"ProxyCertInfo is not valid DER: {exc}") from None


def _proxy_cert_info(value: bytes) -> tuple[int | None, str]:
    tag, pos, _ = read_tlv(value, 0)
    if tag != 0x30:
        raise MalformedCredential("ProxyCertInfo is not a SEQUENCE")
    path_len = None
    tag, start, stop = read_tlv(value, pos)
    if tag == 0x02:
        path_len = _der_int(value[start:stop])
        tag, start, stop = read_tlv(value, stop)
    if tag != 0x30:
        raise MalformedCredential("ProxyCertInfo has no ProxyPolicy")
    otag, ostart, ostop = read_tlv(value, start)
    if otag != 0x06:
        raise MalformedCredential("ProxyPolicy has no policy language")
    return path_len, oid_to_dotted(value[ostart:ostop])


def proxy_info(cert: x509.Certificate, issuer: x509.Certificate | None) -> _ProxyInfo | None:
    """Describe ``cert`` as a proxy of ``issuer``, or None if it is not a proxy."""
    for oid in (OID_PROXY_CERT_INFO, OID_PROXY_CERT_INFO_GT3):
        try:
            ext = cert.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        value = ext.value
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        path_len, language = _parse_proxy_cert_info(raw)
        return _ProxyInfo(False, language == OID_POLICY_LIMITED, path_len)
    if issuer is None or cert.issuer != issuer.subject:
        return None
    rdns = list(cert.subject.rdns)
    if len(rdns) != len(issuer.subject.rdns) + 1 or x509.Name(rdns[:-1]) != issuer.subject:
        return None
    last = list(rdns[-1])
    if len(last) == 1 and last[0].oid == x509.NameOID.COMMON_NAME:
        limited = _LEGACY_CNS.get(str(last[0].value))
        if limited is not None:
            return _ProxyInfo(True, limited, None)
    return None


def classify(certs: Sequence[x509.Certificate]) -> tuple[ProxyType, bool, int]:
    """(proxy type, limited?, index of the end-entity) of a leaf-first chain."""
    if not certs:
        raise MalformedCredential("no certificate in the chain")
    index = 0
    kinds: set[bool] = set()
    limited = False
    while index < len(certs):
        issuer = certs[index + 1] if index + 1 < len(certs) else None
        info = proxy_info(certs[index], issuer)
        if info is None:
            break
        kinds.add(info.legacy)
        limited = limited or info.limited
        index += 1
    if index == len(certs):
        raise MalformedCredential("chain holds proxies but no end-entity certificate")
    if index == 0:
        return ProxyType.NONE, False, 0
    ptype = ProxyType.LEGACY if True in kinds else ProxyType.RFC3820
    return ptype, limited, index


def subject_hash(cert: x509.Certificate) -> str:
    """OpenSSL's subject-name hash (``openssl x509 -hash``): the CA directory's file names."""
    return f"{int(crypto.X509.from_cryptography(cert).subject_name_hash()):08x}"


def _describe(cert: x509.Certificate) -> str:
    return oneline(cert.subject)


def _check_times(chain: Sequence[x509.Certificate], now: datetime) -> None:
    for cert in chain:
        if now < cert.not_valid_before_utc:
            raise NotYetValid(
                f"certificate {_describe(cert)} is not valid before "
                f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M:%S}Z"
            )
        if now > cert.not_valid_after_utc:
            raise Expired(
                f"certificate {_describe(cert)} expired at "
                f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M:%S}Z"
            )


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    key: CertificateIssuerPublicKeyTypes = issuer.public_key()  # type: ignore[assignment]
    hash_alg = cert.signature_hash_algorithm
    try:
        if isinstance(key, rsa.RSAPublicKey) and hash_alg is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), hash_alg)
        elif isinstance(key, ec.EllipticCurvePublicKey) and hash_alg is not None:
            key.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(hash_alg))
        else:
            cert.verify_directly_issued_by(issuer)
    except (InvalidSignature, ValueError, TypeError):
        return False
    return True


# OpenSSL verification error codes worth their own exception.
_EXPIRED, _NOT_YET_VALID, _REVOKED = 10, 9, 23
_PATH_LENGTH = 38  # X509_V_ERR_PROXY_PATH_LENGTH_EXCEEDED


def _openssl_verify(
    leaf: x509.Certificate,
    untrusted: Sequence[x509.Certificate],
    certdir: str,
    now: datetime,
    allow_proxies: bool,
) -> list[x509.Certificate]:
    store = crypto.X509Store()
    try:
        store.load_locations(None, capath=certdir)  # type: ignore[arg-type]
    except crypto.Error as exc:
        raise UntrustedIssuer(f"CA directory {certdir} is unusable: {exc}") from None
    if allow_proxies:
        store.set_flags(crypto.X509StoreFlags.ALLOW_PROXY_CERTS)
    store.set_time(now.replace(tzinfo=None))
    ctx = crypto.X509StoreContext(
        store,
        crypto.X509.from_cryptography(leaf),
        [crypto.X509.from_cryptography(c) for c in untrusted],
    )
    try:
        verified = ctx.get_verified_chain()
    except crypto.X509StoreContextError as exc:
        code = exc.errors[0] if exc.errors else -1
        depth = exc.errors[1] if len(exc.errors) > 1 else 0
        who = _describe(exc.certificate.to_cryptography()) if exc.certificate else "?"
        text = exc.errors[2] if len(exc.errors) > 2 else str(exc)
        message = f"certificate {who} (depth {depth}): {text}"
        if code == _EXPIRED:
            raise Expired(message) from None
        if code == _NOT_YET_VALID:
            raise NotYetValid(message) from None
        if code == _REVOKED:
            raise Revoked(message) from None
        if code == _PATH_LENGTH:
            raise PathLengthExceeded(message) from None
        if "proxy" in str(text).lower():
            raise NotAProxy(message) from None
        raise UntrustedIssuer(message) from None
    return [c.to_cryptography() for c in verified]


#: Parsed CRLs, one entry per CRL path: a rewritten file (new inode, mtime or size) replaces
#: its entry. The paths come from the CA directory, so the count is the site's (an IGTF bundle
#: has a few hundred CRLs); the bytes bound (PEM/DER as read) keeps a few very large CRLs from
#: growing a worker without limit. Past either bound a CRL is simply read again.
CRL_CACHE_ENTRIES = 1024
CRL_CACHE_BYTES = 128 * MiB
_CrlState = tuple[int, int, int]  # inode, mtime_ns, size
_crl_cache: BoundedLRU[str, tuple[_CrlState, x509.CertificateRevocationList]] = BoundedLRU(
    CRL_CACHE_ENTRIES, CRL_CACHE_BYTES
)


def _crls_for(issuer: x509.Certificate, certdir: str) -> list[x509.CertificateRevocationList]:
    crls = []
    for path in sorted(glob.glob(os.path.join(certdir, subject_hash(issuer) + ".r[0-9]*"))):
        try:
            st = os.stat(path)
            state = (st.st_ino, st.st_mtime_ns, st.st_size)
            cached = _crl_cache.get(path)
            if cached is not None and cached[0] == state:
                crl = cached[1]
            else:
                with open(path, "rb") as fh:
                    data = fh.read()
                crl = (
                    x509.load_pem_x509_crl(data)
                    if b"-----BEGIN" in data
                    else x509.load_der_x509_crl(data)
                )
                _crl_cache.put(path, (state, crl), len(data))
        except (OSError, ValueError) as exc:
            raise UntrustedIssuer(f"CRL {path} is unreadable: {exc}") from None
        if crl.issuer == issuer.subject:
            crls.append(crl)
    return crls


def _check_revocation(
    path: Sequence[x509.Certificate], certdir: str, now: datetime
) -> datetime | None:
    """``path`` is the verified EE-to-root chain; every non-root is checked.

    Returns the earliest ``nextUpdate`` of the CRLs consulted (None: none has one).
    """
    earliest: datetime | None = None
    for cert, issuer in itertools.pairwise(path):
        for crl in _crls_for(issuer, certdir):
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                raise UntrustedIssuer(f"CRL of {_describe(issuer)} has a bad signature")
            if crl.next_update_utc is not None and crl.next_update_utc < now:
                raise UntrustedIssuer(
                    f"CRL of {_describe(issuer)} is out of date "
                    f"(next update was {crl.next_update_utc:%Y-%m-%d %H:%M:%S}Z)"
                )
            if crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None:
                raise Revoked(f"certificate {_describe(cert)} is revoked by its CA")
            if crl.next_update_utc is not None:
                earliest = min(earliest or crl.next_update_utc, crl.next_update_utc)
    return earliest


def _check_proxy_levels(chain: Sequence[x509.Certificate], ee_index: int) -> list[_ProxyInfo]:
    infos: list[_ProxyInfo] = []
    for level in range(ee_index - 1, -1, -1):  # from the proxy the EE signed, down to the leaf
        cert, issuer = chain[level], chain[level + 1]
        info = proxy_info(cert, issuer)
        if info is None:
            raise NotAProxy(f"certificate {_describe(cert)} is not a proxy of its issuer")
        if cert.issuer != issuer.subject or not _signed_by(cert, issuer):
            raise UntrustedIssuer(f"proxy {_describe(cert)} is not signed by {_describe(issuer)}")
        rdns = list(cert.subject.rdns)
        if x509.Name(rdns[:-1]) != issuer.subject or len(list(rdns[-1])) != 1:
            raise NotAProxy(f"proxy {_describe(cert)} is not named after its issuer")
        infos.append(info)
        # A proxy with pCPathLenConstraint N may have at most N proxies below it.
        if info.path_len is not None and level > info.path_len:
            raise PathLengthExceeded(
                f"proxy {_describe(cert)} allows {info.path_len} further proxy level(s), "
                f"the chain has {level}"
            )
    return infos


def _check_policy(
    chain: Sequence[x509.Certificate], ee_index: int, limited: bool, policy: ProxyPolicy
) -> None:
    if limited and not policy.allow_limited:
        raise LimitedProxyRefused("limited proxies are not accepted here")
    if policy.require_limited and not limited:
        raise LimitedProxyRefused("a limited proxy is required here")
    for key, ttl in policy.max_level_ttl.items():
        index = 0 if key == "L" else ee_index - int(key)
        if not 0 <= index < ee_index:
            continue
        cert = chain[index]
        life = cert.not_valid_after_utc - cert.not_valid_before_utc
        if life > ttl:
            raise LifetimeExceeded(
                f"proxy level {key} ({_describe(cert)}) lives {life}, more than the allowed {ttl}"
            )


#: Verified chains by what was verified (see :mod:`credentials.chain_cache` for keys and bounds).
CACHE: VerdictCache[Verdict] = VerdictCache()


def verify_chain(
    chain: Sequence[x509.Certificate],
    ee_index: int,
    certdir: str,
    *,
    now: datetime,
    policy: ProxyPolicy,
) -> None:
    """Verify a leaf-first chain whose end-entity is ``chain[ee_index]``; raise on failure.

    A chain that verified before is answered from :data:`CACHE` while its
    certificates, CRLs and CA files are unchanged and ``now`` is inside their
    validity (see :mod:`credentials.chain_cache`); the policy is applied every time.
    """
    if not os.path.isdir(certdir):
        raise UntrustedIssuer(f"CA directory {certdir} does not exist")
    if policy.only_lifetime_checks:
        found = (proxy_info(chain[i], chain[i + 1]) for i in range(ee_index))
        infos = [info for info in found if info is not None]
        _check_policy(chain, ee_index, any(i.limited for i in infos), policy)
        return
    presented = chain_key(chain, ee_index, certdir)
    verdict = CACHE.get(presented, now)
    if verdict is None:
        verdict = _verify_in_full(chain, ee_index, certdir, now)
        CACHE.put(presented, verdict.key, verdict, verdict.nbytes)
    _check_policy(chain, ee_index, verdict.limited, policy)


def _verify_in_full(
    chain: Sequence[x509.Certificate], ee_index: int, certdir: str, now: datetime
) -> Verdict:
    _check_times(chain[: ee_index + 1], now)
    path = _openssl_verify(chain[ee_index], chain[ee_index + 1 :], certdir, now,
                           allow_proxies=False)
    crl_due = _check_revocation(path, certdir, now)
    infos = _check_proxy_levels(chain, ee_index)
    if infos and not any(i.legacy for i in infos):
        _openssl_verify(chain[0], chain[1:], certdir, now, allow_proxies=True)
    involved = [*chain[: ee_index + 1], *path]
    not_after = min(c.not_valid_after_utc for c in involved)
    # the cache key: what was verified (path[0] is the EE, path[-1] the trust anchor)
    intermediates = tuple(c.public_bytes(Encoding.DER) for c in path[1:-1])
    return Verdict(
        not_before=max(c.not_valid_before_utc for c in involved),
        not_after=min(not_after, crl_due) if crl_due is not None else not_after,
        limited=any(i.limited for i in infos),
        files=watch_files(certdir, (subject_hash(c) for c in path[1:])),
        key=canonical_chain_key(chain[: ee_index + 1], intermediates, ee_index, certdir),
        intermediates=intermediates,
    )
