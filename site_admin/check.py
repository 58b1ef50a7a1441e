"""``scas-admin check``: validate every file the server configuration names, like ``doas -C``.

The YAML (``scas_server.config``), lcas.db and lcmaps.db with every plugin initialised from its
real arguments, then what the plugins read: grid-mapfiles and groupmapfiles (accounts and
groups exist, every ``.pool`` has entries in its gridmapdir), ban lists, timeslots and VOMS
auth files, CA directories (hashed certificates, CRLs), vomsdirs (``.lsc`` files), the ticket
key, the gridmapdirs and the audit log's directory; policy files must not be group- or
world-writable nor owned by anyone but root or the running user.

Each problem is one ``file:line: reason`` line (``file: reason`` when no line applies).
Exit 1 when anything is found, 0 when clean (``ok: N files checked``), 2 when the check
itself cannot run.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
from collections.abc import Iterator
from typing import Any

from site_admin.check_files import (
    Report,
    check_ca_dir,
    check_gridmapdir,
    check_mapfile,
    check_owner,
    check_vomsdir,
    check_writable_dir,
)
from site_admin.common import OK, PROBLEM, add_common, emit

__all__ = ["check_site", "register"]

# "<file>:<line>: <reason>" inside a plugin's initialisation error
_LOCATED = re.compile(r"(?P<file>/[^:\s]+):(?P<line>\d+): (?P<reason>.+)")


# -- the YAML --------------------------------------------------------------------------------


def _yaml_lines(path: str) -> dict[str, int]:
    """Dotted key (``policies[0].lcmaps``) -> line number, for locating config errors."""
    import yaml

    try:
        with open(path, encoding="utf-8") as fh:
            root = yaml.compose(fh)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return {}
    out: dict[str, int] = {}

    def walk(node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}.{key.value}" if prefix else str(key.value)
                out[name] = key.start_mark.line + 1
                walk(value, name)
        elif isinstance(node, yaml.SequenceNode):
            for i, value in enumerate(node.value):
                out[f"{prefix}[{i}]"] = value.start_mark.line + 1
                walk(value, f"{prefix}[{i}]")

    walk(root, "")
    return out


def _config_problem(report: Report, path: str, error: str, lines: dict[str, int]) -> None:
    """One ``ConfigError`` line (``file:line: why`` or ``file: key: why``) as a problem."""
    rest = error.removeprefix(path)
    located = re.match(r":(\d+): (.*)", rest)
    if located:
        report.add(path, int(located.group(1)), located.group(2))
        return
    body = rest.removeprefix(": ")
    key = body.split(": ", 1)[0]
    report.add(path, lines.get(key), body)


def _load_config(report: Report, path: str) -> Any:
    from scas_server.config import ConfigError, load_config

    report.first_visit(path)
    check_owner(report, path, what="server configuration")
    try:
        return load_config(path)
    except ConfigError as exc:
        lines = _yaml_lines(path)
        for error in exc.errors:
            _config_problem(report, path, error, lines)
        return None


# -- LCAS and LCMAPS -------------------------------------------------------------------------


def _init_problem(report: Report, db: str, line: int, name: str, reason: str) -> None:
    """A plugin that cannot start: at the file and line its reason names, else its db line."""
    found = _LOCATED.search(reason)
    if found:
        report.add(found["file"], int(found["line"]), found["reason"])
    else:
        report.add(db, line, f"cannot initialise {name}: {reason}")


def _check_lcas(report: Report, path: str) -> list[Any]:
    """Parse lcas.db and initialise each plugin; return the plugins that started."""
    from lcas.chain import LcasConfigError, build_chain
    from lcas.db import LcasDbError, load_db

    if not report.first_visit(path):
        return []
    check_owner(report, path)
    try:
        entries = load_db(path)
    except LcasDbError as exc:
        report.add(exc.filename, exc.lineno, exc.reason)
        return []
    except LcasConfigError as exc:
        report.add(path, None, str(exc).removeprefix(f"{path}: "))
        return []
    if not entries:
        report.add(path, None, "no plugins: LCAS denies everyone")
    chain = build_chain(entries, db_dir=os.path.dirname(os.path.abspath(path)), source=path)
    for loaded in chain.plugins:
        if loaded.init_error is not None:
            _init_problem(report, path, loaded.entry.lineno, loaded.name, loaded.init_error)
    return [p.plugin for p in chain.plugins if p.plugin is not None]


def _definition_line(path: str, module: str, fallback: int) -> int:
    """The line where ``module`` is first named (its variable), else the rule using it."""
    try:
        with open(path, encoding="utf-8", errors="replace") as fh:
            for lineno, line in enumerate(fh, 1):
                if module in line:
                    return lineno
    except OSError:
        pass
    return fallback


def _check_lcmaps(report: Report, path: str) -> tuple[list[str], list[Any]]:
    """Parse lcmaps.db and initialise every plugin; return (policy names, started plugins)."""
    from lcmaps.evaluation import plugin_class
    from lcmaps.policy_db import PolicyDbError, load_policy_db
    from sitefiles.plugins import PluginInitError

    if not report.first_visit(path):
        return [], []
    check_owner(report, path)
    try:
        db = load_policy_db(path)
    except PolicyDbError as exc:
        report.add(exc.filename, exc.lineno, exc.reason)
        return [], []
    for warning in db.warnings:
        found = _LOCATED.search(warning) or re.match(r"(?P<file>.+?):(?P<line>\d+): "
                                                     r"(?P<reason>.+)", warning)
        if found:
            report.add(found["file"], int(found["line"]), found["reason"], "warning")
    plugins = []
    for spec in db.plugins:
        line = _definition_line(path, spec.module, spec.lineno)
        cls = plugin_class(spec.entry_point)
        if cls is None:
            report.add(path, line, f"plugin {spec.module} not found (no entry point "
                                   f"'{spec.entry_point}')")
            continue
        try:
            plugins.append(cls(spec.argv))
        except PluginInitError as exc:
            _init_problem(report, path, line, spec.module, exc.reason)
        except Exception as exc:  # a plugin bug is a problem to report, not a crash
            report.add(path, line, f"cannot initialise {spec.module}: {type(exc).__name__}: "
                                   f"{exc}")
    return db.policy_names(), plugins


# -- what the plugins read -------------------------------------------------------------------


def _lcas_files(report: Report, plugins: list[Any]) -> None:
    for plugin in plugins:
        for attr in ("banlist", "allowlist"):
            dnlist = getattr(plugin, attr, None)
            if dnlist is not None:
                check_mapfile(report, dnlist.path, kind="keys")
        for attr in ("slots", "authfile"):
            cached = getattr(plugin, attr, None)
            if cached is not None and report.first_visit(cached.path):
                check_owner(report, cached.path)
        if isinstance(getattr(plugin, "certdir", None), str):
            check_ca_dir(report, plugin.certdir)
        if isinstance(getattr(plugin, "vomsdir", None), str):
            check_vomsdir(report, plugin.vomsdir)


def _pool_dir(plugin: Any) -> tuple[str | None, bool]:
    """(the gridmapdir or groupmapdir a pool plugin leases in, whether it holds accounts)."""
    if hasattr(plugin, "groupmapdir"):
        if not getattr(plugin, "pool", False):
            return None, False
        return plugin.groupmapdir or os.environ.get("GROUPMAPDIR"), False
    if hasattr(plugin, "gridmapdir") and getattr(plugin, "pool", True):
        return plugin.gridmapdir or os.environ.get("GRIDMAPDIR"), True
    return None, True


def _lcmaps_files(report: Report, plugins: list[Any]) -> None:
    from sitefiles.mapfile import default_gridmapfile

    pools: dict[tuple[str, bool], list[tuple[str, int, str, bool]]] = {}
    for plugin in plugins:
        if getattr(plugin, "banfile", None):
            check_mapfile(report, plugin.banfile, kind="keys")
        if getattr(plugin, "certdir", None):
            check_ca_dir(report, plugin.certdir)
        if hasattr(plugin, "gridmapfile"):
            mapfile, kind = plugin.gridmapfile or default_gridmapfile(), "accounts"
        elif getattr(plugin, "groupmapfile", None):
            mapfile, kind = plugin.groupmapfile, "groups"
        else:
            continue
        found = check_mapfile(report, mapfile, kind=kind)
        directory, accounts = _pool_dir(plugin)
        if directory:
            strict = getattr(plugin, "strict", True)
            pools.setdefault((directory, accounts), []).extend(
                (mapfile, line, pool, strict) for line, pool in found)
    for (directory, accounts), wanted in pools.items():
        check_gridmapdir(report, directory, list(dict.fromkeys(wanted)), accounts=accounts)


def _check_ticket_key(report: Report, path: str) -> None:
    from scas_server.ticket import SigningKey, TicketError

    report.first_visit(path)
    try:
        st = os.stat(path)
    except OSError as exc:
        report.add(path, None, f"ticket key: {exc.strerror}")
        return
    mode = stat.S_IMODE(st.st_mode)
    if mode not in (0o600, 0o400):
        report.add(path, None, f"ticket key has mode {mode:04o}; it must be 0600 or 0400")
    check_owner(report, path, what="ticket key")
    try:
        SigningKey.from_file(path)
    except TicketError as exc:
        if mode in (0o600, 0o400):
            report.add(path, None, exc.reason.removeprefix(f"{path}: "))


def _routes(report: Report, cfg: Any, policy_names: list[str]) -> None:
    """Every policy a route names exists in lcmaps.db."""
    lines = _yaml_lines(cfg.path)
    for i, route in enumerate(cfg.policies):
        for name in route.lcmaps:
            if policy_names and name not in policy_names:
                report.add(cfg.path, lines.get(f"policies[{i}].lcmaps"),
                           f"policies[{i}]: lcmaps policy {name!r} is not in {cfg.lcmaps_db}")


def check_site(config: str) -> Report:
    """Every problem in the site that ``config`` describes."""
    report = Report()
    cfg = _load_config(report, config)
    if cfg is None:
        return report
    lcas_plugins = _check_lcas(report, cfg.lcas_db)
    names, lcmaps_plugins = _check_lcmaps(report, cfg.lcmaps_db)
    _routes(report, cfg, names)
    try:
        _lcas_files(report, lcas_plugins)
        _lcmaps_files(report, lcmaps_plugins)
    finally:
        for plugin in (*lcas_plugins, *lcmaps_plugins):
            plugin.terminate()
    for directory in (cfg.certdir, cfg.tls_ca_dir):
        if directory:
            check_ca_dir(report, directory)
    if cfg.vomsdir:
        check_vomsdir(report, cfg.vomsdir)
    if cfg.ticket is not None:
        _check_ticket_key(report, cfg.ticket.key)
    if cfg.audit_file != "-":
        check_writable_dir(report, cfg.audit_file, what="audit log")
    return report


def _lines(report: Report) -> Iterator[str]:
    for problem in report.problems:
        yield problem.text()
    if not report.problems:
        yield f"ok: {len(report.files)} files checked"
    else:
        yield (f"{len(report.problems)} problem(s) found in {len(report.files)} files "
               "checked")


def cmd_check(args: argparse.Namespace) -> int:
    report = check_site(args.config)
    doc = [{"file": p.file, "line": p.line, "reason": p.reason, "severity": p.severity}
           for p in report.problems]
    emit(args, doc, _lines(report))
    return PROBLEM if report.problems else OK


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``check``."""
    p = sub.add_parser(
        "check", help="validate every file the configuration names (like doas -C)",
        description="Check the server YAML, lcas.db, lcmaps.db, every plugin's arguments "
                    "and the files they name. Exit 0 clean, 1 problems found, 2 cannot check.",
    )  # fmt: skip
    add_common(p)
    p.set_defaults(func=cmd_check)
