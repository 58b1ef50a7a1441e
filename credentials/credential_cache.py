"""Verified credentials remembered by the exact PEM bytes a client sent.

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

Only successes are kept, under the SHA-256 of the bytes; refusals are
verified (and refused) again each time. One cache serves one trust store
and one verification setting.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass
from datetime import UTC, datetime

from credentials import proxy_chain, voms
from credentials.chain_cache import FileState, Remembered, VerdictCache, chain_key, file_state
from credentials.credential import Credential, TrustStore, load_pem, verify_credential
from credentials.proxy_chain import ProxyPolicy

__all__ = ["CredentialCache"]


@dataclass(frozen=True)
class _Entry(Remembered):
    credential: Credential


class CredentialCache:
    """``verify_credential(load_pem(pem), trust, ...)``, answered from memory when it may be."""

    def __init__(
        self, trust: TrustStore, *, policy: ProxyPolicy | None = None, verify_voms: bool = True,
        max_entries: int = 8192,
    ) -> None:  # fmt: skip
        self.trust = trust
        self.policy = policy or ProxyPolicy()
        self.verify_voms = verify_voms
        self._entries: VerdictCache[_Entry] = VerdictCache(max_entries)

    def verify(
        self, pem: bytes, *, now: datetime | None = None, source: str = "PEM data"
    ) -> Credential:
        """The verified credential, or the CredentialError a full verification raises."""
        now = now or datetime.now(UTC)
        key = hashlib.sha256(pem).digest()
        entry = self._entries.get(key, now)
        if entry is not None:
            return entry.credential
        cred = verify_credential(load_pem(pem, source=source), self.trust, now=now,
                                 policy=self.policy, verify_voms=self.verify_voms)
        entry = self._entry(cred)
        if entry is not None:
            self._entries.put(key, entry)
        return cred

    def _entry(self, cred: Credential) -> _Entry | None:
        """What the fresh verdict rests on; None (do not remember) if that cannot be told."""
        certdir, vomsdir = self.trust.certdir, self.trust.vomsdir
        chains = [(cred.chain, cred.identity_index)]
        for ac in voms._find_acs(cred.chain[: cred.identity_index]) if cred.voms else ():
            # an AC vouched for by an .lsc file rests on its embedded chain's verdict too
            if vomsdir and ac.certs and os.path.isfile(
                os.path.join(vomsdir, ac.attrs.vo, ac.host + ".lsc")
            ):
                chains.append((ac.certs, 0))
        lo, hi = cred.not_before, cred.not_after
        files: list[FileState] = []
        for chain, ee in chains:
            verdict = proxy_chain.CACHE.peek(chain_key(chain, ee, certdir))
            if verdict is None:
                return None
            lo, hi = max(lo, verdict.not_before), min(hi, verdict.not_after)
            files.extend(verdict.files)
        for attrs in cred.voms:
            lo, hi = max(lo, attrs.not_before), min(hi, attrs.not_after)
        if cred.voms and vomsdir:
            files.append(file_state(vomsdir))
            files.extend(file_state(p) for p in sorted(glob.glob(os.path.join(
                glob.escape(vomsdir), "*"))) if os.path.isfile(p))
            for vo in sorted({a.vo for a in cred.voms}):
                vo_dir = os.path.join(vomsdir, vo)
                files.append(file_state(vo_dir))
                files.extend(file_state(p) for p in sorted(glob.glob(os.path.join(
                    glob.escape(vo_dir), "*"))))
        return _Entry(lo, hi, tuple(dict.fromkeys(files)), credential=cred)

    @property
    def hits(self) -> int:
        return self._entries.hits

    @property
    def misses(self) -> int:
        return self._entries.misses

    def clear(self) -> None:
        self._entries.clear()
