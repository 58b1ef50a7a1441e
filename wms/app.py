"""The CE's flask app: thin views between HTTP and :class:`wms.service.CE`.

| route | what |
|---|---|
| ``POST /delegations`` | a new key pair: ``{"id", "request" (PEM CSR), "lifetime"}`` |
| ``POST /jobs`` | multipart: ``jdl``, ``jdl_name``, ``delegation``, ``chain``, ``sandbox`` |
| ``GET /jobs`` | the caller's jobs |
| ``GET /jobs/ID`` | one job's status (``?history=1``: its state changes too) |
| ``POST /jobs/ID/cancel`` | ``glexec scancel`` |
| ``GET /jobs/ID/output`` | the output sandbox as a tar; ``X-WMS-Missing``: names not served |
| ``POST /jobs/ID/purge`` | remove the job directory: Cleared |
| ``GET /health`` | ``{"ok": true}`` for any authenticated caller |

Errors are JSON ``{"error": "...", "class": "refused" | "unavailable"}``: 400 bad input,
403 refused, 404 not yours, 409 wrong state, 413 too large (all exit 1 at the client, but
bad input exits 2), 503 retry later (exit 2).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from typing import Any

from flask import Flask, Response, request

from safetext import one_line
from wms.peer import identity_of
from wms.service import CE, Refused, Unavailable, Upload, public
from wms.store import StoreError

__all__ = ["create_app"]

log = logging.getLogger("wms.ce")
MAX_FORM_FIELD = 512 * 1024


def _json(doc: Any, status: int = 200) -> Response:
    return Response(json.dumps(doc, sort_keys=True) + "\n", status,
                    content_type="application/json")  # fmt: skip


def _error(status: int, kind: str, message: str) -> Response:
    return _json({"error": one_line(message, 600), "class": kind}, status)


def create_app(ce: CE, identity: Callable[[], str | None] | None = None) -> Flask:
    """The app for ``ce``. ``identity`` finds the caller's DN (default: the TLS peer)."""
    app = Flask("wms_ce")
    app.config["MAX_CONTENT_LENGTH"] = ce.cfg.max_input_sandbox + 4 * MAX_FORM_FIELD
    app.config["MAX_FORM_MEMORY_SIZE"] = MAX_FORM_FIELD
    base = ce.cfg.public_url

    def caller() -> str | None:
        if identity is not None:
            return identity()
        return identity_of(request.environ.get("gunicorn.socket"))

    def guarded(view: Callable[..., Response]) -> Callable[..., Response]:
        def wrapper(**kw: Any) -> Response:
            dn = caller()
            if dn is None:
                return _error(403, "refused", "no verified client certificate")
            try:
                return view(dn, **kw)
            except Refused as exc:
                return _error(exc.status, "refused", exc.reason)
            except (Unavailable, StoreError) as exc:
                log.warning("%s %s: %s", request.method, request.path, exc)
                return _error(503, "unavailable", str(exc))

        wrapper.__name__ = view.__name__
        return wrapper

    @app.post("/delegations")
    @guarded
    def delegations(dn: str) -> Response:
        return _json(ce.delegate(dn), 201)

    @app.post("/jobs")
    @guarded
    def submit(dn: str) -> Response:
        form, files = request.form, request.files
        upload = files.get("sandbox")
        if upload is None or not all(form.get(k) for k in ("jdl", "delegation", "chain")):
            raise Refused("a submission needs jdl, delegation, chain and sandbox", 400)
        rec = ce.submit(dn, Upload(
            jdl_text=form["jdl"], jdl_name=one_line(form.get("jdl_name") or "<jdl>", 200),
            delegation_id=form["delegation"], chain_pem=form["chain"].encode(),
            sandbox=upload.stream,
        ))  # fmt: skip
        return _json(public(rec, base), 201)

    @app.get("/jobs")
    @guarded
    def jobs(dn: str) -> Response:
        return _json({"jobs": [public(r, base) for r in ce.jobs_of(dn)]})

    @app.get("/jobs/<job_id>")
    @guarded
    def status(dn: str, job_id: str) -> Response:
        doc = public(ce.status(dn, job_id), base)
        if request.args.get("history"):
            doc["history"] = [{"at": at, "state": st, "detail": d}
                              for at, st, d in ce.history(dn, job_id)]  # fmt: skip
        return _json(doc)

    @app.post("/jobs/<job_id>/cancel")
    @guarded
    def cancel(dn: str, job_id: str) -> Response:
        return _json(public(ce.cancel(dn, job_id), base))

    @app.get("/jobs/<job_id>/output")
    @guarded
    def output(dn: str, job_id: str) -> Response:
        data, missing = ce.output(dn, job_id)
        return Response(data, 200, content_type="application/x-tar",
                        headers={"X-WMS-Missing": json.dumps(missing)})  # fmt: skip

    @app.post("/jobs/<job_id>/purge")
    @guarded
    def purge(dn: str, job_id: str) -> Response:
        return _json(public(ce.purge(dn, job_id), base))

    @app.get("/health")
    @guarded
    def health(dn: str) -> Response:
        return _json({"ok": True, "you": dn, "max_input_sandbox": ce.cfg.max_input_sandbox})

    @app.errorhandler(413)
    def too_large(_exc: Exception) -> Response:
        return _error(413, "refused", f"request larger than the CE accepts (input sandbox "
                                      f"limit {ce.cfg.max_input_sandbox} bytes)")  # fmt: skip

    return app
