"""The flask app: thin views that move bytes between HTTP and the pipeline.

Everything that decides lives in :mod:`scas_server.decision` (bytes in,
bytes out). Here: who is calling (:mod:`scas_server.peer`), cheap HTTP-level
refusals before the body is read (caller not allowed -> 403, wrong content
type -> 415, too large -> 413, empty -> 400, body slower than ``body_timeout``
-> 408), the WSDL, ``/health`` and ``/metrics`` (for callers on the PEP or
monitoring allow-list only), and the audit line. Metric labels come from fixed
sets, so no caller can grow ``/metrics``.

Routes: ``POST`` on any path is a query (gSOAP servers ignore the path, the
GUMS path works too); ``GET <any path>?wsdl`` is the WSDL.
"""

from __future__ import annotations

import json
import logging
import time
import weakref
from typing import Any

from flask import Flask, Response, request

from scas_server import metrics
from scas_server.audit import AuditRecord
from scas_server.decision import Pipeline
from scas_server.peer import ENVIRON_KEY, Peer, peer_of

__all__ = ["create_app"]

log = logging.getLogger("scas.server")

XML = "text/xml; charset=utf-8"
SOAP_TYPES = ("text/xml", "application/soap+xml", "application/xml")
# metric labels come from fixed sets, never from what a caller sent
REFUSAL_CLASSES = {400: "empty", 403: "forbidden", 408: "slow-body", 413: "too-large",
                   415: "content-type"}
ACTIONS = frozenset({"execute-now", "queue", "access", "submit", "run", "read", "write"})


# One Peer per connection: a keep-alive connection's certificate chain cannot change.
_PEERS: weakref.WeakKeyDictionary[Any, Peer] = weakref.WeakKeyDictionary()


def _peer() -> Peer:
    cached = request.environ.get(ENVIRON_KEY)
    if isinstance(cached, Peer):
        return cached
    sock = request.environ.get("gunicorn.socket")
    found = _PEERS.get(sock) if sock is not None else None
    if found is None:
        found = peer_of(sock)
        if sock is not None:
            _PEERS[sock] = found
    request.environ[ENVIRON_KEY] = found
    return found


def create_app(pipeline: Pipeline) -> Flask:
    """A flask app serving ``pipeline`` (built and validated by the caller)."""
    app = Flask("scas_server")
    cfg = pipeline.config
    metrics.CONFIG_LOADED.set(pipeline.loaded_at)

    def audit_refusal(status: int, reason: str, peer: Peer, t0: float) -> None:
        """One audit line and one metric for a request refused before any decision."""
        record = AuditRecord(pep=peer.describe(), decision="refused", reason=reason)
        record.caller_uid = peer.uid
        record.extra.update(http_status=status, path=request.path[:128])
        record.latency_ms = (time.perf_counter() - t0) * 1000
        pipeline.write_audit(record)
        metrics.REFUSALS.labels(str(status), REFUSAL_CLASSES.get(status, "other")).inc()

    def refuse(status: int, reason: str, peer: Peer, t0: float) -> Response:
        audit_refusal(status, reason, peer, t0)
        body = pipeline.fault(reason, soap12="soap+xml" in (request.content_type or ""))
        return Response(body, status=status, content_type=XML)

    def operator_only() -> Response | None:
        """403 for anyone not on the PEP or monitoring allow-list; nothing else is shown."""
        t0, peer = time.perf_counter(), _peer()
        problem = pipeline.caller_refusal(peer, monitoring=True)
        if problem is None:
            return None
        audit_refusal(403, problem, peer, t0)
        return Response("forbidden\n", 403, content_type="text/plain; charset=utf-8")

    def read_body(length: int) -> bytes | None:
        """The body, read under ``body_timeout``; None when the client is too slow."""
        sock = request.environ.get("gunicorn.socket")
        if sock is not None:
            sock.settimeout(cfg.body_timeout)
        try:
            return request.stream.read(length)
        except OSError:  # socket.timeout included: a slow-body client loses its slot
            return None
        finally:
            if sock is not None:
                sock.settimeout(None)

    @app.post("/", defaults={"path": ""})
    @app.post("/<path:path>")
    def query(path: str) -> Response:
        t0 = time.perf_counter()
        peer = _peer()
        problem = pipeline.caller_refusal(peer)
        if problem:
            return refuse(403, problem, peer, t0)
        mimetype = (request.mimetype or "").lower()
        if mimetype not in SOAP_TYPES:
            return refuse(415, f"unsupported content type {mimetype or '(none)'}", peer, t0)
        length = request.content_length
        if length is not None and length > cfg.max_body:
            return refuse(413, f"body of {length} bytes exceeds {cfg.max_body}", peer, t0)
        body = read_body(cfg.max_body + 1)
        if body is None:
            return refuse(408, f"body not received within {cfg.body_timeout:g} s", peer, t0)
        if len(body) > cfg.max_body:
            return refuse(413, f"body exceeds {cfg.max_body} bytes", peer, t0)
        if not body.strip():
            return refuse(400, "empty body", peer, t0)
        outcome = pipeline.answer(body, peer, started=t0)
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - t0)
        action = outcome.record.action if outcome.record.action in ACTIONS else "other"
        metrics.DECISIONS.labels(outcome.record.decision, action).inc()
        return Response(outcome.body, status=outcome.status, content_type=XML)

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    def wsdl(path: str) -> Response:
        denied = operator_only()
        if denied is not None:
            return denied
        if "wsdl" not in {k.lower() for k in request.args}:
            return Response("POST a SOAP XACMLAuthzDecisionQuery, or GET ?wsdl\n", 404,
                            content_type="text/plain; charset=utf-8")
        location = request.base_url
        return Response(pipeline.wsdl(location), content_type=XML)

    @app.get("/health")
    def health() -> Response:
        denied = operator_only()
        if denied is not None:
            return denied
        report: dict[str, Any] = pipeline.health()
        status = 200 if report.get("ok") else 503
        return Response(json.dumps(report, sort_keys=True) + "\n", status,
                        content_type="application/json")

    @app.get("/metrics")
    def prometheus() -> Response:
        denied = operator_only()
        if denied is not None:
            return denied
        return Response(metrics.render(), content_type=metrics.CONTENT_TYPE_LATEST)

    return app
