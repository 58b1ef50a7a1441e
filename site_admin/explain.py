"""``scas-admin explain``: why would the service permit or refuse this user?

Builds the pipeline the server builds from the same YAML (``build_pipeline``), asks it the
question a PEP would send, and reports each step: the LCAS plugins' verdicts in order, each
LCMAPS policy's path through its state machine, the account, and the final decision with the
reason the server would give. Nothing is leased: the LCMAPS engine's lease-store seam
(``Engine.store_factory``) hands the pool plugins a :class:`ReadOnlyStore`, which reads the
real gridmapdir (a held lease is found for real) and names the account a new lease would
get (the first free one in pool order) without creating any link.

Exit status: 0 for Permit, 1 for Deny or Indeterminate, 2 for a usage or system error.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import stat
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from lcas.plugin_api import Plugin as LcasPlugin
from lcas.plugin_api import Request as LcasRequest
from lcas.plugin_api import Verdict
from lcmaps.plugin_api import Plugin as LcmapsPlugin
from lcmaps.plugin_api import RunContext
from leases.claims import CLAIM_PREFIX
from leases.names import in_pool, is_candidate_entry, lease_name
from leases.store import (
    EntryTaken,
    GridmapDirUnusable,
    Lease,
    LeaseArgumentError,
    LeaseCorrupt,
    LeaseInfo,
    LeaseStore,
    NoSuchEntry,
    PoolExhausted,
    WrongPool,
    check_counter,
)
from safetext import one_line
from site_admin.common import OK, PROBLEM, AdminError, add_common, emit, load_server_config

__all__ = ["LeaseNote", "ReadOnlyStore", "explain", "register"]

#: LCMAPS plugins that change something outside the gridmapdir: never run by explain
SIDE_EFFECTS = {
    "ldap_enf": "it writes the LDAP directory",
    "scas_client": "it asks another SCAS service, which would lease",
    "gums_client": "it asks another SCAS service, which would lease",
}


# -- the read-only lease store --------------------------------------------------------------


@dataclass(frozen=True)
class LeaseNote:
    """What a pool plugin asked of the store: ``held`` (an existing lease, found for real) or
    ``would lease`` (the free account a new lease would get; nothing written)."""

    store: str
    pool: str
    lease: str
    account: str
    state: str


class ReadOnlyStore(LeaseStore):
    """A gridmapdir seen through the lease-store interface without ever writing to it.

    Lookups and verification go to the real store (they are read-only there too);
    ``acquire`` follows the real algorithm's choices (reuse a held lease, else the first free
    entry in raw directory order) but neither links, touches nor removes anything.
    """

    def __init__(self, real: LeaseStore, notes: list[LeaseNote]) -> None:
        self.real = real
        self.notes = notes

    @property
    def location(self) -> str:
        return self.real.location

    def _path(self, name: str) -> str:
        return os.path.join(self.real.location, name)

    def _lstat(self, name: str) -> os.stat_result | None:
        try:
            return os.lstat(self._path(name))
        except FileNotFoundError:
            return None
        except OSError as exc:
            raise GridmapDirUnusable(f"gridmapdir {self.location}: {exc.strerror}") from None

    def _note(self, pool: str, name: str, account: str, state: str) -> None:
        self.notes.append(LeaseNote(self.location, pool, name, account, state))

    def _held(self, leasename: str | bytes, name: str, counter: int | None) -> str | None:
        """The account the lease ``name`` points to, None when there is no live lease."""
        st = self._lstat(name)
        if st is None or st.st_nlink == 1:
            return None  # none, or solitary (the service would remove it and lease anew)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 2:
            raise LeaseCorrupt(f"lease {name} is not a regular file with link count 2")
        return self.real.lookup(leasename, mapcounter=counter)

    def acquire(
        self, pool: str, leasename: str | bytes, *, mapcounter: int | None = None,
        max_mappings: int = 1, requested: str | None = None, strict_prefix: bool = True,
        override_inconsistency: bool = False,
    ) -> Lease:  # fmt: skip
        counter = check_counter(mapcounter, max_mappings)
        if not pool:
            raise LeaseArgumentError("empty pool prefix")
        name = lease_name(leasename, (), counter)
        held = self._held(leasename, name, counter)
        if held is not None and requested in (None, held):
            if in_pool(held, pool, strict_prefix):
                self._note(pool, name, held, "held")
                return Lease(held, name, reused=True)
        if held is not None and not override_inconsistency:
            raise WrongPool(f"lease {name} points to {held}, which is not in pool .{pool}")
        account = (self._requested(pool, requested, strict_prefix) if requested is not None
                   else self._first_free(pool, strict_prefix))
        self._note(pool, name, account, "would lease")
        return Lease(account, name, reused=False)

    def _requested(self, pool: str, account: str, strict: bool) -> str:
        if not in_pool(account, pool, strict) or not is_candidate_entry(account) or "/" in account:
            raise LeaseArgumentError(f"requested account {account!r} is not in pool .{pool}")
        st = self._lstat(account)
        if st is None:
            raise NoSuchEntry(f"account {account} has no entry in gridmapdir {self.location}")
        if st.st_nlink > 1:
            raise EntryTaken(f"account {account} is leased by another credential")
        return account

    def _first_free(self, pool: str, strict: bool) -> str:
        """The entry the service would take: the first free, writable one in readdir order."""
        try:
            with os.scandir(self.location) as it:
                for entry in it:
                    ent = entry.name
                    if ent.startswith(("%", CLAIM_PREFIX)) or not is_candidate_entry(ent):
                        continue
                    if not in_pool(ent, pool, strict):
                        continue
                    st = entry.stat(follow_symlinks=False)
                    if (stat.S_ISREG(st.st_mode) and st.st_nlink == 1
                            and os.access(entry.path, os.W_OK)):
                        return ent
        except FileNotFoundError:
            raise GridmapDirUnusable(f"gridmapdir {self.location} does not exist") from None
        except OSError as exc:
            raise GridmapDirUnusable(f"gridmapdir {self.location}: {exc.strerror}") from None
        raise PoolExhausted(f"no free account in pool .{pool} (gridmapdir {self.location})")

    def verify(self, pool: str, leasename: str | bytes, account: str, **kw: Any) -> Lease:
        return self.real.verify(pool, leasename, account, **kw)

    def lookup(self, leasename: str | bytes, *, mapcounter: int | None = None) -> str | None:
        return self.real.lookup(leasename, mapcounter=mapcounter)

    def leases(self) -> list[LeaseInfo]:
        return self.real.leases()

    def _refuse(self) -> GridmapDirUnusable:
        return GridmapDirUnusable(f"gridmapdir {self.location}: read-only (scas-admin explain)")

    def release(self, name: str) -> bool:
        raise self._refuse()

    def probe(self) -> None:
        raise self._refuse()

    def expire(self, max_age: float, *, now: float | None = None) -> list[LeaseInfo]:
        raise self._refuse()


# -- tracing ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class Step:
    """One plugin run: LCAS (``policy`` None) or a step of an LCMAPS policy."""

    plugin: str
    verdict: str  # allow | deny | fault (LCAS); success | failure | skipped (LCMAPS)
    reason: str = ""
    policy: str | None = None


class _TracedLcas(LcasPlugin):
    """An LCAS plugin that records its verdict (or its fault) before returning it."""

    def __init__(self, name: str, inner: LcasPlugin, steps: list[Step]) -> None:
        super().__init__(inner.argv, db_dir=inner.db_dir)
        self.label, self.inner, self.steps = name, inner, steps

    def authorize(self, request: LcasRequest) -> Verdict:
        try:
            verdict = self.inner.authorize(request)
        except Exception as exc:
            self.steps.append(Step(self.label, "fault", one_line(getattr(exc, "reason", exc))))
            raise
        self.steps.append(Step(self.label, "allow" if verdict.allowed else "deny",
                               verdict.reason))
        return verdict

    def terminate(self) -> None:
        self.inner.terminate()


class _NotRun(LcmapsPlugin):
    """Stands in for a plugin with side effects outside the gridmapdir: assumed to succeed."""

    def __init__(self, why: str) -> None:
        super().__init__(())
        self.why = why

    def run(self, ctx: RunContext) -> bool:
        return True


def _instrument(pipeline: Any, steps: list[Step], notes: list[LeaseNote]) -> None:
    """Trace both engines of ``pipeline`` and give LCMAPS the read-only lease stores."""
    from lcas.chain import LoadedPlugin
    from leases import store_for

    chain = pipeline.engines.lcas
    chain.plugins = tuple(
        LoadedPlugin(p.entry, _TracedLcas(p.name, p.plugin, steps)) for p in chain.plugins
    )
    engine = pipeline.engines.lcmaps
    for spec in engine.db.plugins:
        if spec.entry_point in SIDE_EFFECTS:
            engine.plugins.pop(spec.module).terminate()
            engine.plugins[spec.module] = _NotRun(SIDE_EFFECTS[spec.entry_point])
    stores: dict[str, ReadOnlyStore] = {}

    def factory(path: str) -> LeaseStore:
        if path not in stores:
            stores[path] = ReadOnlyStore(store_for(path), notes)
        return stores[path]

    def observe(policy: str, module: str, ok: bool, ctx: RunContext) -> None:
        plugin = engine.plugins.get(module)
        if isinstance(plugin, _NotRun):
            why = f"not run by explain ({plugin.why}); assumed to succeed"
            steps.append(Step(module, "skipped", why, policy))
            return
        steps.append(Step(module, "success" if ok else "failure",
                          "" if ok else (ctx.reason or ""), policy))

    engine.store_factory = factory
    engine.observer = observe


# -- the question and the answer -------------------------------------------------------------


def _request_body(args: argparse.Namespace) -> bytes:
    """The query a PEP would send: the chain of ``--pem`` (keys dropped), or DN and FQANs."""
    from client import xacml

    if args.pem is not None:
        from client.failures import ClientConfigError
        from client.query import read_chain

        try:
            chain = read_chain(args.pem)
        except ClientConfigError as exc:
            raise AdminError(f"{args.pem}: {exc}") from None
        return xacml.build_request(subject_dn=None, cert_chain=chain,
                                   resource=args.resource_type, action=args.action)
    try:
        return xacml.build_request(subject_dn=args.dn, fqans=tuple(args.fqan),
                                   resource=args.resource_type, action=args.action)
    except ValueError as exc:
        raise AdminError(f"cannot ask about this subject: {exc}") from None


def explain(cfg: Any, body: bytes, *, unverified: bool,
            now: datetime | None = None) -> dict[str, Any]:
    """Decide ``body`` with the pipeline of ``cfg`` (leasing nothing) and describe how."""
    from client import xacml
    from scas_server.config import ConfigError
    from scas_server.decision import build_pipeline
    from scas_server.peer import Peer

    # no ticket (explain needs no signing key); attributes as given only for --dn
    run_cfg = dataclasses.replace(
        cfg, ticket=None, trust_pep_attributes=cfg.trust_pep_attributes or unverified)
    try:
        pipeline = build_pipeline(run_cfg)
    except ConfigError as exc:
        raise AdminError(exc.errors[0]) from None
    steps: list[Step] = []
    notes: list[LeaseNote] = []
    _instrument(pipeline, steps, notes)
    lcas_names = pipeline.engines.lcas.plugin_names
    try:
        outcome = pipeline.decide(body, Peer("unix", uid=os.getuid(), pid=os.getpid()), now=now)
        answer = xacml.parse_response(outcome.body)
    finally:
        pipeline.engines.lcas.close()
        pipeline.engines.lcmaps.close()
    doc = _document(cfg, outcome, answer, steps, notes, unverified)
    asked = len(doc["lcas"])
    refused = any(s["verdict"] != "allow" for s in doc["lcas"])
    doc["lcas_not_asked"] = list(lcas_names[asked:]) if refused else []
    return doc


def _document(cfg: Any, outcome: Any, answer: Any, steps: list[Step],
              notes: list[LeaseNote], unverified: bool) -> dict[str, Any]:
    record = outcome.record
    route = cfg.route(record.resource or "", record.action or "")
    account = None
    if answer.decision == "Permit":
        account = {"username": answer.username, "uid": answer.uid, "gid": answer.gid,
                   "sgids": list(answer.sgids), "lease": record.lease}
    return {
        "config": cfg.path,
        "subject": record.dn,
        "fqans": list(record.fqans),
        "verified": not unverified,
        "trust_pep_attributes": cfg.trust_pep_attributes,
        "resource": record.resource,
        "action": record.action,
        "policies": list(route.lcmaps) if route is not None else [],
        "lcas_db": cfg.lcas_db,
        "lcas": [{"plugin": s.plugin, "verdict": s.verdict, "reason": s.reason}
                 for s in steps if s.policy is None],
        "lcmaps_db": cfg.lcmaps_db,
        "lcmaps": [{"policy": s.policy, "plugin": s.plugin, "result": s.verdict,
                    "reason": s.reason} for s in steps if s.policy is not None],
        "leases": [dataclasses.asdict(n) for n in notes],
        "account": account,
        "decision": answer.decision,
        "reason": answer.status_message or "",
        "detail": record.reason,
    }


# -- output ----------------------------------------------------------------------------------


def _lcmaps_lines(doc: dict[str, Any]) -> list[str]:
    runs = doc["lcmaps"]
    out = []
    for i, run in enumerate(runs):
        nxt = runs[i + 1] if i + 1 < len(runs) else None
        if nxt is None:
            then = "end"
        elif nxt["policy"] != run["policy"]:
            then = f"policy {nxt['policy']}: {nxt['plugin']}"
        else:
            then = nxt["plugin"]
        why = f" ({run['reason']})" if run["reason"] else ""
        out.append(f"  {run['policy']}: {run['plugin']} -> {run['result']}{why} -> {then}")
    return out or ["  (no LCMAPS plugin ran)"]


def _account_lines(doc: dict[str, Any]) -> list[str]:
    acct = doc["account"]
    if acct is None:
        return ["account: none"]
    sgids = ",".join(str(g) for g in acct["sgids"]) or "-"
    out = [f"account: {acct['username'] or '?'} uid={acct['uid']} gid={acct['gid']} "
           f"sgids={sgids}"]
    for note in doc["leases"]:
        if note["state"] == "held":
            out.append(f"  lease already held: {note['lease']} -> {note['account']} "
                       f"(in {note['store']})")
        else:
            out.append(f"  would lease {note['account']} (first free of pool .{note['pool']} "
                       f"in {note['store']}) as {note['lease']}; nothing written")
    return out


def render(doc: dict[str, Any]) -> list[str]:
    """The human report, one sanitised line each."""
    trust = "verified credential" if doc["verified"] else "unverified: taken as given"
    lines = [f"subject: {doc['subject'] or '?'} ({trust})"]
    lines += [f"fqan: {f}" for f in doc["fqans"]]
    if not doc["verified"] and not doc["trust_pep_attributes"]:
        lines.append("note: this server takes a DN and FQANs only from a verified cert-chain "
                     "(trust_pep_attributes is off); use --pem to see exactly what it does")
    policies = ", ".join(doc["policies"]) or "none (no route: Deny)"
    lines.append(f"route: {doc['resource']} {doc['action']} -> LCMAPS policies {policies}")
    lines.append(f"LCAS ({doc['lcas_db']}):")
    for i, s in enumerate(doc["lcas"], 1):
        why = f": {s['reason']}" if s["reason"] else ""
        lines.append(f"  {i}. {s['plugin']}: {s['verdict']}{why}")
    lines += [f"  -. {name}: not asked" for name in doc["lcas_not_asked"]]
    if not doc["lcas"]:
        lines.append("  (not reached)")
    lines.append(f"LCMAPS ({doc['lcmaps_db']}):")
    lines += _lcmaps_lines(doc)
    lines += _account_lines(doc)
    reason = f": {doc['reason']}" if doc["reason"] else ""
    detail = f" [{doc['detail']}]" if doc["detail"] and doc["detail"] != doc["reason"] else ""
    lines.append(f"decision: {doc['decision']}{reason}{detail}")
    return [one_line(line) for line in lines]


def cmd_explain(args: argparse.Namespace) -> int:
    if args.fqan and args.pem is not None:
        raise AdminError("--fqan goes with --dn; with --pem the FQANs come from the proxy")
    cfg = load_server_config(args)
    doc = explain(cfg, _request_body(args), unverified=args.pem is None)
    emit(args, doc, render(doc))
    return OK if doc["decision"] == "Permit" else PROBLEM


def register(sub: argparse._SubParsersAction) -> None:
    """Add ``explain``."""
    p = sub.add_parser(
        "explain", help="why would this user be permitted or refused? (leases nothing)",
        description="Run the site's LCAS chain and LCMAPS policies for one subject, as the "
                    "server would, without leasing anything. Exit 0 Permit, 1 Deny or "
                    "Indeterminate, 2 usage or system error.",
    )  # fmt: skip
    who = p.add_mutually_exclusive_group(required=True)
    who.add_argument("--dn", help="subject DN, taken as given (unverified)")
    who.add_argument("--pem", metavar="FILE",
                     help="proxy or certificate chain, verified like the server does")
    p.add_argument("--fqan", action="append", default=[],
                   help="VOMS FQAN, in order (with --dn; repeatable)")
    p.add_argument("--resource-type", default="wn", help="resource type (default %(default)s)")
    p.add_argument("--action", default="execute-now", help="action (default %(default)s)")
    add_common(p)
    p.set_defaults(func=cmd_explain)
