"""The trust anchors and CRLs of a hashed CA directory, read once per state of its files.

A cold verification used to build an OpenSSL ``X509Store`` over the CA directory for
every chain (twice), OpenSSL re-reading and re-parsing the CA files each time, and to
check every CRL's signature on every query. Here the anchors are kept per CA directory:

* it holds the certificates of every ``<hash>.0``, ``<hash>.1`` ... file (consecutive
  suffixes, PEM, as OpenSSL's hashed-directory lookup reads them) whose subject hash
  is the file's name, parsed once, and remembers each file's state (inode, size, mtime);
* each verification gets a small ``X509Store`` of its own with the anchors its chain
  can reach (the verification time is a store setting OpenSSL only takes once, so a
  store must not be shared across clocks or threads);
* each verification ``stat``-s the directory. Creating, removing or renaming an entry
  changes its mtime; then every certificate file is ``stat``-ed and the store is read
  again if any changed. After a verification the files of the CAs on the path are
  ``stat``-ed (a rewrite in place leaves the directory alone); after a failure, all of
  them. A change found either way rebuilds the store and verifies once more, so a
  removed or added CA counts from the next query, as it did with a fresh store;
* a directory or file changed less than :data:`~credentials.chain_cache.RACY_SECONDS`
  ago may change again within the same mtime tick unseen: until it has settled, every
  query checks each certificate file (a changed directory) or reads the anchors afresh
  (a changed certificate file);
* a CRL is parsed when its file is (re)read and its signature checked once per issuer
  certificate; both live as long as the file's (inode, mtime, size), in the caller's
  bounded cache (``proxy_chain._crl_cache``).
"""

from __future__ import annotations

import hashlib
import os
import re
import threading
from collections.abc import Iterable, Sequence
from datetime import datetime

from cryptography import x509
from OpenSSL import crypto

from credentials import certbytes
from credentials.chain_cache import (
    BoundedLRU,
    FileState,
    MiB,
    dir_listing,
    file_state,
    settled,
    stat_of,
)
from credentials.errors import UntrustedIssuer

__all__ = ["Anchors", "CrlEntry", "anchors_for", "crls_for", "verify"]

_CRL_NAME = re.compile(r"r[0-9]")
_HASH = re.compile(r"[0-9a-f]{8}")


def _subject_hash(ossl: crypto.X509) -> str:
    return f"{int(ossl.subject_name_hash()):08x}"


def _hash_paths(certdir: str, stem: str, names: Sequence[str]) -> list[str]:
    """``<hash>.0``, ``<hash>.1`` ... up to the first missing suffix (OpenSSL's order)."""
    present = set(names)
    out: list[str] = []
    while f"{stem}.{len(out)}" in present:
        out.append(os.path.join(certdir, f"{stem}.{len(out)}"))
    return out


def _cert_paths(certdir: str) -> dict[str, list[str]]:
    """Issuer hash -> its certificate files, as the directory is now."""
    listing = dir_listing(certdir)
    if listing is None:
        return {}
    found = {}
    for stem, names in listing.by_stem.items():
        if _HASH.fullmatch(stem):
            paths = _hash_paths(certdir, stem, names)
            if paths:
                found[stem] = paths
    return found


class Anchors:
    """One CA directory's trust anchors and what they were read from (see the module doc)."""

    def __init__(self, certdir: str) -> None:
        self.certdir = certdir
        self.dir_state = file_state(certdir)
        self.dir_settled = settled(self.dir_state)
        #: issuer hash -> the files read for it; file -> its state when read
        self.by_hash = _cert_paths(certdir)
        self.files: dict[str, FileState] = {}
        #: by subject hash: (OpenSSL object, DER, cryptography object), in file order
        self.known: dict[str, list[tuple[crypto.X509, bytes, x509.Certificate]]] = {}
        #: subject DER -> subject hashes (a name can only have one hash, or none here)
        self.by_subject: dict[bytes, set[str]] = {}
        for stem, paths in self.by_hash.items():
            for path in paths:
                self._load(stem, path)
        self.files_settled = all(settled(s) for s in self.files.values())
        self.nbytes = 1024 + 4096 * len(self.known) + sum(len(p) for p in self.files)

    def _load(self, stem: str, path: str) -> None:
        try:
            with open(path, "rb") as fh:
                data = fh.read()
                st = os.fstat(fh.fileno())  # the state of what was read
        except OSError:  # unreadable, as OpenSSL skips it; a fix shows as a new state
            self.files[path] = file_state(path)
            return
        self.files[path] = (path, st.st_ino, st.st_size, st.st_mtime_ns)
        try:
            certs = certbytes.load_pem(data)
        except ValueError:
            return
        for cert in certs:
            ossl = certbytes.to_openssl(cert, keep=False)
            if _subject_hash(ossl) != stem:
                continue  # OpenSSL's lookup by hash would not find it under this name
            self.known.setdefault(stem, []).append((ossl, certbytes.der(cert), cert))
            self.by_subject.setdefault(certbytes.names(cert)[1], set()).add(stem)

    def _reachable(self, chain: Sequence[x509.Certificate]) -> list[crypto.X509] | None:
        """The anchors a path from ``chain`` can use: every CA whose subject is the issuer
        of a chain certificate or of such a CA, with all the CAs of its hash (OpenSSL
        compares names in a canonical form, equal forms share the hash). None when an
        issuer matches no subject byte for byte: then only OpenSSL's matching can tell."""
        sent = {certbytes.names(c)[1] for c in chain}
        todo = [certbytes.names(c)[0] for c in chain]
        seen: set[bytes] = set()
        stems: set[str] = set()
        while todo:
            issuer = todo.pop()
            if issuer in seen:
                continue
            seen.add(issuer)
            found = self.by_subject.get(issuer)
            if not found:
                if issuer not in sent:
                    return None
                continue
            for stem in found - stems:
                stems.add(stem)
                todo.extend(certbytes.names(c)[0] for _, _, c in self.known[stem])
        return [ossl for stem in sorted(stems) for ossl, _, _ in self.known[stem]]

    def verify(self, chain: Sequence[x509.Certificate], ossl: list[crypto.X509],
               now: datetime) -> list[crypto.X509]:
        """OpenSSL's verified chain (leaf first) for ``chain`` (``ossl`` its OpenSSL objects)
        at ``now``; raises X509StoreContextError.

        Each verification gets its own small ``X509Store`` holding the anchors it can
        reach: the verification time is a store setting, and OpenSSL keeps the first one
        set on a store, so a store cannot be shared across clocks (or threads)."""
        anchors = self._reachable(chain)
        if anchors is None:
            anchors = [o for entries in self.known.values() for o, _, _ in entries]
        store = crypto.X509Store()
        store.set_flags(crypto.X509StoreFlags.ALLOW_PROXY_CERTS)
        store.set_time(now.replace(tzinfo=None))
        for anchor in anchors:
            store.add_cert(anchor)
        return crypto.X509StoreContext(store, ossl[0], ossl[1:]).get_verified_chain()

    def current(self, hashes: Iterable[str]) -> bool:
        """The files of these issuer hashes are the ones read, unchanged."""
        listing = dir_listing(self.certdir)
        if listing is None:
            return False
        for stem in hashes:
            paths = _hash_paths(self.certdir, stem, listing.by_stem.get(stem, ()))
            if paths != self.by_hash.get(stem, []):
                return False
            if any(file_state(p) != self.files[p] for p in paths):
                return False
        return True

    def all_current(self) -> bool:
        """Every certificate file of the directory is one read, unchanged."""
        return self.current(set(_cert_paths(self.certdir)) | set(self.by_hash))

    def _stored(self, ossl: crypto.X509, stem: str) -> x509.Certificate | None:
        candidates = self.known.get(stem)
        if not candidates:
            return None
        data = crypto.dump_certificate(crypto.FILETYPE_ASN1, ossl)
        for _, der, cert in candidates:
            if der == data:
                return cert
        return None

    def certificate(self, ossl: crypto.X509) -> tuple[x509.Certificate, str]:
        """(cryptography object, subject hash) of a certificate OpenSSL put on a path."""
        stem = _subject_hash(ossl)
        cert = self._stored(ossl, stem)
        return (cert if cert is not None else ossl.to_cryptography()), stem

    def hashes_used(self, verified: Sequence[crypto.X509]) -> set[str]:
        """The subject hashes of the certificates of a path that came from the directory."""
        stems = ((c, _subject_hash(c)) for c in verified)
        return {stem for c, stem in stems if self._stored(c, stem) is not None}


#: one store per CA directory (a server uses one or two); bounded all the same
_anchors: BoundedLRU[str, Anchors] = BoundedLRU(16, 256 * MiB)
_anchors_lock = threading.Lock()


def _rebuild(certdir: str) -> Anchors:
    fresh = Anchors(certdir)
    _anchors.put(certdir, fresh, fresh.nbytes)
    return fresh


def anchors_for(certdir: str) -> Anchors:
    """The CA directory's store, checked against the directory's state (see the module doc)."""
    state = file_state(certdir)
    if state[1] == -1:
        raise UntrustedIssuer(f"CA directory {certdir} does not exist")
    with _anchors_lock:
        found = _anchors.get(certdir)
        if found is not None and found.files_settled:
            if found.dir_state == state and found.dir_settled:
                return found
            if found.all_current():
                found.dir_state, found.dir_settled = state, settled(state)
                return found
        return _rebuild(certdir)


def verify(certdir: str, chain: Sequence[x509.Certificate], ossl: list[crypto.X509],
           now: datetime) -> tuple[list[crypto.X509], Anchors]:
    """OpenSSL's verified chain against the CA directory's current trust anchors."""
    anchors = anchors_for(certdir)
    try:
        verified = anchors.verify(chain, ossl, now)
    except crypto.X509StoreContextError:
        if anchors.all_current():
            raise
        with _anchors_lock:
            anchors = _rebuild(certdir)
        return anchors.verify(chain, ossl, now), anchors
    if not anchors.current(anchors.hashes_used(verified[1:])):
        with _anchors_lock:
            anchors = _rebuild(certdir)
        return anchors.verify(chain, ossl, now), anchors
    return verified, anchors


#: a parsed CRL: ((inode, mtime_ns, size), CRL, its issuer's DER, the revoked serials,
#: the SHA-256 of the issuer certificates whose key verified its signature)
CrlEntry = tuple[tuple[int, int, int], x509.CertificateRevocationList, bytes, frozenset[int],
                 set[bytes]]


def crls_for(issuer: x509.Certificate, issuer_hash: str, certdir: str,
             cache: BoundedLRU[str, CrlEntry]
             ) -> list[tuple[x509.CertificateRevocationList, frozenset[int]]]:
    """(CRL, revoked serials) of the ``<hash>.r<N>`` files issued by ``issuer``; each file
    is parsed, and its signature checked, when it is read, not on every query."""
    listing = dir_listing(certdir)
    names = listing.by_stem.get(issuer_hash, ()) if listing is not None else ()
    subject = certbytes.names(issuer)[1]
    fingerprint = b""
    crls = []
    for name in names:
        if not _CRL_NAME.match(name, len(issuer_hash) + 1):
            continue
        _state, crl, crl_issuer, revoked, good = _load_crl(os.path.join(certdir, name), cache)
        if crl_issuer != subject and crl.issuer != issuer.subject:
            continue
        fingerprint = fingerprint or hashlib.sha256(certbytes.der(issuer)).digest()
        if fingerprint not in good:
            if not crl.is_signature_valid(issuer.public_key()):  # type: ignore[arg-type]
                raise UntrustedIssuer(
                    f"CRL of {certbytes.subject_line(issuer)} has a bad signature")
            good.add(fingerprint)
        crls.append((crl, revoked))
    return crls


def _load_crl(path: str, cache: BoundedLRU[str, CrlEntry]) -> CrlEntry:
    """A rewritten file (new inode, mtime or size) replaces its entry."""
    try:
        st = stat_of(path)
        if st is None:
            raise FileNotFoundError(f"{path} vanished")
        state = (st.st_ino, st.st_mtime_ns, st.st_size)
        cached = cache.get(path)
        if cached is not None and cached[0] == state:
            return cached
        with open(path, "rb") as fh:
            data = fh.read()
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
               else x509.load_der_x509_crl(data))
        revoked = frozenset(r.serial_number for r in crl)
    except (OSError, ValueError) as exc:
        raise UntrustedIssuer(f"CRL {path} is unreadable: {exc}") from None
    entry: CrlEntry = (state, crl, crl.issuer.public_bytes(), revoked, set())
    cache.put(path, entry, len(data))
    return entry

