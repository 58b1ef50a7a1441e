"""The server's view of LCAS and LCMAPS: load once, call per request.

Kept apart from :mod:`scas_server.decision` so the pipeline sees only three
calls (is this user banned? map this user; which policies exist?) and the
library APIs can evolve behind them. Load errors become
:class:`~scas_server.config.ConfigError` lines with ``file:line``.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from scas_server.config import ConfigError, ServerConfig

__all__ = ["Engines", "Mapping", "MappingRefused", "PolicyError", "load_engines"]

log = logging.getLogger("scas.server")


class MappingRefused(Exception):
    """LCMAPS found no account for this user (a Deny)."""

    def __init__(self, reason: str) -> None:
        self.reason = " ".join(reason.split())
        super().__init__(self.reason)


class PolicyError(Exception):
    """The site's machinery failed (a plugin crashed, a store is unusable): Indeterminate."""

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


class Engines:
    """LCAS chain + LCMAPS engine built from one lcas.db and one lcmaps.db."""

    def __init__(self, lcas: Any, lcmaps: Any, policy_names: Sequence[str]) -> None:
        self.lcas = lcas
        self.lcmaps = lcmaps
        self.policy_names = tuple(policy_names)
        # LCAS and LCMAPS plugins are written, like C's, for one call at a time: with
        # several gthread threads a worker runs them one after another (TLS, parsing and
        # credential checks still overlap). Seen without it: leases under another
        # request's name, and a full pool.
        self._serial = threading.Lock()

    @property
    def loaded(self) -> bool:
        return self.lcmaps is not None

    @property
    def lcmaps_plugins(self) -> tuple[str, ...]:
        return tuple(self.lcmaps.plugins) if self.lcmaps is not None else ()

    @property
    def lcas_plugins(self) -> tuple[str, ...]:
        names = getattr(self.lcas, "plugin_names", None)
        if names is not None:
            return tuple(names() if callable(names) else names)
        plugins = getattr(self.lcas, "plugins", ())
        return tuple(getattr(p, "name", type(p).__name__) for p in plugins)

    def lcas_check(
        self, dn: str, fqans: Sequence[str], credential: Any, *, now: datetime | None = None
    ) -> str | None:
        """The reason the user is refused, or None when every LCAS plugin allows."""
        if self.lcas is None:
            return None
        from lcas.chain import authorize

        try:
            with self._serial:
                verdict = authorize(self.lcas, dn, tuple(fqans), credential=credential,
                                    now=now)
        except OSError as exc:
            raise PolicyError(f"LCAS: {exc.strerror or exc}") from None
        return None if verdict.allowed else (verdict.reason or "refused")

    def map(
        self, dn: str, fqans: Sequence[str], credential: Any, policies: Sequence[str],
        *, now: datetime | None = None,
    ) -> Mapping:  # fmt: skip
        from lcmaps.evaluation import map_credential

        try:
            with self._serial:
                result = map_credential(
                    self.lcmaps, dn, fqans, credential=credential, policies=policies, now=now
                )
        except OSError as exc:
            raise PolicyError(f"LCMAPS: {exc.strerror or exc}") from None
        if result.decision == "error":
            raise PolicyError(f"LCMAPS: {result.reason or 'error'}")
        if not result.permitted or result.uid is None or result.pgid is None:
            raise MappingRefused(result.reason or "no mapping")
        return Mapping(
            uid=result.uid,
            gid=result.pgid,
            sgids=tuple(result.pgids[1:]) + tuple(result.sgids),
            username=result.username,
            lease=result.poolindex,
        )


def _load_lcmaps(path: str) -> tuple[Any, list[str]]:
    from lcmaps.evaluation import Engine
    from lcmaps.policy_db import PolicyDbError, load_policy_db

    try:
        db = load_policy_db(path)
        return Engine(db), db.policy_names()
    except PolicyDbError as exc:
        raise ConfigError([str(exc)]) from None


def _load_lcas(path: str) -> Any:
    from lcas.chain import LcasConfigError, load_chain

    try:
        return load_chain(path)
    except LcasConfigError as exc:
        raise ConfigError([str(exc)]) from None


def load_engines(cfg: ServerConfig) -> Engines:
    lcas = _load_lcas(cfg.lcas_db)
    lcmaps, names = _load_lcmaps(cfg.lcmaps_db)
    return Engines(lcas, lcmaps, names)
