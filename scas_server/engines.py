"""The server's view of LCAS and LCMAPS: load once, call per request.

Kept apart from :mod:`scas_server.decision` so the pipeline sees only three
calls (is this user banned? map this user; which policies exist?) and the
library APIs can evolve behind them. Load errors become
:class:`~scas_server.config.ConfigError` lines with ``file:line``.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lcas.chain import Chain, LcasConfigError, authorize, load_chain
from lcas.plugin_api import LcasUnavailable
from lcmaps.evaluation import Engine, MappingUnavailable, map_credential
from lcmaps.plugin_api import Request
from lcmaps.policy_db import PolicyDbError, load_policy_db
from scas_server.config import ConfigError, ServerConfig

if TYPE_CHECKING:
    from leases.store import LeaseStore

__all__ = [
    "Engines", "Mapping", "MappingRefused", "PolicyError", "load_engines", "secondary_gids",
]

log = logging.getLogger("scas.server")


class MappingRefused(Exception):
    """LCMAPS found no account for this user (a Deny); ``kind`` says if it was a ban
    (``banned``) or a full pool (``exhausted``)."""

    def __init__(self, reason: str, *, kind: str | None = None) -> None:
        self.reason = " ".join(reason.split())
        self.kind = kind
        super().__init__(self.reason)


class PolicyError(Exception):
    """The site's machinery failed (a store unusable, LDAP down, a plugin crash): Indeterminate."""

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())
        super().__init__(self.reason)


@dataclass(frozen=True)
class Mapping:
    uid: int
    gid: int
    sgids: tuple[int, ...]
    username: str | None
    lease: str | None
    lease_new: bool | None = None
    #: (module, result) of the run's credential-reading plugins (``Plugin.reads_credential``)
    checks: tuple[tuple[str, bool], ...] = ()


def secondary_gids(pgids: Sequence[int], sgids: Sequence[int]) -> tuple[int, ...]:
    """The extra primary gids then the secondary ones, in C's order, each gid once."""
    return tuple(dict.fromkeys((*pgids[1:], *sgids)))


class Engines:
    """LCAS chain + LCMAPS engine built from one lcas.db and one lcmaps.db.

    Called from several gthread threads at once, with no lock: the plugins keep no
    per-request state, their caches guard themselves, and the lease store coordinates in the
    file system (``docs/leases.md``).
    """

    def __init__(self, lcas: Chain, lcmaps: Engine, policy_names: Sequence[str]) -> None:
        self.lcas = lcas
        self.lcmaps = lcmaps
        self.policy_names = tuple(policy_names)
        self._memo_safe: dict[tuple[str, ...], bool] = {}

    @property
    def lcmaps_plugins(self) -> tuple[str, ...]:
        return tuple(self.lcmaps.plugins)

    @property
    def lcas_plugins(self) -> tuple[str, ...]:
        return self.lcas.plugin_names

    def memo_safe(self, policies: Sequence[str]) -> bool:
        """May a mapping by ``policies`` be reused briefly (``scas_server.mapping_memo``)?"""
        key = tuple(policies)
        found = self._memo_safe.get(key)
        if found is None:
            found = self._memo_safe[key] = self.lcmaps.memo_safe(key)
        return found

    def lease_stores(self) -> list[LeaseStore]:
        """Every lease store the LCMAPS plugins write, once each."""
        stores: dict[str, LeaseStore] = {}
        for plugin in self.lcmaps.plugins.values():
            for store in plugin.lease_stores():
                stores.setdefault(store.location, store)
        return list(stores.values())

    def lcas_check(
        self, dn: str, fqans: Sequence[str], credential: Any, *, now: datetime | None = None
    ) -> str | None:
        """The reason the user is refused, or None when every LCAS plugin allows."""
        try:
            verdict = authorize(self.lcas, dn, tuple(fqans), credential=credential, now=now)
        except LcasUnavailable as exc:
            raise PolicyError(f"LCAS: {exc.reason}") from None
        return None if verdict.allowed else (verdict.reason or "refused")

    def map(
        self, dn: str, fqans: Sequence[str], credential: Any, policies: Sequence[str],
        *, now: datetime | None = None,
    ) -> Mapping:  # fmt: skip
        try:
            result = map_credential(
                self.lcmaps, dn, fqans, credential=credential, policies=policies, now=now
            )
        except MappingUnavailable as exc:
            raise PolicyError(f"LCMAPS: {exc.reason}") from None
        if not result.permitted or result.uid is None or result.pgid is None:
            raise MappingRefused(result.reason or "no mapping", kind=result.kind)
        return Mapping(
            uid=result.uid,
            gid=result.pgid,
            sgids=secondary_gids(result.pgids, result.sgids),
            username=result.username,
            lease=result.poolindex,
            lease_new=result.lease_new,
            checks=result.checks,
        )

    def rechecked(self, dn: str, fqans: Sequence[str], credential: Any,
                  checks: Sequence[tuple[str, bool]]) -> bool:
        """Do the credential-reading plugins of a kept mapping's run answer as they did, on
        ``credential``? False on a fault too (the full run then meets it and answers)."""
        request = Request(dn=dn, fqans=tuple(fqans), credential=credential)
        try:
            return all(self.lcmaps.check(module, request) is result for module, result in checks)
        except MappingUnavailable:
            return False


def _load_lcmaps(path: str) -> tuple[Engine, list[str]]:
    try:
        db = load_policy_db(path)
        return Engine(db), db.policy_names()
    except PolicyDbError as exc:
        raise ConfigError([str(exc)]) from None


def _load_lcas(path: str) -> Chain:
    """The chain of ``path``; a plugin that cannot initialise refuses the configuration,
    as an LCMAPS plugin does (C liblcas would load and then deny everyone)."""
    try:
        chain = load_chain(path)
    except LcasConfigError as exc:
        raise ConfigError([str(exc)]) from None
    problems = [f"{path}: cannot initialise {name}: {reason}"
                for name, reason in chain.init_failures]
    if problems:
        chain.close()
        raise ConfigError(problems)
    return chain


def load_engines(cfg: ServerConfig) -> Engines:
    lcas = _load_lcas(cfg.lcas_db)
    lcmaps, names = _load_lcmaps(cfg.lcmaps_db)
    return Engines(lcas, lcmaps, names)
