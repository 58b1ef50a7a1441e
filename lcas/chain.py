"""The LCAS framework: load the plugins of an lcas.db and AND their answers.

Behaviour of liblcas 1.3.19 that this copies (checked with the oracle):

* every plugin must allow; the first refusal (file order) decides, later
  plugins are not asked;
* no plugins at all denies ("no authorization modules were called");
* a plugin that cannot be found or refuses its arguments makes the whole
  LCAS initialisation fail, so every request is denied, with that plugin's
  name and reason.

A malformed lcas.db is different: :func:`load_chain` raises
:class:`LcasConfigError` (``file:line: reason``) and nothing is built.

A plugin that cannot decide is a fault, not a deny (this differs from C,
which denies): a plugin raising :class:`LcasUnavailable`, any ``OSError``
(an unreadable ban or allow file) or any other exception (a crash, whose
traceback goes to the log) makes :meth:`Chain.authorize` raise
:class:`LcasUnavailable` naming the plugin, and the service answers
Indeterminate so clients fail over. A refusal by an earlier plugin still
wins: later plugins are not asked.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING

from lcas.db import DbEntry, LcasConfigError, LcasDbError, load_db
from lcas.plugin_api import LcasUnavailable, Plugin, PluginInitError, Request, Verdict
from safetext import one_line
from sitefiles.plugins import load_plugin_class

if TYPE_CHECKING:
    from credentials.credential import Credential

__all__ = [
    "ENTRY_POINT_GROUP",
    "Chain",
    "LcasConfigError",
    "LcasDbError",
    "LcasUnavailable",
    "LoadedPlugin",
    "authorize",
    "build_chain",
    "load_chain",
    "plugin_class",
]

ENTRY_POINT_GROUP = "scas_stack.lcas_plugins"
NO_MODULES = "no authorization modules were called (check the lcas db file)"

log = logging.getLogger("lcas")


#: The built-in plugins, exactly as pyproject.toml declares them as entry points (a test keeps
#: the two equal): found without scanning installed distributions.
BUILTIN_PLUGINS: Mapping[str, str] = {
    "userban": "lcas.plugins.userban:UserBan",
    "userallow": "lcas.plugins.userallow:UserAllow",
    "timeslots": "lcas.plugins.timeslots:TimeSlots",
    "voms": "lcas.plugins.voms:VomsAuth",
    "plugin_example": "lcas.plugins.example:AlwaysAllow",
}


def plugin_class(name: str) -> type[Plugin] | None:
    """The class behind plugin ``name`` (built in, else an entry point), or None (missing or
    not importable)."""
    return load_plugin_class(ENTRY_POINT_GROUP, name, BUILTIN_PLUGINS)


@dataclass(frozen=True)
class LoadedPlugin:
    """One lcas.db line after initialisation: the plugin, or why it failed."""

    entry: DbEntry
    plugin: Plugin | None
    init_error: str | None = None

    @property
    def name(self) -> str:
        return self.entry.pluginname


class Chain:
    """The initialised plugins of one lcas.db, in file order."""

    def __init__(self, source: str, plugins: Sequence[LoadedPlugin]) -> None:
        self.source = source
        self.plugins = tuple(plugins)

    @property
    def plugin_names(self) -> tuple[str, ...]:
        return tuple(p.name for p in self.plugins)

    @property
    def init_failures(self) -> tuple[tuple[str, str], ...]:
        """``(plugin, reason)`` for every plugin that failed to initialise."""
        return tuple((p.name, p.init_error) for p in self.plugins if p.init_error is not None)

    def authorize(self, request: Request) -> Verdict:
        """AND over all plugins; the first refusal is returned with the plugin's name.

        Raises :class:`LcasUnavailable` (``"<plugin>: <why>"``, one line) when a plugin
        cannot decide: it raised LcasUnavailable, an ``OSError`` or crashed."""
        failures = self.init_failures
        if failures:
            name, reason = failures[0]
            return Verdict.deny(f"LCAS initialisation failed: {reason}", name)
        if not self.plugins:
            return Verdict.deny(NO_MODULES)
        for loaded in self.plugins:
            assert loaded.plugin is not None
            verdict = _ask(loaded.name, loaded.plugin, request)
            if not verdict.allowed:
                log.info("LCAS plugin %s refused %s: %s", one_line(loaded.name),
                         one_line(request.dn), verdict.reason)
                return Verdict.deny(verdict.reason or "refused", loaded.name)
        return Verdict.allow(f"all {len(self.plugins)} plugins allowed")

    def close(self) -> None:
        for loaded in self.plugins:
            if loaded.plugin is not None:
                try:
                    loaded.plugin.terminate()
                except Exception:
                    log.exception("LCAS plugin %s failed to terminate", one_line(loaded.name))


def _ask(name: str, plugin: Plugin, request: Request) -> Verdict:
    """``plugin.authorize(request)``, with every fault raised as LcasUnavailable."""
    try:
        return plugin.authorize(request)
    except LcasUnavailable as exc:
        raise LcasUnavailable(f"{name}: {exc.reason}") from None
    except OSError as exc:
        where = f"{exc.filename}: " if exc.filename is not None else ""
        raise LcasUnavailable(f"{name}: {where}{exc.strerror or exc}") from None
    except Exception as exc:  # a plugin bug: neither the user's fault nor a policy
        log.exception("LCAS plugin %s crashed", one_line(name))
        raise LcasUnavailable(
            f"{name} crashed: {type(exc).__name__}: {one_line(exc, 200)}") from None


def _init_plugin(entry: DbEntry, db_dir: str) -> LoadedPlugin:
    cls = plugin_class(entry.entry_point)
    if cls is None:
        reason = (f"{entry.pluginname}: plugin not found "
                  f"(no entry point '{entry.entry_point}' in {ENTRY_POINT_GROUP})")
        return LoadedPlugin(entry, None, one_line(reason))
    try:
        return LoadedPlugin(entry, cls(entry.argv, db_dir=db_dir))
    except PluginInitError as exc:
        return LoadedPlugin(entry, None, one_line(exc.reason))
    except Exception as exc:
        log.exception("LCAS plugin %s crashed while initialising", one_line(entry.pluginname))
        return LoadedPlugin(entry, None, one_line(f"{entry.pluginname}: {exc}"))


def build_chain(entries: Sequence[DbEntry], *, db_dir: str = ".", source: str = "lcas.db"
                ) -> Chain:
    """Initialise every plugin in order (all of them, so every failure is reported)."""
    chain = Chain(source, [_init_plugin(e, db_dir) for e in entries])
    for name, reason in chain.init_failures:
        log.error("LCAS plugin %s failed to initialise: %s", one_line(name), reason)
    return chain


def load_chain(path: str | os.PathLike[str]) -> Chain:
    """Parse ``path`` and initialise its plugins; raises LcasConfigError if malformed."""
    name = os.fspath(path)
    entries = load_db(name)
    return build_chain(entries, db_dir=os.path.dirname(os.path.abspath(name)), source=name)


def authorize(
    chain: Chain,
    dn: str,
    fqans: Sequence[str] = (),
    *,
    credential: Credential | None = None,
    now: datetime | None = None,
) -> Verdict:
    """One decision for ``dn``/``fqans`` (and the verified credential, if any)."""
    when = now if now is not None else datetime.now().astimezone()
    return chain.authorize(Request(dn, tuple(fqans), credential, when))
