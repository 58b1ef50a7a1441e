"""``scas-admin who ACCOUNT --at TIME``: who held a pool account at a moment (incident response).

Two sources, neither complete on its own. The audit log (``audit.file`` of the server YAML,
and its rotated copies ``.N``, ``.N.gz``, ``-YYYYMMDD[.gz]``) says which credential each
Permit mapped to the account, with request ID and PEP, and whether that request made the
lease or found it (``lease_event``; older lines lack it and it is inferred), but not when a
lease was released or expired, nor what C LCMAPS or another server did. The gridmapdir says
who holds the account now and when that lease was last renewed, with the DN lower-cased by
the lease encoding.

The holder at TIME is the last Permit for the account at or before TIME. Its *tenure* is
the run of Permits around it with the same lease; the answer is ``certain`` when a Permit
of that tenure lies at or after TIME (or the lease still stands unrenewed since before
TIME), ``probable`` when the lease may have been released between its last Permit and
TIME, and ``uncertain`` when the gridmapdir contradicts the audit or is the only witness.
For a TIME not before the moment we read the gridmapdir (``now``), its state decides.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import re
import time
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from leases import upkeep
from leases.names import decode_lease, encode_lease
from leases.store import GridmapDirError
from safetext import one_line
from site_admin.common import OK, PROBLEM, AdminError, add_common, emit, load_server_config, warn
from site_admin.pools import iso, stores

#: the audit lines ``who`` reads: a Permit, or scas-admin removing a lease (its ``ended``)
_KINDS: dict[str, str | None] = {"Permit": None, "Released": "released", "Expired": "expired"}
_ROTATED = re.compile(r"\.(\d+)(\.gz)?|-(\d{8,14})(\.gz)?")


@dataclass(frozen=True)
class Permit:
    """One audit line that mapped a credential to the account."""

    time: datetime
    dn: str
    fqans: tuple[str, ...]
    request_id: str | None
    pep: str | None
    lease: str | None
    where: str  # file:line
    lease_event: str | None = None  # "new" or "held" (servers since session 5; else None)
    ended: str | None = None  # "released" or "expired": a scas-admin line, not a Permit

    @property
    def key(self) -> str:
        """What one tenure shares: the lease name (the DN's encoding when none was logged)."""
        return self.lease or encode_lease(self.dn)

    def doc(self) -> dict[str, Any]:
        return {"time": stamp(self.time), "dn": self.dn, "fqans": list(self.fqans),
                "request_id": self.request_id, "pep": self.pep, "lease": self.lease,
                "lease_event": self.lease_event, "ended": self.ended, "source": self.where}


def stamp(t: datetime) -> str:
    return t.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def parse_time(text: str) -> datetime:
    """ISO 8601 (UTC when no offset is given) or ``now``."""
    if text.strip().lower() == "now":
        return datetime.now(UTC)
    try:
        t = datetime.fromisoformat(text.strip())
    except ValueError:
        raise AdminError(f"--at {text!r}: expected ISO 8601 (e.g. 2024-05-01T12:00:00Z) "
                         "or now") from None
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


# --- the audit trail -----------------------------------------------------------------


def audit_files(path: str) -> list[str]:
    """The live file and its rotated copies, oldest first (dateext by date, then ``.N``
    from the highest N, then the live file)."""
    folder, base = os.path.split(path)
    try:
        names = os.listdir(folder or ".")
    except OSError as exc:
        raise AdminError(f"{folder}: {exc.strerror}") from None
    dated, numbered = [], []
    for name in names:
        m = _ROTATED.fullmatch(name[len(base):]) if name.startswith(base) else None
        if m and m.group(1):
            numbered.append((-int(m.group(1)), name))
        elif m:
            dated.append((m.group(3), name))
    files = [os.path.join(folder, n) for _k, n in sorted(dated) + sorted(numbered)]
    return files + ([path] if os.path.exists(path) else [])


def read_permits(files: list[str], account: str) -> tuple[list[Permit], datetime | None]:
    """Every Permit line for ``account`` (deduplicated, in time order) and the time of the
    earliest line of any kind (how far back the trail reaches)."""
    needle = ('"account":' + json.dumps(account)).encode()
    seen: set[bytes] = set()
    out: list[Permit] = []
    earliest: datetime | None = None
    for path in files:
        first = True
        for lineno, raw in _lines(path):
            if first:
                t = _first_time(raw)
                earliest = t if earliest is None or (t and t < earliest) else earliest
                first = False
            if needle not in raw or raw in seen:
                continue
            seen.add(raw)
            permit = _permit(raw, account, f"{os.path.basename(path)}:{lineno}")
            if permit is not None:
                out.append(permit)
    out.sort(key=lambda p: p.time)
    return out, earliest


def _lines(path: str) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of a plain or gzip file; a damaged file is warned about and
    read as far as it goes (a rotation may be compressing it right now)."""
    opener: Any = gzip.open if path.endswith(".gz") else open
    lineno = 0
    try:
        with opener(path, "rb") as fh:
            for lineno, raw in enumerate(fh, 1):
                yield lineno, raw.rstrip(b"\n")
    except (OSError, EOFError, zlib.error) as exc:
        reason = getattr(exc, "strerror", None) or str(exc) or type(exc).__name__
        warn(f"{path}:{lineno + 1}: {reason}; read up to there")


def _first_time(raw: bytes) -> datetime | None:
    try:
        return _when(json.loads(raw)["time"])
    except (ValueError, KeyError, TypeError):
        return None


def _when(text: Any) -> datetime:
    t = datetime.fromisoformat(str(text))
    return (t if t.tzinfo else t.replace(tzinfo=UTC)).astimezone(UTC)


def _permit(raw: bytes, account: str, where: str) -> Permit | None:
    try:
        data = json.loads(raw)
        decision = data.get("decision")
        if decision not in _KINDS or data.get("account") != account:
            return None
        return Permit(_when(data["time"]), str(data.get("dn") or ""),
                      tuple(str(f) for f in data.get("fqans") or ()),
                      data.get("request_id"), data.get("pep"), data.get("lease"), where,
                      data.get("lease_event") if data.get("lease_event") in ("new", "held")
                      else None, _KINDS[decision])  # fmt: skip
    except (ValueError, KeyError, TypeError, AttributeError):
        warn(f"{where}: not an audit line (skipped)")
        return None


# --- the gridmapdir now --------------------------------------------------------------


def current_lease(args: argparse.Namespace, account: str) -> dict[str, Any] | None:
    """The account's state now in the gridmapdirs lcmaps.db names: ``state`` free or leased
    (with the lease), ``observed`` when we looked; None when no gridmapdir has the account.

    A gridmapdir that cannot be read is a warning: the audit trail still answers."""
    try:
        homes = [s for s in stores(args) if s.kind == "account"]
    except AdminError as exc:
        warn(f"{exc.reason}; answering from the audit log alone")
        return None
    for store in homes:
        observed = time.time()
        try:
            link = upkeep.lease_of(store.path, account)
        except GridmapDirError:
            continue
        state: dict[str, Any] = {"directory": store.path, "observed": observed,
                                 "state": "free" if link is None else "leased"}
        if link is not None:
            dn, groups, mapcount = decode_lease(link.name)
            state.update(lease=link.name, dn=dn, groups=list(groups), mapcount=mapcount,
                         renewed=iso(link.mtime), mtime=link.mtime)
        return state
    return None


# --- the answer ----------------------------------------------------------------------


def answer(permits: list[Permit], at: datetime, seen: dict[str, Any] | None) -> dict[str, Any]:
    """The holder at ``at``, its tenure, and how sure that is (module docstring).

    ``seen`` is the gridmapdir's state (:func:`current_lease`). When TIME is not before we
    looked, that state is the answer: free means nobody; a lease the audit does not explain
    is given from the lease name.
    """
    ends = [p for p in permits if p.ended]
    permits = [p for p in permits if not p.ended]
    now = seen if seen is not None and seen["state"] == "leased" else None
    before = [i for i, p in enumerate(permits) if p.time <= at]
    present = seen is not None and at.timestamp() >= seen["observed"]
    if present and now is None:
        last = [f"; the last Permit for it was {permits[before[-1]].dn} at "
                f"{stamp(permits[before[-1]].time)}" if before else ""]
        return _nobody(seen, ["the account is free now" + last[0]])
    if present and now is not None and (not before or permits[before[-1]].key != now["lease"]):
        return _from_gridmapdir(now, "certain", "the lease stands now (TIME is not before we "
                                                "looked) and no audit line explains it")
    if not before:
        if now is None or now["mtime"] > at.timestamp():
            return _nobody(seen, [])
        return _from_gridmapdir(now, "uncertain", "no audit line for the account at or before "
                                f"TIME; the only witness is the current lease, unrenewed since "
                                f"{now['renewed']} (before TIME)")
    i = before[-1]
    holder = permits[i]
    start, end = i, i
    while start > 0 and permits[start - 1].key == holder.key:
        start -= 1
    while end + 1 < len(permits) and permits[end + 1].key == holder.key:
        end += 1
    prev = permits[start - 1] if start > 0 else None
    nxt = permits[end + 1] if end + 1 < len(permits) else None
    closing = next((e for e in ends if e.key == holder.key and e.time >= permits[end].time
                    and (nxt is None or e.time <= nxt.time)), None)  # fmt: skip
    if closing is not None and closing.time <= at:
        return _nobody(seen, [f"{holder.dn}'s lease ended before TIME: {closing.ended} at "
                              f"{stamp(closing.time)} ({closing.where}); no Permit for the "
                              "account between then and TIME"])
    certainty, notes = _certainty(holder, permits[end], nxt, at, now, closing)
    marks: dict[int, list[str]] = {}
    if prev is not None:
        marks.setdefault(start - 1, []).append("previous holder last seen")
    marks.setdefault(start, []).append(_first_seen(permits[start], prev))
    marks.setdefault(i, []).append("last seen at or before TIME")
    if i < end:
        marks.setdefault(i + 1, []).append("first seen after TIME")
    marks.setdefault(end, []).append("last seen")
    if nxt is not None:
        marks.setdefault(end + 1, []).append("next holder first seen")
    events = [{"event": "; ".join(m), **permits[k].doc()} for k, m in sorted(marks.items())]
    if closing is not None:
        events.append({"event": f"lease {closing.ended}", **closing.doc()})
        events.sort(key=lambda e: e["time"])
    return {
        "found": True, "certainty": certainty, "source": "audit", "holder": holder.doc(),
        "events": events, "gridmapdir": seen, "notes": notes,
    }


def _first_seen(first: Permit, prev: Permit | None) -> str:
    """How a tenure began: as the server audited it, or as inferred from older lines."""
    if first.lease_event == "new":
        return "first seen, lease made by this request"
    if first.lease_event == "held":
        return ("first seen, lease already held (made before this log, or by another writer "
                "such as C LCMAPS)")
    if prev is not None:
        return "first seen, lease new (the account came from another key)"
    return "first seen (no earlier audit line for the account)"


def _certainty(
    holder: Permit, last: Permit, nxt: Permit | None, at: datetime, now: dict[str, Any] | None,
    closing: Permit | None = None,
) -> tuple[str, list[str]]:
    at_ts = at.timestamp()
    if now is not None and now["lease"] != holder.key and now["mtime"] <= at_ts:
        return "uncertain", [
            f"the gridmapdir has {now['dn']} holding the account, unrenewed since "
            f"{now['renewed']} (before TIME), with no audit line for it: another writer "
            "(C LCMAPS, another server) leased it, so the holder at TIME may be that key"]
    if closing is not None:  # audited end after TIME: held from the Permit until then
        return "certain", [f"the lease was {closing.ended} at {stamp(closing.time)} "
                           f"({closing.where}), after TIME"]
    if last.time >= at:
        return "certain", []
    if now is not None and now["lease"] == holder.key and nxt is None and now["mtime"] <= at_ts:
        return "certain", ["the same lease still stands, unrenewed since before TIME"]
    until = f" until the next holder at {stamp(nxt.time)}" if nxt else ""
    return "probable", [
        f"no Permit for the account after {stamp(last.time)}{until}: the lease may have "
        "been released or expired in between (scas-admin audits its releases and expiry; "
        "other writers, C LCMAPS among them, do not)"]


def _nobody(seen: dict[str, Any] | None, notes: list[str]) -> dict[str, Any]:
    return {"found": False, "certainty": None, "holder": None, "events": [],
            "gridmapdir": seen, "notes": notes}


def _from_gridmapdir(now: dict[str, Any], certainty: str, why: str) -> dict[str, Any]:
    """The holder named by the current lease alone."""
    holder = {"dn": now["dn"], "fqans": [], "groups": now["groups"], "request_id": None,
              "pep": None, "lease": now["lease"], "time": None, "source": now["directory"]}
    return {
        "found": True, "certainty": certainty, "source": "gridmapdir", "holder": holder,
        "events": [], "gridmapdir": now,
        "notes": [f"{why}. The DN is read back from the lease name (lower case); request ID "
                  "and PEP are unknown"],
    }


# --- the command ---------------------------------------------------------------------


def cmd_who(args: argparse.Namespace) -> int:
    at = parse_time(args.at)
    path = args.audit or load_server_config(args).audit_file
    if path == "-":
        raise AdminError(f"{args.config}: audit.file is '-' (stderr): no audit trail to search")
    files = audit_files(path)
    if not files:
        raise AdminError(f"{path}: no such file, nor rotated copies of it")
    permits, earliest = read_permits(files, args.account)
    seen = current_lease(args, args.account)
    if args.at.strip().lower() == "now":
        at = datetime.now(UTC)  # now is when we looked, not before
    doc = {"account": args.account, "at": stamp(at), "audit_files": files,
           **answer(permits, at, seen)}
    if not doc["found"] and earliest is not None and earliest > at:
        doc["notes"].append(f"the audit trail starts at {stamp(earliest)}, after TIME")
    emit(args, doc, _lines_of(doc))
    return OK if doc["found"] else PROBLEM


def _lines_of(doc: dict[str, Any]) -> list[str]:
    head = f"{one_line(doc['account'])} at {doc['at']}"
    if not doc["found"]:
        return [f"{head}: nobody found", *_now_lines(doc)]
    h = doc["holder"]
    lines = [f"{head}: {one_line(h['dn'])} ({doc['certainty']})"]
    if h.get("fqans"):
        lines.append(f"  fqans    {one_line(', '.join(h['fqans']))}")
    if h.get("request_id") or h.get("pep"):
        lines.append(f"  request  {one_line(h.get('request_id') or '-')} from PEP "
                     f"{one_line(h.get('pep') or '-')} at {h['time']} ({one_line(h['source'])})")
    if h.get("lease"):
        lines.append(f"  lease    {one_line(h['lease'])}")
    for e in doc["events"]:
        lines.append(f"  {e['time']}  {e['event']}: {one_line(e['dn'])} "
                     f"[{one_line(e.get('request_id') or '-')}] ({one_line(e['source'])})")
    return lines + _now_lines(doc)


def _now_lines(doc: dict[str, Any]) -> list[str]:
    seen = doc.get("gridmapdir")
    if seen is None:
        now = "  now: in no gridmapdir"
    elif seen["state"] == "free":
        now = "  now: free"
    else:
        now = f"  now: leased to {one_line(seen['dn'])}, last renewed {seen['renewed']}"
    return [now] + [f"note: {one_line(n)}" for n in doc["notes"]]


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``who``."""
    p = sub.add_parser("who", help="who held a pool account at a given time (from the audit)")
    p.add_argument("account", help="the pool account, e.g. atlas001")
    p.add_argument("--at", required=True, metavar="TIME",
                   help="ISO 8601 (UTC unless an offset is given) or 'now'")
    p.add_argument("--audit", metavar="FILE",
                   help="the audit log to search (default: audit.file of the server YAML)")
    add_common(p)
    p.set_defaults(func=cmd_who)
