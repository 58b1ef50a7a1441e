"""The flask app: thin views that move bytes between HTTP and the pipeline.

Everything that decides lives in :mod:`scas_server.decision` (bytes in,
bytes out). Here: who is calling (:mod:`scas_server.peer`), cheap HTTP-level
refusals before the body is read (caller not allowed -> 403, wrong content
type -> 415, too large -> 413, empty -> 400), the WSDL, ``/health``,
``/metrics`` and the audit line.

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

    def refuse(status: int, reason: str, peer: Peer, t0: float) -> Response:
        record = AuditRecord(pep=peer.describe(), decision="refused", reason=reason)
        record.caller_uid = peer.uid
        record.extra["http_status"] = status
        record.latency_ms = (time.perf_counter() - t0) * 1000
        try:
            pipeline.audit.write(record)
        except OSError as exc:
            pipeline._audit_failed(record, exc)
        metrics.REFUSALS.labels(str(status), reason.split(":")[0][:40]).inc()
        body = pipeline.fault(reason, soap12="soap+xml" in (request.content_type or ""))
        return Response(body, status=status, content_type=XML)

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
        body = request.stream.read(cfg.max_body + 1)
        if len(body) > cfg.max_body:
            return refuse(413, f"body exceeds {cfg.max_body} bytes", peer, t0)
        if not body.strip():
            return refuse(400, "empty body", peer, t0)
        outcome = pipeline.answer(body, peer, started=t0)
        metrics.REQUEST_SECONDS.observe(time.perf_counter() - t0)
        metrics.DECISIONS.labels(outcome.record.decision, outcome.record.action or "").inc()
        return Response(outcome.body, status=outcome.status, content_type=XML)

    @app.get("/", defaults={"path": ""})
    @app.get("/<path:path>")
    def wsdl(path: str) -> Response:
        if "wsdl" not in {k.lower() for k in request.args}:
            return Response("POST a SOAP XACMLAuthzDecisionQuery, or GET ?wsdl\n", 404,
                            content_type="text/plain; charset=utf-8")
        location = request.base_url
        return Response(pipeline.wsdl(location), content_type=XML)

    @app.get("/health")
    def health() -> Response:
        report: dict[str, Any] = pipeline.health()
        status = 200 if report.get("ok") else 503
        return Response(json.dumps(report, sort_keys=True) + "\n", status,
                        content_type="application/json")

    @app.get("/metrics")
    def prometheus() -> Response:
        return Response(metrics.render(), content_type=metrics.CONTENT_TYPE_LATEST)

    return app
