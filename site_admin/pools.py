"""``scas-admin pools``, ``leases``, ``release``, ``expire``: the gridmapdir beside live writers.

The directories and pools come from the site's own files: every pool plugin in lcmaps.db
(``lcmaps_poolaccount.mod``, ``lcmaps_voms_poolaccount.mod``, ``lcmaps_voms_poolgroup.mod``)
names a directory and a mapfile, and each ``.prefix`` mapping there is a pool. Entries of
the directory that no mapfile names still count, as a pool named after their prefix
(``atlas001`` -> ``atlas``), marked unconfigured: leases outlive mapfile edits.

Removal is race-safe against running servers and C LCMAPS (``leases.upkeep``); this module
only finds, filters and reports. ``stores()`` is shared with ``site_admin.who``.
"""

from __future__ import annotations

import argparse
import os
import re
import stat
import time
from collections import Counter
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from leases import upkeep
from leases.names import decode_lease, encode_lease, in_pool, is_candidate_entry
from leases.store import GridmapDirError
from safetext import one_line
from site_admin.common import (
    OK,
    PROBLEM,
    AdminError,
    Refused,
    add_common,
    emit,
    load_server_config,
    progress,
    warn,
)

#: LCMAPS plugins that lease, and what their directory holds
POOL_PLUGINS = {"poolaccount": "account", "voms_poolaccount": "account",
                "voms_poolgroup": "group"}
DEFAULT_STALE = "7d"
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


@dataclass
class Store:
    """One lease directory as lcmaps.db uses it: its pools (prefix -> strict prefix match)."""

    path: str
    kind: str  # "account" (gridmapdir) or "group" (groupmapdir)
    prefixes: dict[str, bool] = field(default_factory=dict)
    sources: list[str] = field(default_factory=list)  # "lcmaps.db:LINE"

    def pool_of(self, entry: str) -> tuple[str, bool] | None:
        """(pool, configured) for a directory entry; None when it is no pool account."""
        if not is_candidate_entry(entry):
            return None
        best = max((p for p, strict in self.prefixes.items() if in_pool(entry, p, strict)),
                   key=len, default=None)
        if best is not None:
            return best, True
        stem = entry.rstrip("0123456789")
        return (stem, False) if stem and stem != entry else None


# --- finding the stores --------------------------------------------------------------


def stores(args: argparse.Namespace) -> list[Store]:
    """The lease directories lcmaps.db names, with the pools of their mapfiles."""
    from lcmaps.plugin_api import PluginInitError
    from lcmaps.policy_db import PolicyDbError, load_policy_db

    cfg = load_server_config(args)
    try:
        db = load_policy_db(cfg.lcmaps_db)
    except PolicyDbError as exc:
        raise AdminError(str(exc)) from None
    found: dict[str, Store] = {}
    for spec in db.plugins:
        kind = POOL_PLUGINS.get(spec.entry_point)
        if kind is None:
            continue
        where = f"{db.filename}:{spec.lineno}"
        try:
            plugin = _plugin(spec.entry_point, spec.argv, where)
        except PluginInitError as exc:
            raise AdminError(f"{where}: {exc.reason}") from None
        dirs = plugin.lease_stores()
        if not dirs:
            warn(f"{where}: {spec.module} names no directory and its environment variable "
                 "is not set here; skipped")
            continue
        path = os.path.realpath(dirs[0].location)
        store = found.setdefault(path, Store(path, kind))
        store.sources.append(where)
        for prefix in _prefixes(_mapfile_of(plugin, kind)):
            store.prefixes.setdefault(prefix, bool(getattr(plugin, "strict", True)))
    if not found:
        raise Refused(f"{db.filename}: no pool plugin names a gridmapdir")
    return list(found.values())


def _plugin(entry_point: str, argv: tuple[str, ...], where: str) -> Any:
    from sitefiles.plugins import load_plugin_class

    cls = load_plugin_class("scas_stack.lcmaps_plugins", entry_point)
    if cls is None:
        raise AdminError(f"{where}: plugin {entry_point} cannot be loaded")
    return cls(argv)


def _mapfile_of(plugin: Any, kind: str) -> str:
    from sitefiles.mapfile import default_gridmapfile

    if kind == "group":
        return str(plugin.groupmapfile)
    return str(getattr(plugin, "gridmapfile", None) or default_gridmapfile())


def _prefixes(path: str) -> list[str]:
    """The ``.pool`` mappings of a mapfile, in file order; problems are warnings (the
    directory still says what is leased)."""
    from sitefiles import mapfile

    try:
        parsed = mapfile.load(path)
    except mapfile.MapfileError as exc:
        warn(f"{exc}; its pools are known only from the directory")
        return []
    if parsed.error is not None:
        warn(f"{parsed.error} (pools after that line are known only from the directory)")
    seen = [m[1:] for line in parsed.lines for m in line.mappings if m.startswith(".")]
    return list(dict.fromkeys(p for p in seen if p))


# --- shared small helpers --------------------------------------------------------------


def parse_duration(text: str, option: str) -> float:
    """``30d``, ``12h``, ``90m``, ``3600s`` (and ``2w``) -> seconds."""
    m = re.fullmatch(r"\s*(\d+)\s*([smhdw])\s*", text or "")
    if m is None or int(m.group(1)) == 0:
        raise AdminError(f"{option} {text!r}: expected a positive duration such as 30d, 12h, "
                         "90m or 3600s")
    return float(int(m.group(1)) * _UNITS[m.group(2)])


def iso(epoch: float) -> str:
    return datetime.fromtimestamp(epoch, UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def describe(link: upkeep.LeaseLink, kind: str) -> dict[str, Any]:
    """A lease for output: the encoded name, and the key read back from it."""
    identity, groups, mapcount = decode_lease(link.name)
    doc: dict[str, Any] = {
        "account": link.account, "lease": link.name, "renewed": iso(link.mtime),
        "mtime": link.mtime, "groups": list(groups), "mapcount": mapcount,
        "fqan" if kind == "group" else "dn": identity,
    }  # fmt: skip
    return doc


def key_text(doc: dict[str, Any]) -> str:
    text = doc.get("dn") or doc.get("fqan") or ""
    if doc.get("groups"):
        text += f" (groups {','.join(doc['groups'])})"
    if doc.get("mapcount"):
        text += f" mapcount={doc['mapcount']}"
    return one_line(text)


def _survey(store: Store) -> upkeep.Survey:
    try:
        return upkeep.survey(store.path, progress=_bar(store.path))
    except GridmapDirError as exc:
        raise AdminError(str(exc)) from None


def _bar(label: str) -> upkeep.Progress:
    """A progress bar for a large directory (``common.progress`` draws only on a tty)."""

    def show(phase: str, done: int, total: int) -> None:
        if total >= PROGRESS_MIN:
            progress(done, total, f"{label} {phase}")

    return show


#: entries (or leases) from which a long operation shows a bar (on a terminal only)
PROGRESS_MIN = 100
#: expire keeps a lease whose inode changed this recently (a writer between link and touch)
SETTLE = 2.0


# --- pools ---------------------------------------------------------------------------


def cmd_pools(args: argparse.Namespace) -> int:
    stale_after = parse_duration(args.stale_after, "--stale-after")
    cutoff = time.time() - stale_after
    rows: list[dict[str, Any]] = []
    dangling = 0
    for store in stores(args):
        survey = _survey(store)
        rows += _pool_rows(store, survey, cutoff)
        dangling += sum(1 for ln in survey.leases if ln.account is None)
    lines = [f"{'POOL':<16} {'TOTAL':>6} {'FREE':>6} {'LEASED':>6} {'STALE':>6} {'BUSY':>5}"
             "  DIRECTORY"]
    for r in rows:
        mark = "" if r["configured"] else "  (in no mapfile)"
        lines.append(f"{r['pool']:<16} {r['total']:>6} {r['free']:>6} {r['leased']:>6} "
                     f"{r['stale']:>6} {r['busy']:>5}  {one_line(r['directory'])}{mark}")
    lines.append(f"stale: leased, not renewed for {args.stale_after} (--stale-after); "
                 "busy: being leased or released right now")
    if dangling:
        lines.append(f"{dangling} dangling lease(s) whose account file is gone (see leases)")
    emit(args, {"stale_after": stale_after, "pools": rows, "dangling": dangling}, lines)
    return OK


def _pool_rows(store: Store, survey: upkeep.Survey, cutoff: float) -> list[dict[str, Any]]:
    counts: dict[tuple[str, bool], Counter[str]] = {
        (p, True): Counter() for p in store.prefixes
    }
    for entry in survey.entries:
        pool = store.pool_of(entry.name)
        if pool is None:
            continue
        c = counts.setdefault(pool, Counter())
        c["total"] += 1
        c[entry.state] += 1
        if entry.state == "leased" and entry.mtime < cutoff:
            c["stale"] += 1
    return [
        {"pool": p, "directory": store.path, "kind": store.kind, "configured": conf,
         **{k: c[k] for k in ("total", "free", "leased", "stale", "busy")}}
        for (p, conf), c in sorted(counts.items())
    ]  # fmt: skip


# --- leases --------------------------------------------------------------------------


def cmd_leases(args: argparse.Namespace) -> int:
    want = encode_lease(args.dn) if args.dn else None
    found: list[dict[str, Any]] = []
    for store in stores(args):
        for link in _survey(store).leases:
            home = store.pool_of(link.account) if link.account else None
            pool = home[0] if home else None
            if args.pool is not None and pool != args.pool:
                continue
            if want is not None and (store.kind != "account" or
                                     link.name.split(":", 1)[0] != want):
                continue
            found.append({**describe(link, store.kind), "pool": pool,
                          "directory": store.path})
    found.sort(key=lambda d: (d["directory"], d["account"] or "", d["lease"]))
    lines = [f"{'ACCOUNT':<16} {'RENEWED':<20}  KEY"]
    lines += [f"{one_line(d['account'] or '(dangling)'):<16} {d['renewed']:<20}  {key_text(d)}"
              for d in found]
    emit(args, {"leases": found}, lines)
    return PROBLEM if (args.pool or args.dn) and not found else OK


# --- release -------------------------------------------------------------------------


def cmd_release(args: argparse.Namespace) -> int:
    if args.dn is not None:
        results = _release_dn(args)
    else:
        results = _release_account(args)
    docs = [{**describe(r.lease, kind), "directory": path, "outcome": r.outcome,
             "reason": r.reason} for path, kind, r in results]
    lines = [_release_line(d) for d in docs]
    audit_removals(args, docs, "Released")
    emit(args, {"released": docs}, lines)
    return OK if all(d["outcome"] in ("removed", "superseded", "gone") for d in docs) else PROBLEM


def _release_line(d: dict[str, Any]) -> str:
    who = f"{one_line(d['account'] or '(dangling)')} ({key_text(d)})"
    if d["outcome"] == "removed":
        return f"released {who}, last renewed {d['renewed']}"
    if d["outcome"] == "gone":
        return f"{who}: already released by another writer"
    if d["outcome"] == "superseded":
        return f"released {who}; note: {one_line(d['reason'])}"
    return f"kept {who}: {one_line(d['reason'])}; nothing removed, run again"


def _release_account(args: argparse.Namespace) -> list[tuple[str, str, upkeep.Removal]]:
    account = args.account
    every = stores(args)
    homes = [s for s in every if os.path.isfile(os.path.join(s.path, account))]
    if not homes or not is_candidate_entry(account) or "/" in account:
        raise Refused(f"no pool account {one_line(account)} in "
                      f"{', '.join(s.path for s in every)}")
    out = []
    for store in homes:
        try:
            removal = upkeep.release_account(store.path, account)
        except GridmapDirError as exc:
            raise AdminError(str(exc)) from None
        if removal is not None:
            out.append((store.path, store.kind, removal))
    if not out:
        raise Refused(f"{account} is not leased")
    return out


def _release_dn(args: argparse.Namespace) -> list[tuple[str, str, upkeep.Removal]]:
    want = encode_lease(args.dn)
    out = []
    for store in stores(args):
        if store.kind != "account":
            continue
        for link in _survey(store).leases:
            if link.name.split(":", 1)[0] == want:
                try:
                    out.append((store.path, store.kind, upkeep.remove_lease(store.path, link)))
                except GridmapDirError as exc:
                    raise AdminError(str(exc)) from None
    if not out:
        raise Refused(f"no lease for {one_line(args.dn)}")
    return out


def audit_removals(args: argparse.Namespace, docs: list[dict[str, Any]], event: str) -> None:
    """One line per removed lease in the server's audit log, so ``who`` sees where a tenure
    ended. Best effort: the lease is gone either way, so a failure is a warning. The file is
    only appended to, never created: one made here (as root) would lock the server out."""
    from scas_server.audit import AuditLog, AuditRecord

    removed = [d for d in docs if d["outcome"] in ("removed", "superseded") and d["account"]]
    path = load_server_config(args).audit_file if removed else "-"
    if path == "-":
        return
    text = "".join(AuditLog(path).line(AuditRecord(
        pep=f"scas-admin (uid {os.getuid()})", dn=d.get("dn") or d.get("fqan"),
        decision=event, account=d["account"], lease=d["lease"],
        reason=f"scas-admin {event.lower()} (last renewed {d['renewed']})",
    )) + "\n" for d in removed)  # fmt: skip
    flags = os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)  # O_NONBLOCK: a FIFO put there cannot hang us
    except OSError as exc:
        warn(f"{path}: {event.lower()} not audited: {exc.strerror}")
        return
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            warn(f"{path}: {event.lower()} not audited: not a regular file")
        elif os.write(fd, text.encode("ascii")) != len(text):
            warn(f"{path}: {event.lower()} audited only in part (short write)")
    except OSError as exc:
        warn(f"{path}: {event.lower()} not audited: {exc.strerror}")
    finally:
        os.close(fd)


# --- expire --------------------------------------------------------------------------


def cmd_expire(args: argparse.Namespace) -> int:
    older = parse_duration(args.older_than, "--older-than")
    cutoff = time.time() - older
    docs: list[dict[str, Any]] = []
    for store in stores(args):
        docs += _expire_store(store, cutoff, args.dry_run)
    done = [d for d in docs if d["outcome"] in ("removed", "superseded")]
    kept = [d for d in docs if d["outcome"] == "kept"]
    verb = "would expire" if args.dry_run else "expired"
    lines = [f"{verb} {one_line(d['account'] or '(dangling)')} ({key_text(d)}), "
             f"last renewed {d['renewed']}" for d in done]
    lines += [f"kept {one_line(d['account'] or '(dangling)')} ({key_text(d)}): "
              f"{one_line(d['reason'])}" for d in kept]
    lines.append(f"{verb} {len(done)} lease(s) not renewed since {iso(cutoff)} "
                 f"(--older-than {args.older_than}); {len(kept)} kept because they changed")
    doc = {"older_than": older, "cutoff": iso(cutoff), "dry_run": args.dry_run,
           "expired": done, "kept": kept}
    if not args.dry_run:
        audit_removals(args, done, "Expired")
    emit(args, doc, lines)
    return OK


def _expire_store(store: Store, cutoff: float, dry_run: bool) -> list[dict[str, Any]]:
    from leases.gridmapdir import GridmapDir

    try:
        if not dry_run:
            GridmapDir(store.path).sweep_claims()
        removals = upkeep.expire_leases(store.path, cutoff, dry_run=dry_run, settle=SETTLE,
                                        progress=_bar(store.path))
    except GridmapDirError as exc:
        raise AdminError(str(exc)) from None
    return [{**describe(r.lease, store.kind), "directory": store.path,
             "outcome": r.outcome, "reason": r.reason} for r in removals]


# --- registration --------------------------------------------------------------------


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``pools``, ``leases``, ``release`` and ``expire``."""
    p = sub.add_parser("pools", help="free, leased and stale accounts of every pool")
    p.add_argument("--stale-after", default=DEFAULT_STALE, metavar="DURATION",
                   help="a lease not renewed for this long is stale (default %(default)s)")
    add_common(p)
    p.set_defaults(func=cmd_pools)

    p = sub.add_parser("leases", help="list leases: account, key, last renewal")
    p.add_argument("--pool", help="only this pool (prefix without the dot)")
    p.add_argument("--dn", help="only leases of this DN (any case, as C compares)")
    add_common(p)
    p.set_defaults(func=cmd_leases)

    p = sub.add_parser("release", help="remove one lease, race-safely")
    which = p.add_mutually_exclusive_group(required=True)
    which.add_argument("account", nargs="?", help="the pool account to free")
    which.add_argument("--dn", help="free every lease of this DN")
    add_common(p)
    p.set_defaults(func=cmd_release)

    p = sub.add_parser("expire", help="remove leases not renewed for a while (cron clean-up)")
    p.add_argument("--older-than", required=True, metavar="DURATION",
                   help="e.g. 30d, 12h, 90m, 3600s")
    p.add_argument("--dry-run", action="store_true", help="list what would go; change nothing")
    add_common(p)
    p.set_defaults(func=cmd_expire)
