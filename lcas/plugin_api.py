"""What an LCAS plugin sees: its argv once, then one :class:`Request` per decision.

A plugin class is constructed with the argv C LCAS would give it
(``argv[0]`` is the plugin name as written in lcas.db, the rest is
``pluginargs`` split on blanks) and raises :class:`PluginInitError` for
arguments it cannot use. :meth:`Plugin.authorize` is then called many times,
possibly from several threads, so plugins keep no per-request state.

A plugin answers a policy question with a :class:`Verdict`; when it cannot
answer (its file is unreadable or broken, a dependency failed) it raises
:class:`LcasUnavailable` or lets the ``OSError`` propagate, never a deny.

Relative file names in plugin arguments are resolved against the directory
holding lcas.db (``db_dir``), where the shipped examples keep them.
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, ClassVar, Generic, TypeVar

from safetext import one_line
from sitefiles.plugins import PluginInitError

if TYPE_CHECKING:
    from credentials.credential import Credential

__all__ = [
    "CachedFile",
    "LcasUnavailable",
    "Plugin",
    "PluginInitError",
    "Request",
    "Verdict",
    "resolve_path",
]

log = logging.getLogger("lcas")


class LcasUnavailable(Exception):
    """No decision could be made: a plugin's file or dependency failed, or a plugin crashed.

    Not a deny: a deny stops clients from failing over to another SCAS replica, so the
    service answers Indeterminate for this. ``reason`` is one line (it may name files)."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


@dataclass(frozen=True)
class Request:
    """One authorization question.

    ``dn`` is the end-entity subject in OpenSSL one-line form (proxy CNs
    stripped), ``fqans`` are in AC order, ``credential`` is the verified
    chain when the caller has one, ``now`` the (aware or naive local) time.
    """

    dn: str
    fqans: tuple[str, ...] = ()
    credential: Credential | None = None
    now: datetime = field(default_factory=lambda: datetime.now().astimezone())


@dataclass(frozen=True)
class Verdict:
    """A plugin's (or the chain's) answer; ``plugin`` names who refused."""

    allowed: bool
    reason: str = ""
    plugin: str | None = None

    @classmethod
    def allow(cls, reason: str = "") -> Verdict:
        return cls(True, one_line(reason))

    @classmethod
    def deny(cls, reason: str, plugin: str | None = None) -> Verdict:
        return cls(False, one_line(reason), plugin)


class Plugin:
    """Base class: parse ``argv`` in ``__init__``, answer in :meth:`authorize`."""

    name: ClassVar[str] = "plugin"

    def __init__(self, argv: Sequence[str], *, db_dir: str = ".") -> None:
        self.argv = tuple(argv)
        self.db_dir = db_dir

    def authorize(self, request: Request) -> Verdict:
        raise NotImplementedError

    def terminate(self) -> None:
        """Release resources; called when the chain is closed."""


def resolve_path(name: str, db_dir: str) -> str:
    """``name`` if absolute, else relative to the lcas.db directory."""
    return name if os.path.isabs(name) else os.path.join(db_dir, name)


T = TypeVar("T")


class CachedFile(Generic[T]):
    """A file parsed once and re-parsed when it changes on disk.

    ``get()`` raises ``OSError`` when the file cannot be read and whatever
    ``parse`` raises for bad contents; callers turn both into :class:`LcasUnavailable`.
    """

    def __init__(self, path: str, parse: Callable[[bytes, str], T]) -> None:
        self.path = path
        self._parse = parse
        self._lock = threading.Lock()
        self._sig: tuple[int, ...] | None = None
        self._value: T | None = None

    def get(self) -> T:
        st = os.stat(self.path)
        sig = (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)
        with self._lock:
            if self._sig == sig and self._value is not None:
                return self._value
        with open(self.path, "rb") as fh:
            data = fh.read()
        value = self._parse(data, self.path)
        with self._lock:
            self._sig, self._value = sig, value
        return value
