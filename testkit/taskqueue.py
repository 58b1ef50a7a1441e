"""A minimal VO task queue for tests and demos: TEST INFRASTRUCTURE, NOT PRODUCT.

A real VO runs its own (PanDA, DIRAC, glideinWMS): this one exists so the reference pilot
(``pilot``) can be tested end to end. It keeps payloads in memory and serves them over plain
HTTP on loopback, with no authentication; a real queue authenticates its pilots.

    with task_queue() as queue:
        pid = queue.add(owner=DN, myproxy=MyProxyRef("localhost", 7512, "carol"),
                        command=["/usr/bin/id"])
        ...  # pilot --queue queue.url
        queue.payload(pid)["state"]             # "done"

The protocol (JSON bodies, what ``pilot/queue.py`` speaks):

- ``POST /claim`` ``{"pilot": ID, "max_seconds": N}`` -> ``{"payload": {...} | null,
  "deferred": N, "retry_after": S}``. A claimed payload carries a ``claim`` token; it goes
  back to the queue if not reported within ``lease_seconds``. ``deferred`` counts payloads put
  back that become available later (a pilot waits for them; 0 means the queue is empty).
- ``POST /payloads/<id>/report`` ``{"claim": TOKEN, "outcome": "done" | "failed" | "refused"
  | "retry", "retry_after": S, ...}``: done, failed and refused are final; retry puts the
  payload back (at most ``max_attempts`` times, then it fails). 409 for a stale claim.
- ``GET /payloads``: every payload with its state and its history of reports.
"""

from __future__ import annotations

import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

__all__ = ["FINAL", "MyProxyRef", "QueueTimeout", "TaskQueue", "task_queue"]

FINAL = frozenset({"done", "failed", "refused"})
OUTCOMES = FINAL | {"retry"}
MAX_BODY = 4 * 1024 * 1024


class QueueTimeout(Exception):
    """A payload did not reach the awaited state in time."""


@dataclass(frozen=True)
class MyProxyRef:
    """Where the owner's proxy waits: a MyProxy server and the username it was stored under."""

    server: str
    port: int
    username: str
    server_dn: str | None = None


@dataclass
class _Payload:
    id: str
    owner: str
    myproxy: dict[str, Any]
    command: list[str]
    env: dict[str, str]
    stdin: str | None
    vo: str | None
    seconds: int
    state: str = "queued"  # queued, claimed, done, failed, refused
    not_before: float = 0.0
    claim: str | None = None
    claimed_by: str | None = None
    claimed_at: float = 0.0
    history: list[dict[str, Any]] = field(default_factory=list)

    def wire(self) -> dict[str, Any]:
        """What a pilot gets: the job, the owner, where the proxy is, the claim token."""
        keys = ("id", "owner", "myproxy", "command", "env", "stdin", "vo", "seconds", "claim")
        return {k: getattr(self, k) for k in keys}


class TaskQueue:
    """Payloads in memory behind a small HTTP server on loopback (see the module docstring)."""

    def __init__(self, *, lease_seconds: float = 600.0, max_attempts: int = 5) -> None:
        self.lease_seconds = lease_seconds
        self.max_attempts = max_attempts
        self._lock = threading.Condition()
        self._payloads: dict[str, _Payload] = {}
        self._server: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- the test's side -------------------------------------------------------------------

    @property
    def url(self) -> str:
        if self._server is None:
            raise RuntimeError("the task queue is not running")
        host, port = self._server.server_address[:2]
        return f"http://{host!s}:{port}"

    def add(self, *, owner: str, myproxy: MyProxyRef, command: Sequence[str],
            env: Mapping[str, str] | None = None, stdin: str | None = None,
            vo: str | None = None, seconds: int = 0) -> str:  # fmt: skip
        """Queue a payload of ``owner`` (their DN); return its id."""
        with self._lock:
            pid = f"job{len(self._payloads) + 1:04d}"
            self._payloads[pid] = _Payload(pid, owner, asdict(myproxy), list(command),
                                           dict(env or {}), stdin, vo, seconds)  # fmt: skip
            self._lock.notify_all()
        return pid

    def payload(self, pid: str) -> dict[str, Any]:
        """A snapshot of one payload: its fields, state and history of reports."""
        with self._lock:
            return json.loads(json.dumps(asdict(self._payloads[pid])))

    def payloads(self) -> list[dict[str, Any]]:
        with self._lock:
            return [json.loads(json.dumps(asdict(p))) for p in self._payloads.values()]

    def wait(self, pid: str, check: Callable[[dict[str, Any]], bool], *,
             timeout: float = 60.0) -> dict[str, Any]:  # fmt: skip
        """Block until ``check(snapshot)`` holds for payload ``pid``; return that snapshot."""
        deadline = time.monotonic() + timeout
        with self._lock:
            while True:
                snap = json.loads(json.dumps(asdict(self._payloads[pid])))
                if check(snap):
                    return snap
                left = deadline - time.monotonic()
                if left <= 0:
                    raise QueueTimeout(f"payload {pid}: not as awaited in {timeout:.0f} s: "
                                       f"{snap['state']}, {snap['history']}")  # fmt: skip
                self._lock.wait(min(left, 0.5))

    # -- the pilots' side ------------------------------------------------------------------

    def claim(self, pilot: str, max_seconds: float | None) -> dict[str, Any]:
        now = time.time()
        with self._lock:
            self._expire_leases(now)
            queued = [p for p in self._payloads.values() if p.state == "queued"]
            ready = [p for p in queued if p.not_before <= now
                     and (max_seconds is None or p.seconds <= max_seconds)]  # fmt: skip
            later = [p for p in queued if p not in ready]
            if not ready:
                wait = min((p.not_before - now for p in later), default=0.0)
                return {"payload": None, "deferred": len(later), "retry_after": max(wait, 0.0)}
            got = ready[0]
            got.state, got.claim, got.claimed_by = "claimed", secrets.token_hex(8), pilot
            got.claimed_at = now
            self._lock.notify_all()
            return {"payload": got.wire(), "deferred": len(later), "retry_after": 0.0}

    def _expire_leases(self, now: float) -> None:
        for p in self._payloads.values():
            if p.state == "claimed" and now - p.claimed_at > self.lease_seconds:
                p.history.append({"outcome": "retry", "reason": "claim expired", "time": now})
                p.state, p.claim = "queued", None

    def report(self, pid: str, body: Mapping[str, Any]) -> tuple[int, dict[str, Any]]:
        outcome = body.get("outcome")
        with self._lock:
            p = self._payloads.get(pid)
            if p is None:
                return 404, {"error": f"no payload {pid}"}
            if p.state != "claimed" or body.get("claim") != p.claim:
                return 409, {"error": f"payload {pid} is not claimed with that token"}
            if outcome not in OUTCOMES:
                return 400, {"error": f"outcome must be one of {sorted(OUTCOMES)}"}
            entry = {k: v for k, v in body.items() if k != "claim"}
            p.history.append({**entry, "pilot": p.claimed_by, "time": time.time()})
            p.claim = None
            if outcome != "retry":
                p.state = str(outcome)
            elif len(p.history) >= self.max_attempts:
                p.state = "failed"
            else:
                p.state = "queued"
                p.not_before = time.time() + float(body.get("retry_after") or 0)
            self._lock.notify_all()
            return 200, {"state": p.state}

    # -- the server ------------------------------------------------------------------------

    def start(self, host: str = "127.0.0.1", port: int = 0) -> None:
        self._server = ThreadingHTTPServer((host, port), _handler(self))
        self._server.daemon_threads = True
        self._thread = threading.Thread(target=self._server.serve_forever,
                                        name="taskqueue", daemon=True)  # fmt: skip
        self._thread.start()

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def _handler(queue: TaskQueue) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:
            pass

        def _reply(self, status: int, doc: object) -> None:
            data = json.dumps(doc).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

        def _body(self) -> dict[str, Any] | None:
            length = int(self.headers.get("Content-Length") or 0)
            if length > MAX_BODY:
                return None
            try:
                doc = json.loads(self.rfile.read(length) or b"{}")
            except ValueError:
                return None
            return doc if isinstance(doc, dict) else None

        def do_GET(self) -> None:
            if self.path == "/payloads":
                self._reply(200, queue.payloads())
            else:
                self._reply(404, {"error": "not found"})

        def do_POST(self) -> None:
            body = self._body()
            if body is None:
                self._reply(400, {"error": "expected a JSON object"})
            elif self.path == "/claim":
                limit = body.get("max_seconds")
                seconds = float(limit) if limit is not None else None
                self._reply(200, queue.claim(str(body.get("pilot", "?")), seconds))
            elif self.path.startswith("/payloads/") and self.path.endswith("/report"):
                self._reply(*queue.report(self.path.split("/")[2], body))
            else:
                self._reply(404, {"error": "not found"})

    return Handler


@contextlib.contextmanager
def task_queue(*, lease_seconds: float = 600.0, max_attempts: int = 5) -> Iterator[TaskQueue]:
    """A running queue on a free loopback port; stopped afterwards."""
    queue = TaskQueue(lease_seconds=lease_seconds, max_attempts=max_attempts)
    queue.start()
    try:
        yield queue
    finally:
        queue.stop()
