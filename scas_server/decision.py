"""The decision pipeline, free of HTTP: query bytes and caller in, response bytes out.

Order of work for one query:

1. parse the SOAP/XACML query (hardened; bounded size and depth);
2. pick the LCMAPS policies for the (resource type, action) pair from the
   YAML (``wn``/``execute-now`` -> glexec policies, ``ce``/``queue`` ->
   gatekeeper policies, ...); no route -> Deny;
3. verify the user's ``cert-chain`` with :mod:`credentials.credential` against the
   server's CA dir and vomsdir; FQANs come only from verified VOMS ACs.
   A query without a chain is answered Indeterminate (missing-attribute)
   unless ``trust_pep_attributes`` says to take DN/FQANs from the PEP;
4. the LCAS chain (a ban is a Deny), then the LCMAPS policies;
5. Permit with uidgid / secondary-gids / username obligations (only those
   the PEP advertised) and, when advertised and configured, a signed
   mapping ticket bound to the caller.

A user-side problem (bad credential, ban, no mapping, pool exhausted) is a
``Deny``; a server-side one (lease store unusable, LDAP down, plugin crash,
audit log unwritable) is ``Indeterminate`` with processing-error, so clients
fail over to another endpoint. The wire carries only a reason class (the
constants below); the detail goes to the audit line, linked by the request ID.
No Permit leaves without its audit line: when the line cannot be written, the
answer becomes Indeterminate and ``/health`` turns unhealthy.
"""

from __future__ import annotations

import fnmatch
import logging
import secrets
import socket
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from client import xacml
from client.xacml import AuthzRequest, Decision, XacmlError, ids
from credentials.chain_cache import set_recheck_seconds
from credentials.credential import Credential, TrustStore
from credentials.credential_cache import CredentialCache
from credentials.errors import CredentialError
from leases.store import GridmapDirError
from safetext import one_line
from scas_server import metrics
from scas_server.audit import AuditLog, AuditRecord
from scas_server.config import ConfigError, ServerConfig
from scas_server.engines import Engines, Mapping, MappingRefused, PolicyError, load_engines
from scas_server.mapping_memo import MappingMemo
from scas_server.peer import Peer, chain_pem
from scas_server.request_memo import RequestMemo
from scas_server.ticket import SigningKey, TicketError, leaf_sha256, sign_ticket

__all__ = ["Outcome", "Pipeline", "build_pipeline"]

log = logging.getLogger("scas.server")

# A PEP that advertises no obligation gets what SCAS always sent.
LEGACY_OBLIGATIONS = (ids.OBLIG_UIDGID, ids.OBLIG_SECONDARY_GIDS)


# What a refusal says on the wire: a fixed class, never a path or exception text.
NOT_AUTHORIZED = "not authorized"
BANNED = "banned"
NO_ACCOUNT = "no account available"
UNAVAILABLE = "service unavailable"


@dataclass
class Outcome:
    body: bytes
    status: int
    record: AuditRecord
    request: AuthzRequest | None = None


def _clean(text: str | None) -> str | None:
    return one_line(text, 512) if text is not None else None


class Pipeline:
    """One validated configuration with its loaded LCAS/LCMAPS engines and ticket key."""

    def __init__(
        self, config: ServerConfig, engines: Engines, signer: SigningKey | None = None,
        audit: AuditLog | None = None, loaded_at: float | None = None,
    ) -> None:  # fmt: skip
        self.config = config
        self.engines = engines
        self.signer = signer
        self.audit = audit or AuditLog(config.audit_file)
        self.loaded_at = loaded_at if loaded_at is not None else time.time()
        #: why the last audit line could not be written; None once one is written again
        self.audit_error: str | None = None
        self.trust = TrustStore(certdir=config.certdir, vomsdir=config.vomsdir)
        set_recheck_seconds(config.recheck_seconds)  # process-wide: the last config loaded
        # repeat queries skip the XML parse (request_memo), and with the same chain the
        # parsing and verification of the chain (credential_cache)
        self.requests = RequestMemo(config.max_body)
        self.mappings = MappingMemo(config.mapping_cache_seconds)
        self.credentials = CredentialCache(self.trust)
        self._pep_credentials = (
            CredentialCache(TrustStore(certdir=config.tls_ca_dir), verify_voms=False)
            if config.tls_ca_dir else None
        )  # fmt: skip
        # tickets over TLS: the PEP proxy's VOMS FQANs, verified with the users' trust
        self._ticket_peps = (
            CredentialCache(self.trust, max_entries=4096)
            if config.ticket is not None and config.ticket.pep_fqans else None
        )  # fmt: skip

    # -- who may ask -------------------------------------------------------------

    def caller_refusal(
        self, peer: Peer, *, monitoring: bool = False, now: datetime | None = None
    ) -> str | None:
        """Why this caller may not query (or, with ``monitoring``, read /health, /metrics
        and the WSDL), or None. Checked before the body is read."""
        cfg = self.config
        if peer.transport == "unix":
            if monitoring and peer.uid == 0:
                return None  # root on the node may look; it can read every file anyway
            if cfg.allowed_uids is not None and peer.uid not in cfg.allowed_uids:
                return f"uid {peer.uid} is not allowed to query this service"
            return None
        if peer.transport != "tls" or not peer.subject:
            return "no authenticated caller (client certificate required)"
        allowed = (*cfg.pep_allow, *cfg.monitor_allow) if monitoring else cfg.pep_allow
        if not any(fnmatch.fnmatchcase(peer.subject, p) for p in allowed):
            listed = "allow-list" if not monitoring else "PEP or monitoring allow-list"
            return f"PEP {peer.subject} is not on the {listed}"
        if cfg.crl_check and self._pep_credentials is not None:
            # the CRLs on disk now, for host certificates and the end-entity behind a proxy
            try:
                self._pep_credentials.verify(chain_pem(peer), now=now)
            except CredentialError as exc:
                return f"PEP credential refused: {exc.reason}"
        return None

    # -- answers -------------------------------------------------------------------

    def fault(self, reason: str, *, soap12: bool = False) -> bytes:
        return xacml.soap_fault(reason, soap12=soap12)

    def wsdl(self, location: str) -> bytes:
        return xacml.wsdl(location)

    def health(self) -> dict[str, Any]:
        """What an operator needs to know, probed for real: can a lease and an audit line be
        written now, and is every LCAS plugin up?"""
        stores = []
        for store in self.engines.lease_stores():
            try:
                store.probe()
                stores.append({"path": store.location, "writable": True})
            except GridmapDirError as exc:
                stores.append({"path": store.location, "writable": False, "error": exc.args[0]})
        lcas_failures = [name for name, _ in self.engines.lcas.init_failures]
        audit_ok = self.audit_error is None
        report: dict[str, Any] = {
            "ok": all(s["writable"] for s in stores) and audit_ok and not lcas_failures,
            "config": self.config.path,
            "config_age_seconds": round(time.time() - self.loaded_at, 1),
            "plugins": {"lcas": list(self.engines.lcas_plugins),
                        "lcmaps": list(self.engines.lcmaps_plugins)},
            "lease_stores": stores,
            "lcas": {"plugins": len(self.engines.lcas_plugins), "failed": lcas_failures},
            "audit": {"writable": audit_ok, "error": self.audit_error},
            "ticket_signing": self.signer is not None,
        }
        return report

    def answer(self, body: bytes, peer: Peer, *, started: float,
               now: datetime | None = None) -> Outcome:
        """Decide, then write the audit line; a decision whose line cannot be written is not
        sent: the caller gets Indeterminate (service unavailable) instead."""
        outcome = self.decide(body, peer, now=now)
        outcome.record.latency_ms = (time.perf_counter() - started) * 1000
        if not self.write_audit(outcome.record):
            if outcome.request is not None:
                outcome.body = xacml.build_response(
                    outcome.request,
                    Decision.indeterminate(ids.STATUS_PROCESSING_ERROR, UNAVAILABLE),
                    issuer=self.config.issuer, now=now,
                )
                outcome.record.decision = ids.INDETERMINATE
        return outcome

    def write_audit(self, record: AuditRecord) -> bool:
        """Write one audit line; on failure count it, mark /health unhealthy and put the
        record in the server log instead. False when the line is not on disk."""
        try:
            self.audit.write(record)
        except OSError as exc:
            self.audit_error = one_line(exc.strerror or str(exc), 200)
            metrics.AUDIT_FAILURES.inc()
            log.error("audit line not written (%s): %s", self.audit_error,
                      self.audit.line(record))
            return False
        self.audit_error = None
        return True

    def decide(self, body: bytes, peer: Peer, *, now: datetime | None = None) -> Outcome:
        """Answer one query; never raises for anything a client can send."""
        cfg = self.config
        record = AuditRecord(pep=peer.describe(), caller_uid=peer.uid)
        try:
            request = self.requests.parse(body, self._parse)
        except XacmlError as exc:
            record.reason = exc.reason
            record.request_id = _clean(exc.request_id)
            record.decision = "Fault" if exc.fault else ids.INDETERMINATE
            reply = xacml.error_response(exc, issuer=cfg.issuer, now=now)
            return Outcome(reply, exc.http_status, record)
        record.request_id = _clean(request.request_id)
        record.resource = _clean(request.resource_type or request.resource_id)
        record.action = _clean(request.action_type or request.action_id)
        try:
            decision = self._decide(request, peer, record, now)
        except Exception as exc:  # a plugin bug must not become a stack trace on the wire
            log.exception("internal error deciding request %s", record.request_id)
            record.reason = f"internal error: {type(exc).__name__}"
            decision = Decision.indeterminate(ids.STATUS_PROCESSING_ERROR, UNAVAILABLE)
        record.decision = decision.decision
        record.reason = record.reason or (decision.status_message or "")
        reply = xacml.build_response(
            request, decision, issuer=cfg.issuer, now=now,
            when_none_advertised=LEGACY_OBLIGATIONS,
        )  # fmt: skip
        return Outcome(reply, 200, record, request)

    def _parse(self, body: bytes) -> AuthzRequest:
        cfg = self.config
        return xacml.parse_request(body, max_bytes=cfg.max_body, max_depth=cfg.max_depth)

    def _decide(
        self, request: AuthzRequest, peer: Peer, record: AuditRecord, now: datetime | None
    ) -> Decision:
        cfg = self.config
        resource, action = request.resource_type or "", request.action_type or ""
        route = cfg.route(resource, action)
        if route is None:
            record.reason = f"no policy for resource {resource or '?'} action {action or '?'}"
            return Decision.deny(NOT_AUTHORIZED)
        if request.cert_chain is not None:
            try:
                cred = self.credentials.verify(request.cert_chain, now=now, source="cert-chain")
            except CredentialError as exc:
                record.dn = _clean(request.subject_dn)
                record.reason = f"credential refused: {exc.reason}"
                return Decision.deny(NOT_AUTHORIZED)
            dn, fqans, credential = cred.identity, cred.fqans, cred
            if request.subject_dn and request.subject_dn != dn:
                record.extra["claimed_dn"] = _clean(request.subject_dn)
        elif cfg.trust_pep_attributes and request.subject_dn:
            dn, fqans, credential = request.subject_dn, request.fqans, None
            record.extra["unverified"] = True
        else:
            record.dn = _clean(request.subject_dn)
            return Decision.indeterminate(
                ids.STATUS_MISSING_ATTRIBUTE, "cert-chain attribute is required"
            )
        record.dn, record.fqans = _clean(dn), tuple(_clean(f) or "" for f in fqans)
        try:
            banned = self.engines.lcas_check(dn, fqans, credential, now=now)
            if banned:
                record.reason = f"LCAS: {banned}"
                return Decision.deny(BANNED)
            mapping = self._map(dn, fqans, credential, route.lcmaps, now)
        except MappingRefused as exc:
            record.reason = f"LCMAPS: {exc.reason}"
            wire = {"banned": BANNED, "exhausted": NO_ACCOUNT}.get(exc.kind or "", NOT_AUTHORIZED)
            return Decision.deny(wire)
        except PolicyError as exc:
            record.reason = exc.reason
            return Decision.indeterminate(ids.STATUS_PROCESSING_ERROR, UNAVAILABLE)
        record.account, record.uid, record.gid = mapping.username, mapping.uid, mapping.gid
        record.lease = _clean(mapping.lease)
        if mapping.lease and mapping.lease_new is not None:
            record.lease_event = "new" if mapping.lease_new else "held"
        ticket = None
        if ids.OBLIG_TICKET in request.pep_oblig_supported and self.signer is not None:
            ticket = self._ticket(request, peer, dn, credential, mapping, record, now)
        return Decision.permit(
            uid=mapping.uid, gid=mapping.gid, sgids=mapping.sgids,
            username=mapping.username, ticket=ticket,
        )  # fmt: skip

    def _map(self, dn: str, fqans: tuple[str, ...], credential: Credential | None,
             policies: tuple[str, ...], now: datetime | None) -> Mapping:  # fmt: skip
        """LCMAPS, or a mapping of the last ``lcmaps.cache_seconds`` with its leases replayed.
        Not with an explicit ``now`` (tests, ``scas-admin explain``): that asks for a run."""
        def full() -> Mapping:
            return self.engines.map(dn, fqans, credential, policies, now=now)

        def recheck(kept: Mapping) -> bool:
            return self.engines.rechecked(dn, fqans, credential, kept.checks)

        if now is not None or not self.engines.memo_safe(policies):
            return full()
        return self.mappings.map((dn, tuple(fqans), policies), credential, full, recheck)

    def _ticket(
        self, request: AuthzRequest, peer: Peer, dn: str, credential: Credential | None,
        mapping: Mapping, record: AuditRecord, now: datetime | None,
    ) -> str | None:  # fmt: skip
        """A version-2 ticket bound to the caller's uid, the worker node and the payload's
        verified leaf certificate, or None with the reason in the audit line.

        Unix socket: the kernel's uid (a stated uid must equal it), this node's host name.
        TLS: the stated uid and the PEP's dns-host-name, only for a PEP on the ticket
        allow-list. The stated uid is defence in depth, not the trust anchor: the helper
        checks its real uid and a ticket is useless without the payload's private key.
        """
        settings = self.config.ticket
        if request.caller_uid is not None:
            record.extra["stated_caller_uid"] = request.caller_uid
        caller_uid, host = None, None
        if self.signer is None or settings is None:
            refusal: str | None = "ticket signing is not configured"
        elif credential is None:
            refusal = "no verified payload chain to bind (attributes taken from the PEP)"
        elif not mapping.username:
            refusal = "mapped uid has no account name"
        else:
            refusal, caller_uid, host = self._ticket_binding(request, peer, now)
        if refusal is not None or caller_uid is None or host is None:
            record.extra["ticket"] = f"not issued: {refusal or 'caller unknown'}"
            return None
        assert self.signer is not None and settings is not None and credential is not None
        nonce = secrets.token_hex(16)
        proxy_sha256 = leaf_sha256(credential.leaf)
        try:
            ticket = sign_ticket(
                self.signer, host=host, caller_uid=caller_uid,
                user=mapping.username or "", uid=mapping.uid, gid=mapping.gid,
                sgids=mapping.sgids, subject=dn, proxy_sha256=proxy_sha256,
                now=now or datetime.now(UTC), lifetime=settings.lifetime, nonce=nonce,
            )  # fmt: skip
        except TicketError as exc:
            record.extra["ticket"] = f"not issued: {exc.reason}"
            return None
        record.ticket_nonce = nonce
        record.extra["ticket_proxy_sha256"] = proxy_sha256
        return ticket

    def _ticket_binding(
        self, request: AuthzRequest, peer: Peer, now: datetime | None
    ) -> tuple[str | None, int | None, str | None]:
        """(why no ticket, caller uid, host) for this caller on this transport."""
        settings = self.config.ticket
        stated = request.caller_uid
        if peer.transport == "unix":
            if peer.uid is None:
                return "the kernel reported no caller uid", None, None
            if stated is not None and stated != peer.uid:
                return f"stated caller uid {stated} is not the kernel's {peer.uid}", None, None
            # the helper compares with its own gethostname(), lower-cased: use the same name
            host = (settings.host if settings else None) or socket.gethostname().lower()
            return None, peer.uid, host
        if peer.transport != "tls" or not peer.subject:
            return "caller uid is known only on the Unix socket or from a TLS PEP", None, None
        if stated is None:
            return "no stated caller uid (caller-uid attribute) over TLS", None, None
        refusal = self._ticket_pep_refusal(peer, now)
        if refusal is not None:
            return refusal, None, None
        if not request.host:
            return "no dns-host-name in the request to bind the ticket to", None, None
        return None, stated, request.host

    def _ticket_pep_refusal(self, peer: Peer, now: datetime | None) -> str | None:
        """Why this TLS PEP may not have a stated uid signed, or None: its identity DN is on
        ticket.pep_allow, or it is a proxy whose verified VOMS FQANs match ticket.pep_fqans."""
        settings = self.config.ticket
        if settings is None or peer.subject is None:
            return "ticket signing is not configured"
        if any(fnmatch.fnmatchcase(peer.subject, p) for p in settings.pep_allow):
            return None
        if not settings.pep_fqans or self._ticket_peps is None:
            return f"PEP {peer.subject} is not on ticket.pep_allow"
        if not peer.is_proxy:
            return f"PEP {peer.subject} is not on ticket.pep_allow and is not a proxy"
        try:
            cred = self._ticket_peps.verify(chain_pem(peer), now=now, source="PEP proxy")
        except CredentialError as exc:
            return f"PEP proxy's VOMS attributes not verified: {exc.reason}"
        for fqan in cred.fqans:
            short = _short_fqan(fqan)
            if any(fnmatch.fnmatchcase(f, p) for p in settings.pep_fqans for f in (fqan, short)):
                return None
        return f"PEP {peer.subject} is not on ticket.pep_allow and has no FQAN on ticket.pep_fqans"


def _short_fqan(fqan: str) -> str:
    """``/vo/Role=pilot/Capability=NULL`` -> ``/vo/Role=pilot``; ``/vo/Role=NULL`` -> ``/vo``."""
    for tail in ("/Capability=NULL", "/Role=NULL"):
        fqan = fqan.removesuffix(tail)
    return fqan


def _load_signer(cfg: ServerConfig) -> SigningKey | None:
    if cfg.ticket is None:
        return None
    try:
        return SigningKey.from_file(cfg.ticket.key)
    except TicketError as exc:
        raise ConfigError([f"{cfg.path}: ticket.key: {exc.reason}"]) from None


def build_pipeline(cfg: ServerConfig) -> Pipeline:
    """Load lcas.db, lcmaps.db and the ticket key for ``cfg``; raise ConfigError (file:line)."""
    signer = _load_signer(cfg)
    engines = load_engines(cfg)
    unknown = [n for r in cfg.policies for n in r.lcmaps if n not in engines.policy_names]
    if unknown:
        raise ConfigError(
            [f"{cfg.path}: policies: lcmaps policy {unknown[0]!r} is not in {cfg.lcmaps_db}"]
        )
    return Pipeline(cfg, engines, signer)
