"""What LCAS and LCMAPS plugins share: the entry-point loader and the argument walker.

Both chains name plugins the C way (``lcmaps_poolaccount.mod``, ``lcas_userban.mod``) and
give them an argv split on blanks. The built-in plugins are found through a static table of
``module:attribute`` targets (the same strings as pyproject.toml's entry points, which a test
keeps equal), so a one-shot command reads no distribution's metadata at all; any other name is
looked up among the group's entry points, so a site can add its own. Those are scanned once
per process: the scan costs tens of milliseconds on every command start.
"""

from __future__ import annotations

import importlib
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

from safetext import one_line

if TYPE_CHECKING:
    import logging
    from importlib.metadata import EntryPoint

__all__ = ["ArgWalker", "LazyLogger", "PluginInitError", "load_plugin_class", "parse_int"]

_WARNING = 30  # logging.WARNING


class LazyLogger:
    """``logging.getLogger(name)``, with :mod:`logging` imported only when a record could be
    emitted. Until something imports logging nothing can have configured it, so DEBUG and
    INFO records would be dropped anyway; WARNING and above import it and reach its
    last-resort handler (stderr) as before; once logging is imported (the service configures
    it) every call goes straight to the real logger. A one-shot command saves the ~15 ms
    logging costs to import (traceback, textwrap, string and their regexes)."""

    __slots__ = ("_logger", "name")

    def __init__(self, name: str) -> None:
        self.name = name
        self._logger: logging.Logger | None = None

    def _get(self, level: int) -> logging.Logger | None:
        if self._logger is None:
            if level < _WARNING and "logging" not in sys.modules:
                return None
            import logging

            self._logger = logging.getLogger(self.name)
        return self._logger

    def _log(self, level: int, msg: object, args: tuple[object, ...], kw: dict[str, Any]
             ) -> None:
        logger = self._get(level)
        if logger is not None:
            kw["stacklevel"] = kw.get("stacklevel", 1) + 2  # the caller's file and line
            logger.log(level, msg, *args, **kw)

    def debug(self, msg: object, *args: object, **kw: Any) -> None:
        self._log(10, msg, args, kw)

    def info(self, msg: object, *args: object, **kw: Any) -> None:
        self._log(20, msg, args, kw)

    def warning(self, msg: object, *args: object, **kw: Any) -> None:
        self._log(30, msg, args, kw)

    def error(self, msg: object, *args: object, **kw: Any) -> None:
        self._log(40, msg, args, kw)

    def exception(self, msg: object, *args: object, **kw: Any) -> None:
        kw.setdefault("exc_info", True)
        self._log(40, msg, args, kw)


log = LazyLogger("scas.plugins")


class PluginInitError(Exception):
    """A plugin refused its configuration; the message is one line."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason)
        super().__init__(self.reason)


_lock = threading.Lock()
_groups: dict[str, dict[str, EntryPoint]] = {}
_loaded: dict[tuple[str, str], Any] = {}


def load_plugin_class(group: str, name: str, builtin: Mapping[str, str] | None = None
                      ) -> Any | None:
    """The class behind plugin ``name`` of entry-point ``group``, or None (missing or not
    importable).

    ``builtin`` maps the package's own plugin names to ``module:attribute``; those resolve
    without touching ``importlib.metadata``. The plugin module is imported on first use only,
    so a chain pays for the plugins it configures and no others.
    """
    key = (group, name)
    with _lock:
        if key in _loaded:
            return _loaded[key]
        target = builtin.get(name) if builtin is not None else None
        cls = _import(name, target) if target is not None else _from_entry_points(group, name)
        if cls is not None:
            _loaded[key] = cls
        return cls


def _import(name: str, target: str) -> Any | None:
    """``module:attr`` imported (a built-in table's target)."""
    module, _, attr = target.partition(":")
    try:
        obj: Any = importlib.import_module(module)
        for part in attr.split(".") if attr else ():
            obj = getattr(obj, part)
    except (ImportError, AttributeError) as exc:
        log.error("plugin %s (%s) cannot be loaded: %s", one_line(name), target, one_line(exc))
        return None
    return obj


def _from_entry_points(group: str, name: str) -> Any | None:
    eps = _groups.get(group)
    if eps is None:
        from importlib.metadata import entry_points  # ~30 ms: only for a site's own plugins

        eps = _groups[group] = {ep.name: ep for ep in entry_points(group=group)}
    ep = eps.get(name)
    if ep is None:
        return None
    try:
        return ep.load()
    except (ImportError, AttributeError) as exc:
        log.error("plugin entry point %s cannot be loaded: %s", one_line(name), one_line(exc))
        return None


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
