"""X.509 chain verification with proxy certificates (RFC 3820 and legacy Globus).

The ``cryptography`` package cannot verify proxy chains, OpenSSL can
(``X509_V_FLAG_ALLOW_PROXY_CERTS``, through pyOpenSSL in :mod:`credentials.ca_store`).
A chain with proxies is verified in two parts, each by OpenSSL once: the end-entity's
own chain up to the CA directory, which every proxy the user makes rests on and so is
remembered on its own (:data:`CACHE`), then the proxies below it with the end-entity as
their only trust anchor. A user's fresh proxy therefore costs its own checks, not a new
walk to the CA and its CRLs. The order of checks gives each failure its own exception and
a message an admin can act on:

1. the validity window of the end-entity and every proxy (``now`` injectable);
2. the proxy structure, no signatures yet: each level is a proxy of the certificate
   above it (ProxyCertInfo, or legacy ``CN=proxy``/``CN=limited proxy``), named after
   it (its subject plus one single-valued RDN), within every pCPathLenConstraint
   above it;
3. the end-entity's chain: OpenSSL up to a CA in the directory, then revocation of the
   end-entity and intermediate CAs from ``<hash>.r<N>`` CRLs, checked here because
   OpenSSL's CRL checking is not switched on (it would not refuse an out-of-date CRL the
   way sites expect); remembered while its files are unchanged;
4. RFC 3820 proxies: OpenSSL with ``ALLOW_PROXY_CERTS`` and ``PARTIAL_CHAIN``, the
   end-entity the one certificate in the store, so a path must end at it (every proxy
   signature and the RFC 3820 rules below); legacy proxies: each proxy's signature here,
   which OpenSSL cannot check (to it a legacy proxy is an end-entity certificate issued
   by another end-entity);
5. the site's :class:`ProxyPolicy` (limited proxies, per-level lifetimes).

Who checks what. For RFC 3820 proxies the signatures are OpenSSL's alone (the Python
check that repeated them is gone), as are rules Python never checked: the added RDN
must be a CN, a proxy must not be a CA nor carry subject/issuer alternative names,
its issuer's key usage must allow signing, no unknown critical extension. Step 2
stays ours although OpenSSL repeats part of it: it names the exact fault (path length
N, naming) before any signature is looked at. Legacy proxies (signatures, naming),
limited proxies (a Globus policy language OpenSSL does not interpret), CRLs and
per-level lifetimes are ours alone. When OpenSSL refuses a proxy, the Python signature
check runs once more, only to say which proxy is not signed by which.
"""

from __future__ import annotations

import enum
import itertools
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from stat import S_ISDIR
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPublicKeyTypes
from OpenSSL import crypto

from credentials import ca_store, certbytes
from credentials.chain_cache import (
    BoundedLRU,
    MiB,
    Verdict,
    VerdictCache,
    canonical_chain_key,
    chain_key,
    stat_of,
    watch_files,
)
from credentials.dn import DNError, oid_to_dotted, read_tlv
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


class _ProxyInfo:
    """One proxy level's kind (a plain class: a dataclass costs a one-shot ~0.5 ms to make)."""

    __slots__ = ("legacy", "limited", "path_len")

    def __init__(self, legacy: bool, limited: bool, path_len: int | None) -> None:
        self.legacy, self.limited, self.path_len = legacy, limited, path_len


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
        if not certbytes.may_carry(cert, oid):
            continue
        try:
            ext = cert.extensions.get_extension_for_oid(oid)
        except x509.ExtensionNotFound:
            continue
        value = ext.value
        raw = value.value if isinstance(value, x509.UnrecognizedExtension) else b""
        path_len, language = _parse_proxy_cert_info(raw)
        return _ProxyInfo(False, language == OID_POLICY_LIMITED, path_len)
    if issuer is None or not certbytes.same_issuer(cert, issuer):
        return None
    if certbytes.extra_rdn(cert, issuer) is None:  # not the issuer's name plus one RDN
        return None
    last = list(cert.subject.rdns[-1])
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
    return certbytes.subject_line(cert)


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
    key: CertificateIssuerPublicKeyTypes = certbytes.public_key(issuer)  # type: ignore[assignment]
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


def _openssl_error(exc: crypto.X509StoreContextError) -> Exception:
    code = exc.errors[0] if exc.errors else -1
    depth = exc.errors[1] if len(exc.errors) > 1 else 0
    who = _describe(exc.certificate.to_cryptography()) if exc.certificate else "?"
    text = exc.errors[2] if len(exc.errors) > 2 else str(exc)
    message = f"certificate {who} (depth {depth}): {text}"
    if code == _EXPIRED:
        return Expired(message)
    if code == _NOT_YET_VALID:
        return NotYetValid(message)
    if code == _REVOKED:
        return Revoked(message)
    if code == _PATH_LENGTH:
        return PathLengthExceeded(message)
    if "proxy" in str(text).lower():
        return NotAProxy(message)
    return UntrustedIssuer(message)


def _openssl_verify(
    chain: Sequence[x509.Certificate], certdir: str, now: datetime
) -> tuple[list[x509.Certificate], list[str]]:
    """Verify the end-entity ``chain[0]`` up to the CA directory once; (EE-to-root path,
    subject hashes of path[1:])."""
    ossl = [certbytes.to_openssl(c, keep=True) for c in chain]
    try:
        verified, anchors = ca_store.verify(certdir, chain, ossl, now)
    except crypto.X509StoreContextError as exc:
        raise _openssl_error(exc) from None
    if not verified or crypto.dump_certificate(
            crypto.FILETYPE_ASN1, verified[0]) != certbytes.der(chain[0]):
        raise UntrustedIssuer(f"certificate {_describe(chain[0])} is not on the "
                              "path OpenSSL verified")  # never seen: fail closed
    above = [anchors.certificate(c) for c in verified[1:]]
    return [chain[0], *(c for c, _ in above)], [h for _, h in above]


_PROXY_FLAGS = crypto.X509StoreFlags.ALLOW_PROXY_CERTS | crypto.X509StoreFlags.PARTIAL_CHAIN


def _openssl_proxies(chain: Sequence[x509.Certificate], ee_index: int, now: datetime) -> None:
    """OpenSSL's RFC 3820 verification of the proxies below an end-entity whose own chain
    verified: the end-entity is the only trust anchor (``PARTIAL_CHAIN``), so a path must
    end at it. Every proxy signature and OpenSSL's proxy rules run here; a failure is
    explained by :func:`_check_signatures` when a signature is what is wrong."""
    ee = certbytes.to_openssl(chain[ee_index], keep=True)
    leaf, *between = (certbytes.to_openssl(c, keep=False) for c in chain[:ee_index])
    store = crypto.X509Store()
    store.set_flags(_PROXY_FLAGS)
    store.set_time(now.replace(tzinfo=None))
    store.add_cert(ee)
    try:
        crypto.X509StoreContext(store, leaf, between).verify_certificate()
    except crypto.X509StoreContextError as exc:
        _check_signatures(chain, ee_index)
        raise _openssl_error(exc) from None


#: Parsed CRLs, one entry per CRL path: a rewritten file (new inode, mtime or size) replaces
#: its entry. The paths come from the CA directory, so the count is the site's (an IGTF bundle
#: has a few hundred CRLs); the bytes bound (PEM/DER as read) keeps a few very large CRLs from
#: growing a worker without limit. Past either bound a CRL is simply read again. An entry
#: also remembers which issuers' keys verified its signature, so that is checked once.
CRL_CACHE_ENTRIES = 1024
CRL_CACHE_BYTES = 128 * MiB
_crl_cache: BoundedLRU[str, ca_store.CrlEntry] = BoundedLRU(CRL_CACHE_ENTRIES, CRL_CACHE_BYTES)


def _check_revocation(
    path: Sequence[x509.Certificate], hashes: Sequence[str], certdir: str, now: datetime
) -> datetime | None:
    """``path`` is the verified EE-to-root chain, ``hashes`` the subject hashes of
    ``path[1:]``; every non-root is checked.

    Returns the earliest ``nextUpdate`` of the CRLs consulted (None: none has one).
    """
    earliest: datetime | None = None
    for (cert, issuer), issuer_hash in zip(itertools.pairwise(path), hashes, strict=False):
        for crl, revoked in ca_store.crls_for(issuer, issuer_hash, certdir, _crl_cache):
            next_update = crl.next_update_utc
            if next_update is not None and next_update < now:
                raise UntrustedIssuer(
                    f"CRL of {_describe(issuer)} is out of date "
                    f"(next update was {next_update:%Y-%m-%d %H:%M:%S}Z)"
                )
            if cert.serial_number in revoked:
                raise Revoked(f"certificate {_describe(cert)} is revoked by its CA")
            if next_update is not None:
                earliest = min(earliest or next_update, next_update)
    return earliest


def _check_proxy_levels(chain: Sequence[x509.Certificate], ee_index: int) -> list[_ProxyInfo]:
    """Each level's proxy structure (no signatures): a proxy of the certificate above it,
    named after it, within the path lengths above it."""
    infos: list[_ProxyInfo] = []
    for level in range(ee_index - 1, -1, -1):  # from the proxy the EE signed, down to the leaf
        cert, issuer = chain[level], chain[level + 1]
        info = proxy_info(cert, issuer)
        if info is None:
            raise NotAProxy(f"certificate {_describe(cert)} is not a proxy of its issuer")
        if not certbytes.same_issuer(cert, issuer):
            raise UntrustedIssuer(f"proxy {_describe(cert)} is not signed by {_describe(issuer)}")
        if certbytes.extra_rdn(cert, issuer) != 1:
            raise NotAProxy(f"proxy {_describe(cert)} is not named after its issuer")
        infos.append(info)
        # A proxy with pCPathLenConstraint N may have at most N proxies below it.
        if info.path_len is not None and level > info.path_len:
            raise PathLengthExceeded(
                f"proxy {_describe(cert)} allows {info.path_len} further proxy level(s), "
                f"the chain has {level}"
            )
    return infos


def _check_signatures(chain: Sequence[x509.Certificate], ee_index: int) -> None:
    """Each proxy is signed by the certificate above it (legacy proxies: OpenSSL cannot)."""
    for level in range(ee_index - 1, -1, -1):
        cert, issuer = chain[level], chain[level + 1]
        if not _signed_by(cert, issuer):
            raise UntrustedIssuer(f"proxy {_describe(cert)} is not signed by {_describe(issuer)}")


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
    st = stat_of(certdir)
    if st is None or not S_ISDIR(st.st_mode):
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
    if ee_index == 0:
        return _verify_end_entity(chain, certdir, now)
    infos = _check_proxy_levels(chain, ee_index)
    upper = _end_entity_verdict(chain, ee_index, certdir, now)
    if any(i.legacy for i in infos):
        _check_signatures(chain, ee_index)
    else:
        _openssl_proxies(chain, ee_index, now)
    proxies = chain[:ee_index]
    return Verdict(
        not_before=max(upper.not_before, *(c.not_valid_before_utc for c in proxies)),
        not_after=min(upper.not_after, *(c.not_valid_after_utc for c in proxies)),
        limited=any(i.limited for i in infos),
        files=upper.files,
        key=canonical_chain_key(chain[: ee_index + 1], upper.intermediates, ee_index, certdir),
        intermediates=upper.intermediates,
    )


def _end_entity_verdict(
    chain: Sequence[x509.Certificate], ee_index: int, certdir: str, now: datetime
) -> Verdict:
    """The verdict on the end-entity's own chain, from :data:`CACHE` when it holds: every
    proxy a user makes rests on the same one, so a fresh proxy costs its own checks only."""
    upper = chain[ee_index:]
    presented = chain_key(upper, 0, certdir)
    verdict = CACHE.get(presented, now)
    if verdict is None:
        verdict = _verify_end_entity(upper, certdir, now)
        CACHE.put(presented, verdict.key, verdict, verdict.nbytes)
    return verdict


def _verify_end_entity(chain: Sequence[x509.Certificate], certdir: str, now: datetime
                       ) -> Verdict:
    """OpenSSL from ``chain[0]`` up to a CA of the directory, then the CRLs."""
    path, hashes = _openssl_verify(chain, certdir, now)
    crl_due = _check_revocation(path, hashes, certdir, now)
    not_after = min(c.not_valid_after_utc for c in path)
    # the cache key: what was verified (path[0] is the EE, path[-1] the trust anchor)
    intermediates = tuple(certbytes.der(c) for c in path[1:-1])
    return Verdict(
        not_before=max(c.not_valid_before_utc for c in path),
        not_after=min(not_after, crl_due) if crl_due is not None else not_after,
        limited=False,
        files=watch_files(certdir, hashes),
        key=canonical_chain_key(chain[:1], intermediates, 0, certdir),
        intermediates=intermediates,
    )
