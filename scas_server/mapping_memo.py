"""A user's mapping, reused for a short time, with every lease it holds confirmed per use.

Running the LCMAPS policies again for a repeat query costs about a quarter of a warm
decision, and gives the same answer unless a file changed or a lease moved. So a Permit's
mapping is kept for ``mapping_cache_seconds`` (default 1 s, 0 turns this off), keyed by
the DN, the FQANs and the policies, with the verified credential it was made for (the
credential cache hands back the same object for the same chain). What a reuse still does,
every time:

* the credential check and LCAS run in full before this (revocation, expiry and bans
  count from the next query, as without the memo);
* for another credential of the same user (a payload's freshly delegated proxy), every
  plugin of the run that reads the credential (:attr:`~lcmaps.plugin_api.Plugin.
  reads_credential`: ``verify_proxy``) runs again on it and must answer as it did. The
  other plugins' answers depend only on the DN, the FQANs, their files and the leases
  (that is what ``memo_safe`` says), so the run would take the same path;
* every lease the mapping made or found is looked up, and if it still names the same
  account, *replayed*: the same ``acquire`` call, which re-checks the lease file and its
  account entry and touches the lease, as any use does. If a lease was released, expired
  or moved, nothing is made from memory: the mapping is made again in full.

What may be up to ``mapping_cache_seconds`` old: the policy's files themselves
(grid-mapfile, groupmapfile, the CA files ``verify_proxy`` reads) and the account
database. A reload (SIGHUP, ``scas-admin ban``/``map``) starts a new, empty memo. Only
policies whose plugins are all :attr:`~lcmaps.plugin_api.Plugin.memo_safe` are kept.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from credentials.lru import BoundedLRU
from leases.store import Acquired, GridmapDirError, recording
from scas_server.engines import Mapping

__all__ = ["MappingMemo"]


@dataclass(frozen=True)
class _Kept:
    credential: Any  # the one it was made for: needs no recheck
    mapping: Mapping
    leases: tuple[Acquired, ...]
    until: float  # time.monotonic()


MapFunction = Callable[[], Mapping]
#: does a kept mapping's run answer the same for this (other) credential?
Recheck = Callable[[Mapping], bool]


class MappingMemo:
    """Recent mappings (Permits only), bounded in entries; thread- and greenlet-safe."""

    def __init__(self, seconds: float, max_entries: int = 4096) -> None:
        self.seconds = seconds
        self._kept: BoundedLRU[tuple[Any, ...], _Kept] = BoundedLRU(max_entries, max_entries)

    def map(self, key: tuple[Any, ...], credential: Any, full: MapFunction,
            recheck: Recheck) -> Mapping:  # fmt: skip
        """The kept mapping for ``key`` if it is fresh, made for this credential or rechecked
        on it, and its leases hold; else ``full()`` (which raises for a refusal or a fault;
        nothing is kept then)."""
        if self.seconds <= 0 or credential is None:
            return full()
        now = time.monotonic()
        kept = self._kept.get(key)
        made: str | None = None
        if kept is not None and now < kept.until and (
                kept.credential is credential or recheck(kept.mapping)):
            held, made = _confirm(kept.leases)
            if held:
                if kept.credential is not credential:  # its next query needs no recheck
                    self._kept.put(key, dataclasses.replace(kept, credential=credential), 1)
                return kept.mapping
        with recording() as leases:
            mapping = full()
        if made is not None and mapping.lease == made:
            mapping = dataclasses.replace(mapping, lease_new=True)  # the replay made it
        again = mapping if not mapping.lease_new else dataclasses.replace(mapping, lease_new=False)
        self._kept.put(key, _Kept(credential, again, tuple(leases), now + self.seconds), 1)
        return mapping


def _confirm(leases: Sequence[Acquired]) -> tuple[bool, str | None]:
    """(every lease is still held as before, the name of a lease a replay had to make)."""
    for acquired in leases:
        try:
            again = acquired.replay()
        except GridmapDirError:
            return False, None  # the full run meets the same fault and answers for it
        if again is None:
            return False, None  # released, expired or moved: the full run decides
        if not again.reused:
            return False, again.name
        if again.account != acquired.lease.account or again.name != acquired.lease.name:
            return False, None
    return True, None
