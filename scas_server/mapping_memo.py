"""A user's mapping, reused for a short time, with every lease it holds confirmed per use.

Running the LCMAPS policies again for a repeat query costs about a quarter of a warm
decision, and gives the same answer unless a file changed or a lease moved. So a Permit's
mapping is kept for ``mapping_cache_seconds`` (default 1 s, 0 turns this off), keyed by
the verified credential (the credential cache hands back the same object for the same
chain), the DN, the FQANs and the policies. What a reuse still does, every time:

* the credential check and LCAS run in full before this (revocation, expiry and bans
  count from the next query, as without the memo);
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
    credential: Any  # held, so that its id() in the key cannot be reused while kept
    mapping: Mapping
    leases: tuple[Acquired, ...]
    until: float  # time.monotonic()


MapFunction = Callable[[], Mapping]


class MappingMemo:
    """Recent mappings (Permits only), bounded in entries; thread- and greenlet-safe."""

    def __init__(self, seconds: float, max_entries: int = 4096) -> None:
        self.seconds = seconds
        self._kept: BoundedLRU[tuple[Any, ...], _Kept] = BoundedLRU(max_entries, max_entries)

    def map(self, key: tuple[Any, ...], credential: Any, full: MapFunction) -> Mapping:
        """The kept mapping for ``key`` if it is fresh and its leases hold, else ``full()``
        (which raises for a refusal or a fault; nothing is kept then)."""
        if self.seconds <= 0 or credential is None:
            return full()
        key = (id(credential), *key)
        now = time.monotonic()
        kept = self._kept.get(key)
        made: str | None = None
        if kept is not None and kept.credential is credential and now < kept.until:
            held, made = _confirm(kept.leases)
            if held:
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
