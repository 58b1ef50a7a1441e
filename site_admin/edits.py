"""``scas-admin ban|unban|bans`` and ``map add|rm``, ``maps``: edit the site's own lists.

The files edited are exactly those the server reads: the ban files named by
``lcas_userban.mod`` in lcas.db and by ``lcmaps_ban_dn.mod``/``lcmaps_ban_fqan.mod``
(``-banmapfile``) in lcmaps.db; the grid-mapfiles of ``lcmaps_localaccount.mod``
and ``lcmaps_poolaccount.mod`` (``-gridmapfile``, else the plugins' default).
They are found with the server's own parsers and plugin argument code.

An edit adds or removes whole lines and touches no other byte, so comments,
order and quoting stay as the site wrote them. The result is parsed with the
grid-mapfile parser the server uses and must hold exactly the old entries plus
(or minus) the edited one, else nothing is written. Writing, locking, reload and
restore-on-rejection are :mod:`site_admin.sitefile_edit`.
"""

from __future__ import annotations

import argparse
import os
import pwd
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from safetext import one_line
from site_admin.common import (
    OK,
    PROBLEM,
    AdminError,
    Refused,
    add_common,
    emit,
    load_server_config,
    warn,
)
from site_admin.reload import Reloaded, ServerRejected
from site_admin.sitefile_edit import Change, apply_changes, locked, read_bytes
from sitefiles import mapfile
from sitefiles.cglob import glob_match

BAN_PLUGINS = {"ban_dn": "dn", "ban_fqan": "fqan"}
MAP_PLUGINS = {"localaccount": "local", "poolaccount": "pool"}
REASON_PREFIX = b"# banned by "
ACCOUNT = re.compile(r"\.?[A-Za-z0-9_][A-Za-z0-9_.-]*\$?")


@dataclass
class SiteFile:
    """One file the server reads, what it holds (dn/fqan bans; local/pool mappings), and who
    reads it (``file:line plugin``)."""

    path: str
    kinds: set[str] = field(default_factory=set)
    readers: list[str] = field(default_factory=list)
    wildcards: bool = False

    def document(self) -> dict[str, Any]:
        return {"path": self.path, "kinds": sorted(self.kinds), "readers": self.readers}


# --- which files -------------------------------------------------------------


def _add(found: dict[str, SiteFile], path: str, kind: str, reader: str, wild: bool) -> None:
    path = os.path.abspath(path)
    sf = found.setdefault(path, SiteFile(path))
    sf.kinds.add(kind)
    sf.readers.append(reader)
    sf.wildcards |= wild


def _lcas_ban_files(cfg: Any, found: dict[str, SiteFile]) -> None:
    from lcas.db import LcasConfigError, load_db
    from lcas.plugin_api import PluginInitError
    from lcas.plugins._dnlist import parse_list_args

    try:
        entries = load_db(cfg.lcas_db)
    except LcasConfigError as exc:
        raise AdminError(str(exc)) from None
    db_dir = os.path.dirname(os.path.abspath(cfg.lcas_db))
    for entry in entries:
        if entry.entry_point != "userban":
            continue
        try:
            path, exact = parse_list_args(entry.argv, "userban", db_dir, flag="-no_wildcard")
        except PluginInitError as exc:
            raise AdminError(f"{cfg.lcas_db}:{entry.lineno}: {exc.reason}") from None
        if path is not None:
            _add(found, path, "dn", f"{cfg.lcas_db}:{entry.lineno} {entry.pluginname}",
                 not exact)


def _lcmaps_files(cfg: Any, wanted: dict[str, str], found: dict[str, SiteFile]) -> None:
    from lcmaps.evaluation import plugin_class
    from lcmaps.plugin_api import PluginInitError
    from lcmaps.policy_db import PolicyDbError, load_policy_db

    try:
        db = load_policy_db(cfg.lcmaps_db)
    except PolicyDbError as exc:
        raise AdminError(str(exc)) from None
    for spec in db.plugins:
        kind = wanted.get(spec.entry_point)
        cls = plugin_class(spec.entry_point) if kind else None
        if kind is None or cls is None:
            continue
        try:
            plugin = cls(spec.argv)  # these plugins only parse their argv here
        except PluginInitError as exc:
            raise AdminError(f"{db.filename}:{spec.lineno}: {exc.reason}") from None
        if kind in ("local", "pool"):
            path = getattr(plugin, "gridmapfile", None) or mapfile.default_gridmapfile()
        else:
            path = getattr(plugin, "banfile", None)
        if path:
            _add(found, path, kind, f"{db.filename}:{spec.lineno} {spec.module}",
                 bool(getattr(plugin, "wildcards", False)))


def ban_files(cfg: Any) -> list[SiteFile]:
    """Every ban file the server reads, in the order lcas.db then lcmaps.db names them."""
    found: dict[str, SiteFile] = {}
    _lcas_ban_files(cfg, found)
    _lcmaps_files(cfg, BAN_PLUGINS, found)
    return list(found.values())


def grid_mapfiles(cfg: Any) -> list[SiteFile]:
    """Every grid-mapfile the LCMAPS account plugins read."""
    found: dict[str, SiteFile] = {}
    _lcmaps_files(cfg, MAP_PLUGINS, found)
    return list(found.values())


# --- lines -------------------------------------------------------------------


def render(key: str, mappings: tuple[str, ...], what: str) -> bytes:
    """One grid-mapfile line that the parser reads back as exactly (key, mappings)."""
    if not key or any(c in key for c in "\n\r\0"):
        raise Refused(f"{what} {one_line(key)!r}: empty or has a line break or NUL")
    tail = "".join(f" {m}" for m in mappings)
    for text in (f'"{key}"{tail}', f"{key}{tail}"):
        raw = text.encode("utf-8", "surrogateescape")
        parsed = mapfile.parse(raw, "<entry>")
        if (parsed.error is None and len(parsed.lines) == 1
                and (parsed.lines[0].key, parsed.lines[0].mappings) == (key, mappings)):
            return raw
    raise Refused(f"{what} {one_line(key)!r} cannot be written in grid-mapfile syntax "
                  "(a quote with a blank, or a trailing backslash); nothing written")


def _parsed(data: bytes, path: str) -> mapfile.Mapfile:
    parsed = mapfile.parse(data, path)
    if parsed.error is not None:
        raise Refused(f"{parsed.error} (fix the file first; nothing written)")
    return parsed


def _entries(parsed: mapfile.Mapfile) -> list[tuple[str, tuple[str, ...]]]:
    return [(line.key, line.mappings) for line in parsed.lines]


def _append(data: bytes, lines: list[bytes]) -> bytes:
    if data and not data.endswith(b"\n"):
        data += b"\n"
    return data + b"".join(line + b"\n" for line in lines)


def _remove(data: bytes, linenos: list[int]) -> bytes:
    """``data`` without those lines, and without the ``# banned by`` note right above each."""
    parts = data.split(b"\n")
    drop = set()
    for n in linenos:
        drop.add(n - 1)
        if n >= 2 and parts[n - 2].startswith(REASON_PREFIX):
            drop.add(n - 2)
    kept = [p for i, p in enumerate(parts) if i not in drop]
    if len(parts) - 1 in drop and kept:
        kept.append(b"")  # the last line had no newline: keep the one before it
    return b"\n".join(kept)


def _checked(path: str, new: bytes, expected: list[tuple[str, tuple[str, ...]]]) -> bytes:
    """Refuse unless the server's parser reads ``new`` as exactly ``expected``."""
    parsed = mapfile.parse(new, path)
    if parsed.error is not None:
        raise Refused(f"refusing the edit, the result would not parse: {parsed.error}")
    if _entries(parsed) != expected:
        raise Refused(f"{path}: the edit would change other entries; nothing written")
    return new


def _note() -> str:
    who = os.environ.get("SUDO_USER") or pwd.getpwuid(os.getuid()).pw_name
    return f"{one_line(who)} at {datetime.now(UTC).strftime('%Y-%m-%dT%H:%M:%SZ')}"


# --- the edit transaction ----------------------------------------------------

# plan(site file, current bytes, parsed) -> (new bytes, line number) or None (nothing to do)
Plan = Callable[[SiteFile, bytes, mapfile.Mapfile], tuple[bytes, int] | None]


def _edit(args: argparse.Namespace, cfg: Any, files: list[SiteFile], plan: Plan,
          nothing: str) -> tuple[list[dict[str, Any]], Reloaded | None]:
    """Lock, plan every file, refuse if none changes, write, reload; undo if refused."""
    done: list[dict[str, Any]] = []
    with locked([f.path for f in files]):
        changes = []
        for sf in files:
            data, meta = read_bytes(sf.path)
            step = plan(sf, data, _parsed(data, sf.path))
            if step is not None:
                changes.append(Change(sf.path, data, step[0], meta))
                done.append({"path": sf.path, "line": step[1]})
        if not changes:
            raise Refused(nothing)
        try:
            result = apply_changes(changes, cfg.pidfile, reload=not args.no_reload)
        except ServerRejected as exc:
            raise Refused("the server rejected the new policy, so the edit was undone (files "
                          f"restored, running policy unchanged): {'; '.join(exc.errors)}"
                          ) from None
    return done, result


def _report(args: argparse.Namespace, doc: dict[str, Any], lines: list[str],
            result: Reloaded | None) -> int:
    doc["reload"] = result.document() if result is not None else None
    lines.append(result.line() if result is not None else "written; not reloaded (--no-reload)")
    emit(args, doc, lines)
    return OK


def _paths(files: list[SiteFile]) -> str:
    return one_line(", ".join(f.path for f in files))


def _where(done: list[dict[str, Any]]) -> str:
    return ", ".join(f"{one_line(d['path'])}:{d['line']}" for d in done)


# --- ban, unban, bans --------------------------------------------------------


def _ban_target(args: argparse.Namespace) -> tuple[str, str]:
    kind, value = ("dn", args.dn) if args.dn is not None else ("fqan", args.fqan)
    if not value.startswith("/"):
        raise AdminError(f"{kind.upper()} must start with '/': {one_line(value)!r}")
    return kind, value


def _files_of(files: list[SiteFile], kind: str, what: str, where: str) -> list[SiteFile]:
    chosen = [f for f in files if kind in f.kinds]
    if not chosen:
        raise Refused(f"no {what} is configured in {where}")
    return chosen


def _self_match(sf: SiteFile, key: str, what: str) -> None:
    if sf.wildcards and not glob_match(key, key):
        raise Refused(f"{sf.path}: read with wildcards, the {what} {one_line(key)!r} would not "
                      "match itself ('[' starts a character class); nothing written")


def cmd_ban(args: argparse.Namespace) -> int:
    kind, value = _ban_target(args)
    cfg = load_server_config(args)
    files = _files_of(ban_files(cfg), kind, f"{kind.upper()} ban file",
                      f"{cfg.lcas_db} or {cfg.lcmaps_db}")
    entry = render(value, (), kind.upper())
    note = ([f"# banned by {_note()}: {one_line(args.reason)}".encode("utf-8", "surrogateescape")]
            if args.reason else [])

    def plan(sf: SiteFile, data: bytes, parsed: mapfile.Mapfile) -> tuple[bytes, int] | None:
        if any(line.key == value for line in parsed.lines):
            return None
        _self_match(sf, value, kind.upper())
        new = _checked(sf.path, _append(data, [*note, entry]),
                       [*_entries(parsed), (value, ())])
        return new, new.count(b"\n")

    done, result = _edit(args, cfg, files, plan,
                         f"{one_line(value)} is already banned in {_paths(files)}")
    return _report(args, {"action": "ban", "kind": kind, "value": value, "files": done},
                   [f"banned {one_line(value)}: added to {_where(done)}"], result)


def _lines_of(parsed: mapfile.Mapfile, key: str) -> list[int]:
    return [line.lineno for line in parsed.lines if line.key == key]


def cmd_unban(args: argparse.Namespace) -> int:
    kind, value = _ban_target(args)
    cfg = load_server_config(args)
    files = _files_of(ban_files(cfg), kind, f"{kind.upper()} ban file",
                      f"{cfg.lcas_db} or {cfg.lcmaps_db}")

    def plan(sf: SiteFile, data: bytes, parsed: mapfile.Mapfile) -> tuple[bytes, int] | None:
        linenos = _lines_of(parsed, value)
        if not linenos:
            return None
        kept = [e for e in parsed.lines if e.key != value]
        return _checked(sf.path, _remove(data, linenos), [(e.key, e.mappings) for e in kept]), \
            linenos[0]

    done, result = _edit(args, cfg, files, plan,
                         f"{one_line(value)} is not banned in {_paths(files)}")
    return _report(args, {"action": "unban", "kind": kind, "value": value, "files": done},
                   [f"unbanned {one_line(value)}: removed from {_where(done)}"], result)


def _listing(files: list[SiteFile], show: Callable[[mapfile.MapfileLine, list[bytes]], str]
             ) -> tuple[list[dict[str, Any]], list[str], int]:
    """Document, text lines and exit code for ``bans``/``maps``: every file, every entry."""
    docs, lines, code = [], [], OK
    for sf in files:
        doc = sf.document()
        lines.append(f"{one_line(sf.path)}  ({', '.join(sorted(sf.kinds))}; read by "
                     f"{one_line(', '.join(sf.readers))})")
        try:
            data, _meta = read_bytes(sf.path)
        except AdminError as exc:
            warn(exc.reason)
            docs.append({**doc, "entries": [], "error": exc.reason})
            code = PROBLEM
            continue
        parsed = mapfile.parse(data, sf.path)
        raw = data.split(b"\n")
        doc["entries"] = [{"line": e.lineno, "key": e.key, "mappings": list(e.mappings),
                           "note": _reason(raw, e.lineno)} for e in parsed.lines]
        lines += [f"  {e.lineno:>5}  {show(e, raw)}" for e in parsed.lines]
        doc["error"] = str(parsed.error) if parsed.error is not None else None
        if parsed.error is not None:
            warn(str(parsed.error))
            code = PROBLEM
        docs.append(doc)
    return docs, lines, code


def _reason(raw: list[bytes], lineno: int) -> str | None:
    above = raw[lineno - 2] if lineno >= 2 else b""
    if above.startswith(REASON_PREFIX):
        return one_line(above[2:].decode("utf-8", "replace"))
    return None


def cmd_bans(args: argparse.Namespace) -> int:
    cfg = load_server_config(args)

    def show(e: mapfile.MapfileLine, raw: list[bytes]) -> str:
        why = _reason(raw, e.lineno)
        return one_line(e.key) + (f"   # {why}" if why else "")

    docs, lines, code = _listing(ban_files(cfg), show)
    emit(args, {"files": docs}, lines or ["no ban file is configured"])
    return code


# --- map add, map rm, maps ---------------------------------------------------


def cmd_map_add(args: argparse.Namespace) -> int:
    dn, account = args.dn, args.account
    if not dn.startswith("/"):
        raise AdminError(f"DN must start with '/': {one_line(dn)!r}")
    if not ACCOUNT.fullmatch(account) or account == ".":
        raise AdminError(f"not an account or .pool name: {one_line(account)!r}")
    kind = "pool" if account.startswith(".") else "local"
    cfg = load_server_config(args)
    files = _files_of(grid_mapfiles(cfg), kind, f"grid-mapfile read by lcmaps_{kind}account.mod",
                      cfg.lcmaps_db)
    if kind == "local" and not _account_exists(account):
        warn(f"no account {account!r} on this host (localaccount will fail for this DN here)")
    entry = render(dn, (account,), "DN")

    def plan(sf: SiteFile, data: bytes, parsed: mapfile.Mapfile) -> tuple[bytes, int] | None:
        for line in parsed.lines:
            if line.key == dn and any(m.startswith(".") == (kind == "pool")
                                      for m in line.mappings):
                return None
        if kind == "pool":
            _self_match(sf, dn, "DN")
        new = _checked(sf.path, _append(data, [entry]), [*_entries(parsed), (dn, (account,))])
        return new, new.count(b"\n")

    done, result = _edit(args, cfg, files, plan, f"{one_line(dn)} already has a {kind} "
                         f"mapping in {_paths(files)}; map rm it first")
    return _report(args, {"action": "map add", "dn": dn, "account": account, "files": done},
                   [f"mapped {one_line(dn)} -> {account}: added to {_where(done)}"], result)


def _account_exists(name: str) -> bool:
    try:
        pwd.getpwnam(name)
    except KeyError:
        return False
    return True


def cmd_map_rm(args: argparse.Namespace) -> int:
    dn = args.dn
    cfg = load_server_config(args)
    files = grid_mapfiles(cfg)
    if not files:
        raise Refused(f"no grid-mapfile is configured in {cfg.lcmaps_db}")

    def plan(sf: SiteFile, data: bytes, parsed: mapfile.Mapfile) -> tuple[bytes, int] | None:
        linenos = _lines_of(parsed, dn)
        if not linenos:
            return None
        kept = [(e.key, e.mappings) for e in parsed.lines if e.key != dn]
        return _checked(sf.path, _remove(data, linenos), kept), linenos[0]

    done, result = _edit(args, cfg, files, plan,
                         f"{one_line(dn)} is not in {_paths(files)}")
    return _report(args, {"action": "map rm", "dn": dn, "files": done},
                   [f"unmapped {one_line(dn)}: removed from {_where(done)}"], result)


def cmd_maps(args: argparse.Namespace) -> int:
    cfg = load_server_config(args)

    def show(e: mapfile.MapfileLine, raw: list[bytes]) -> str:
        return f"{one_line(e.key)} -> {one_line(','.join(e.mappings)) or '(none)'}"

    docs, lines, code = _listing(grid_mapfiles(cfg), show)
    emit(args, {"files": docs}, lines or ["no grid-mapfile is configured"])
    return code


# --- parsers -----------------------------------------------------------------


def _editing(p: argparse.ArgumentParser) -> None:
    add_common(p)
    p.add_argument("--no-reload", action="store_true",
                   help="write the files only; do not signal the running server")


def register(sub: argparse._SubParsersAction) -> None:
    """ban, unban, bans, map add|rm, maps."""
    for name, func, text in (("ban", cmd_ban, "ban a DN or FQAN in every ban file of its kind"),
                             ("unban", cmd_unban, "remove a DN or FQAN from the ban files")):
        p = sub.add_parser(name, help=text)
        who = p.add_mutually_exclusive_group(required=True)
        who.add_argument("--dn", help="user DN, e.g. /DC=org/DC=example/CN=Eve")
        who.add_argument("--fqan", help="VOMS FQAN, e.g. /dteam/Role=pilot")
        if name == "ban":
            p.add_argument("--reason", help="kept as a comment above the entry, with who/when")
        _editing(p)
        p.set_defaults(func=func)
    p = sub.add_parser("bans", help="list the entries of every ban file the server reads")
    add_common(p)
    p.set_defaults(func=cmd_bans)
    p = sub.add_parser("map", help="add or remove a DN in the grid-mapfile(s)")
    msub = p.add_subparsers(dest="map_command", required=True, metavar="add|rm")
    p = msub.add_parser("add", help="map DN to a local ACCOUNT or a .pool")
    p.add_argument("dn")
    p.add_argument("account", metavar="ACCOUNT|.pool")
    _editing(p)
    p.set_defaults(func=cmd_map_add)
    p = msub.add_parser("rm", help="remove every line of DN from the grid-mapfile(s)")
    p.add_argument("dn")
    _editing(p)
    p.set_defaults(func=cmd_map_rm)
    p = sub.add_parser("maps", help="list the entries of every grid-mapfile the server reads")
    add_common(p)
    p.set_defaults(func=cmd_maps)
