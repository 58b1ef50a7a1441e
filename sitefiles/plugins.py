"""What LCAS and LCMAPS plugins share: the entry-point loader and the argument walker.

Both chains name plugins the C way (``lcmaps_poolaccount.mod``, ``lcas_userban.mod``) and
give them an argv split on blanks. Plugins are found through entry points so a site can add
its own; each group's entry points are read once per process, because scanning installed
distributions costs milliseconds on every command start.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Iterator, Sequence
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from safetext import one_line

__all__ = ["ArgWalker", "PluginInitError", "load_plugin_class", "parse_int"]

log = logging.getLogger("scas.plugins")


class PluginInitError(Exception):
    """A plugin refused its configuration; the message is one line."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


_lock = threading.Lock()
_groups: dict[str, dict[str, EntryPoint]] = {}
_loaded: dict[tuple[str, str], Any] = {}


def load_plugin_class(group: str, name: str) -> Any | None:
    """The class behind entry point ``name`` of ``group``, or None (missing or not importable).

    The plugin module is imported on first use only, so a chain pays for the plugins it
    configures and no others.
    """
    key = (group, name)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        eps = _groups.get(group)
        if eps is None:
            eps = _groups[group] = {ep.name: ep for ep in entry_points(group=group)}
        ep = eps.get(name)
        if ep is None:
            return None
        try:
            cls = ep.load()
        except (ImportError, AttributeError) as exc:
            log.error("plugin entry point %s cannot be loaded: %s", name, one_line(exc))
            return None
        _loaded[key] = cls
        return cls


class ArgWalker:
    """Walk a plugin's argv (``argv[0]`` is its name) the way the C plugins do.

    Iterating yields each option; :meth:`value` takes the argument after it. An option a
    plugin does not know ends in :meth:`unknown`. No index arithmetic in the plugins::

        args = ArgWalker(argv, NAME)
        for opt in args:
            if opt == "-gridmapfile":
                path = args.value("a file name")
            else:
                args.unknown()
    """

    def __init__(self, argv: Sequence[str], plugin: str) -> None:
        self.args = list(argv[1:])
        self.plugin = plugin
        self._i = 0
        self._opt = ""

    def __iter__(self) -> Iterator[str]:
        while self._i < len(self.args):
            self._opt = self.args[self._i]
            self._i += 1
            yield self._opt

    def has_value(self) -> bool:
        """Whether another argument follows the current option."""
        return self._i < len(self.args)

    def value(self, what: str = "a value", *, allow_empty: bool = False) -> str:
        """The argument after the current option (C: "needs to be followed by ...")."""
        if self._i >= len(self.args) or (self.args[self._i] == "" and not allow_empty):
            raise PluginInitError(
                f"{self.plugin}: option {self._opt} needs to be followed by {what}"
            )
        self._i += 1
        return self.args[self._i - 1]

    def unknown(self) -> None:
        raise PluginInitError(f"{self.plugin}: unknown argument '{self._opt}'")


def parse_int(value: str, plugin: str, opt: str, *, minimum: int = 0,
              maximum: int | None = None) -> int:
    """An integer option, refused like C's strtol checks (the whole string, in range)."""
    try:
        n = int(value, 10)
    except ValueError:
        raise PluginInitError(f"{plugin}: {opt} needs an integer, got '{value}'") from None
    if n < minimum:
        raise PluginInitError(f"{plugin}: {opt} must be >= {minimum}, got {n}")
    if maximum is not None and n > maximum:
        raise PluginInitError(f"{plugin}: {opt} must be in {minimum}-{maximum}, got {n}")
    return n


def parse_yes_no(value: str, plugin: str, opt: str) -> bool:
    """``yes`` or ``no``, exactly as the C plugins spell them."""
    if value in ("yes", "no"):
        return value == "yes"
    raise PluginInitError(f'{plugin}: use "yes" or "no" for option {opt}')
