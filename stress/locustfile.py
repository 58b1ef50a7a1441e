"""Locust load against a SCAS endpoint, with the population written by ``stress/population.py``.

Run through ``stress/run``; by hand::

    SCAS_STRESS_MANIFEST=WORK/manifest.json locust -f stress/locustfile.py \\
        --headless -u 20 -r 20 -t 30s --host https://localhost:PORT KeepAlivePep

Two user classes, both FastHttpUser over mutual TLS:

* ``KeepAlivePep`` keeps its TLS connection open between queries;
* ``HandshakePep`` asks the server to close after every reply, so each query
  pays a full TLS handshake, as the stock C SCAS client does.

Each simulated PEP is either the CE (host certificate, ``ce``/``queue``) or a
pilot job on a worker node (the pilot's VOMS proxy with ``/atlas/Role=pilot``
as client certificate, ``wn``/``execute-now``). Every query carries a random
user's real proxy chain and a fresh request ID. A reply counts as a failure
unless it is a well-formed decision for that request ID, with the expected
decision (banned users: Deny), an account from the user's pool, and the same
account the user got before in this run (from either PEP).
"""

from __future__ import annotations

import json
import os
import random
import sys
import uuid
from typing import Any

import gevent
import gevent.ssl
from locust import FastHttpUser, events, task

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from stress.replies import check_reply

MANIFEST: dict[str, Any] = {}
REQUESTS: dict[str, list[dict[str, Any]]] = {}
# dn -> (username, uid): what each user was mapped to first in this run
OBSERVED: dict[str, tuple[str, int]] = {}
BARE = os.environ.get("SCAS_STRESS_BARE") == "1"


def _load() -> None:
    path = os.environ.get("SCAS_STRESS_MANIFEST")
    if not path or MANIFEST:
        return
    with open(path) as fh:
        MANIFEST.update(json.load(fh))
    repeat = {u["dn"] for u in MANIFEST["population"] if u["prelease"] or u["pool"] is None}
    only_repeat = os.environ.get("SCAS_STRESS_ONLY_REPEAT") == "1"  # the harness's warm-up
    for item in MANIFEST["requests"]:
        if not only_repeat or item["dn"] in repeat:
            REQUESTS.setdefault(item["kind"], []).append(item)


_load()


MAX_REQUESTS = int(os.environ.get("SCAS_STRESS_MAX_REQUESTS") or 0)
_count = [0]
_RUNNER: list[Any] = [None]


@events.request.add_listener
def _stop_after(**kw: Any) -> None:
    """Soak mode: stop after a fixed number of requests instead of a duration."""
    if MAX_REQUESTS:
        _count[0] += 1
        if _count[0] == MAX_REQUESTS and _RUNNER[0] is not None:
            # not from this greenlet: quit() kills the users, this one among them
            gevent.spawn(_RUNNER[0].quit)


@events.init.add_listener
def _remember_runner(environment: Any, **_: Any) -> None:
    _RUNNER[0] = environment.runner


@events.test_stop.add_listener
def _write_observed(environment: Any, **_: Any) -> None:
    out = os.environ.get("SCAS_STRESS_OBSERVED")
    if out:
        with open(out, "w") as fh:
            json.dump({dn: list(v) for dn, v in OBSERVED.items()}, fh)


def _context_factory(kind: str) -> Any:
    cert, key = MANIFEST["pep"][kind]

    def factory(cafile: str | None = None) -> gevent.ssl.SSLContext:
        ctx = gevent.ssl.create_default_context(cafile=MANIFEST["ca_file"])
        ctx.load_cert_chain(cert, key)
        return ctx

    return factory


class _Pep(FastHttpUser):
    abstract = True
    close_each: bool = False
    insecure = False

    def __init__(self, environment: Any) -> None:
        self.kind = random.choice(("ce", "wn"))
        self.ssl_context_factory = _context_factory(self.kind)
        super().__init__(environment)
        self.headers = {"Content-Type": "text/xml; charset=utf-8",
                        "SOAPAction": '""'}
        if self.close_each:
            self.headers["Connection"] = "close"

    @task
    def query(self) -> None:
        item = random.choice(REQUESTS[self.kind])
        request_id = "_" + uuid.uuid4().hex
        body = item["body"].replace(MANIFEST["request_id"], request_id).encode()
        name = f"{self.kind} {'banned' if item['expect'] == 'Deny' else 'mapped'}"
        with self.client.post("/", data=body, headers=self.headers, name=name,
                              catch_response=True) as resp:
            if resp.status_code != 200:
                resp.failure(f"HTTP {resp.status_code}")
                return
            problem = check_reply(item, request_id, resp.content or b"", OBSERVED, bare=BARE)
            if problem:
                resp.failure(problem)


class KeepAlivePep(_Pep):
    """A PEP that keeps one TLS connection open (the service's best case)."""


class HandshakePep(_Pep):
    """A PEP that opens a new TLS connection per query, as the C client does."""

    close_each = True
