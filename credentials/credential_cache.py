"""Verified credentials remembered by what was verified, found again by the PEM bytes sent.

A PEP asks about the same user's proxy many times during its life; a
worker-node pilot presents the same proxy on every connection. Parsing the
PEM, classifying the chain and checking the VOMS ACs costs far more than
the rest of a decision, and the answer is the same every time as long as:

* ``now`` lies inside the credential's window: every certificate and AC
  valid, and no CRL consulted past its ``nextUpdate``;
* nothing the verdict rests on changed: the CA directory and the files of
  each issuer on the path (see :mod:`credentials.chain_cache`), and for each VO
  the ``vomsdir``, ``vomsdir/<vo>`` and the files in it. Each is ``stat``-ed
  on every hit, so a new CRL, a removed CA or an edited ``.lsc`` file counts
  from the next query on.

Only successes are kept; refusals are verified (and refused) again each time.
One cache serves one trust store and one verification setting.

Keys. An entry (the verified :class:`~credentials.credential.Credential`) is keyed
by the SHA-256 of what was verified: the verified chain's canonical key (leaf
through end-entity plus the path's intermediates, trust anchor excluded: see
:mod:`credentials.chain_cache`), the signed bytes and signature of every VOMS AC
that was verified, the private key if the PEM carried one (it was checked against
the leaf), and the settings (CA dir, vomsdir, ``verify_voms``, policy). The cached
credential's ``chain`` is that canonical chain, so junk certificates, PEM
whitespace and extra blocks sent along cost neither an entry nor bytes in it. A
bounded index from the SHA-256 of the PEM bytes to that key lets a repeat query
skip parsing; a new byte form of a known chain is verified in full once, then
indexed to the same entry.

Bounds. :data:`MAX_ENTRIES` = 20,000 credentials and :data:`MAX_BYTES` = 64 MiB
accounted, least recently used evicted first, per cache (a server worker has one
for users and one for PEP proxies). Accounted bytes are the canonical chain's DER,
the verified ACs' bytes, the private key's DER, the watched file names, plus
:data:`~credentials.chain_cache.ENTRY_OVERHEAD`. Measured with the test PKI: a VOMS
proxy accounts for about 7 KiB and a plain proxy about 3.5 KiB, so the byte bound
binds first for VOMS proxies (about 9,000 of them) and the two bounds meet for
plain ones. The real footprint is about 3.5 times the accounted bytes (parsed
certificate objects: about 24 KiB per VOMS credential), so the default caps a
worker's credential cache near 200 MiB, what the old 8,192-entry cache reached with
ordinary proxies, while junk no longer counts. 9,000 distinct live VOMS proxies per
worker is more than a large site's pilots and users present within a proxy's
lifetime; a smaller machine passes a smaller ``max_bytes``. The PEM-hash index holds
``index_entries`` (default twice ``max_entries``) entries of about 200 bytes.
"""

from __future__ import annotations

import hashlib
import operator
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from credentials import certbytes, proxy_chain, voms
from credentials.chain_cache import (
    ENTRY_OVERHEAD,
    FileState,
    MiB,
    Remembered,
    VerdictCache,
    chain_key,
    dir_listing,
    file_state,
    files_size,
    forget_chain_key,
    one_look,
)
from credentials.credential import Credential, TrustStore, load_pem, verify_credential
from credentials.proxy_chain import ProxyPolicy

__all__ = ["MAX_BYTES", "MAX_ENTRIES", "CredentialCache"]

MAX_ENTRIES = 20_000
MAX_BYTES = 64 * MiB


@dataclass(frozen=True)
class _Entry(Remembered):
    credential: Credential


def _der(cert: x509.Certificate) -> bytes:
    return certbytes.der(cert)


def _watch_dir(path: str, *, files_only: bool) -> list[FileState]:
    """``path`` and its entries (its regular files only, with ``files_only``), sorted."""
    listing = dir_listing(path)
    names = [] if listing is None else [  # as glob("*") lists them: no dot files
        n for n in listing.names if n[0] != "." and (n in listing.files or not files_only)]
    return [file_state(path), *(file_state(os.path.join(path, n)) for n in names)]


class CredentialCache:
    """``verify_credential(load_pem(pem), trust, ...)``, answered from memory when it may be.

    ``max_entries`` and ``max_bytes`` bound the verified credentials; ``index_entries``
    (default twice ``max_entries``) bounds the PEM-hash index.
    """

    def __init__(
        self, trust: TrustStore, *, policy: ProxyPolicy | None = None, verify_voms: bool = True,
        max_entries: int = MAX_ENTRIES, max_bytes: int = MAX_BYTES,
        index_entries: int | None = None,
    ) -> None:  # fmt: skip
        self.trust = trust
        self.policy = policy or ProxyPolicy()
        self.verify_voms = verify_voms
        # the settings are part of every key: hashed once
        self._settings = hashlib.sha256(b"verified-credential\0")
        for setting in (trust.certdir, trust.vomsdir or "", str(verify_voms), repr(self.policy)):
            raw = setting.encode("utf-8", "surrogateescape")
            self._settings.update(len(raw).to_bytes(4, "big") + raw)
        self._entries: VerdictCache[_Entry] = VerdictCache(
            max_entries, max_bytes, index_entries=index_entries,
            on_evict=lambda _key, entry: forget_chain_key(entry.credential.chain),
        )  # fmt: skip

    def verify(
        self, pem: bytes, *, now: datetime | None = None, source: str = "PEM data"
    ) -> Credential:
        """The verified credential, or the CredentialError a full verification raises.

        The credential's ``chain`` is the verified one: proxies, end-entity and the
        intermediates up to the trust anchor; certificates the path did not use are left out.
        """
        with one_look():  # each file this rests on is stat-ed once per call
            return self._verify(pem, now or datetime.now(UTC), source)

    def _verify(self, pem: bytes, now: datetime, source: str) -> Credential:
        presented = hashlib.sha256(pem).digest()
        entry = self._entries.get(presented, now)
        if entry is not None:
            return entry.credential
        cred = verify_credential(load_pem(pem, source=source), self.trust, now=now,
                                 policy=self.policy, verify_voms=self.verify_voms)
        made = self._entry(cred)
        if made is None:
            return cred
        key, entry, size = made
        known = self._entries.adopt(presented, key, now)
        if known is not None:  # another byte form of a credential already remembered
            return known.credential
        # verify_proxy verifies this very chain object on each request: remember its key
        # (before the put, so a concurrent replacement's eviction forgets it again)
        chain = entry.credential.chain
        chain_key(chain, cred.identity_index, self.trust.certdir, remember=True)
        if not self._entries.put(presented, key, entry, size):
            forget_chain_key(chain)
        return entry.credential

    def _entry(self, cred: Credential) -> tuple[bytes, _Entry, int] | None:
        """(key, entry, accounted bytes) of a fresh verdict; None (do not remember) if that
        cannot be told."""
        certdir, vomsdir = self.trust.certdir, self.trust.vomsdir
        ee = cred.identity_index
        acs = voms._find_acs(cred.chain[:ee]) if cred.voms else ()
        chains: list[tuple[Sequence[x509.Certificate], int]] = [(cred.chain, ee)]
        for ac in acs:
            # an AC vouched for by an .lsc file rests on its embedded chain's verdict too
            if vomsdir and ac.certs and voms._regular(
                os.path.join(vomsdir, ac.attrs.vo, ac.host + ".lsc")) is not None:
                chains.append((ac.certs, 0))
        lo, hi = cred.not_before, cred.not_after
        files: list[FileState] = []
        verdicts = []
        for chain, index in chains:
            verdict = proxy_chain.CACHE.peek(chain_key(chain, index, certdir))
            if verdict is None or not verdict.key:
                return None
            verdicts.append(verdict)
            lo, hi = max(lo, verdict.not_before), min(hi, verdict.not_after)
            files.extend(verdict.files)
        for attrs in cred.voms:
            lo, hi = max(lo, attrs.not_before), min(hi, attrs.not_after)
        if cred.voms and vomsdir:
            files.extend(_watch_dir(vomsdir, files_only=True))
            for vo in sorted({a.vo for a in cred.voms}):
                files.extend(_watch_dir(os.path.join(vomsdir, vo), files_only=False))
        watched = tuple(dict.fromkeys(files))

        # the verified chain: leaf..EE as sent, then the path's intermediates (the sent
        # objects where the client carried them); anything else the PEM held is dropped
        sent = {_der(c): c for c in cred.chain[ee + 1 :]} if verdicts[0].intermediates else {}
        upper = tuple(sent.get(d) or x509.load_der_x509_certificate(d)
                      for d in verdicts[0].intermediates)
        chain = (*cred.chain[: ee + 1], *upper)
        same = len(chain) == len(cred.chain) and all(map(operator.is_, chain, cred.chain))
        canonical = cred if same else replace(cred, chain=chain)

        h = self._settings.copy()
        h.update(verdicts[0].key)
        size = ENTRY_OVERHEAD + files_size(watched)
        size += sum(len(_der(c)) for c in canonical.chain)
        for ac in acs:  # the ACs verified: their signed bytes and signatures
            for part in (ac.acinfo_der, ac.signature, ac.sig_oid.encode()):
                h.update(len(part).to_bytes(4, "big") + part)
                size += len(part)
        if cred.key is not None:
            key_der = cred.key.private_bytes(serialization.Encoding.DER,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())
            h.update(b"key\0" + hashlib.sha256(key_der).digest())
            size += len(key_der)
        entry = _Entry(lo, hi, watched, credential=canonical)
        return h.digest(), entry, size

    @property
    def hits(self) -> int:
        return self._entries.hits

    @property
    def misses(self) -> int:
        return self._entries.misses

    @property
    def nbytes(self) -> int:
        """Accounted bytes of the remembered credentials (at most ``max_bytes``)."""
        return self._entries.nbytes

    @property
    def index_len(self) -> int:
        """Entries in the PEM-hash index (at most ``index_entries``)."""
        return self._entries.index_len

    def __len__(self) -> int:
        """Remembered credentials (at most ``max_entries``)."""
        return len(self._entries)

    def clear(self) -> None:
        self._entries.clear()
