"""The pilot's side of the VO task queue: claim a payload, report what became of it.

JSON over HTTP (the protocol is described in ``testkit/taskqueue.py``, the test queue): a
real VO's queue speaks its own protocol, and a pilot framework replaces this module.
"""

from __future__ import annotations

import http.client
import json
import time
import urllib.parse
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from safetext import one_line

TIMEOUT = 10.0
MAX_REPLY = 1024 * 1024


class QueueError(Exception):
    """The queue could not be reached or answered something unusable."""


class BadPayload(Exception):
    """A claimed payload is malformed: it is reported as failed, never run."""


@dataclass(frozen=True)
class MyProxySpec:
    server: str
    port: int
    username: str
    server_dn: str | None = None


@dataclass(frozen=True)
class Payload:
    id: str
    claim: str
    owner: str
    myproxy: MyProxySpec
    command: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    stdin: str | None = None
    vo: str | None = None


@dataclass(frozen=True)
class Claimed:
    """The answer to a claim: a payload, or none and how many wait for later."""

    payload: Payload | None
    deferred: int
    retry_after: float


def _text(doc: Mapping[str, Any], key: str, *, optional: bool = False) -> str | None:
    value = doc.get(key)
    if value is None and optional:
        return None
    if not isinstance(value, str) or not value:
        raise BadPayload(f"field {key!r} must be a non-empty string")
    return value


def parse_payload(doc: Mapping[str, Any]) -> Payload:
    """Check the fields a pilot relies on; the id and claim are checked first (to report)."""
    pid, claim = _text(doc, "id"), _text(doc, "claim")
    assert pid is not None and claim is not None
    mp = doc.get("myproxy")
    if not isinstance(mp, dict):
        raise BadPayload("field 'myproxy' must be an object")
    port = mp.get("port")
    if not isinstance(port, int) or not 0 < port < 65536:
        raise BadPayload("myproxy.port must be a port number")
    command = doc.get("command")
    if not (isinstance(command, list) and command and all(isinstance(c, str) for c in command)):
        raise BadPayload("field 'command' must be a non-empty list of strings")
    env = doc.get("env") or {}
    if not (isinstance(env, dict) and all(isinstance(v, str) for v in env.values())):
        raise BadPayload("field 'env' must be an object of strings")
    stdin = doc.get("stdin")
    if stdin is not None and not isinstance(stdin, str):
        raise BadPayload("field 'stdin' must be a string")
    spec = MyProxySpec(_text(mp, "server") or "", port, _text(mp, "username") or "",
                       _text(mp, "server_dn", optional=True))  # fmt: skip
    return Payload(pid, claim, _text(doc, "owner") or "", spec, tuple(command), dict(env),
                   stdin, _text(doc, "vo", optional=True))  # fmt: skip


class QueueClient:
    """``http://host:port`` of the queue; every call retries a refused connection briefly."""

    def __init__(self, url: str, pilot_id: str, *, attempts: int = 3) -> None:
        parts = urllib.parse.urlsplit(url)
        if parts.scheme != "http" or not parts.hostname:
            raise QueueError(f"queue URL must be http://HOST[:PORT], not {one_line(url)!r}")
        self.host, self.port = parts.hostname, parts.port or 80
        self.base = parts.path.rstrip("/")
        self.pilot_id = pilot_id
        self.attempts = attempts
        self.bad: tuple[str, str, str] | None = None  # (id, claim, reason) of a bad payload

    def _post(self, path: str, doc: Mapping[str, Any]) -> tuple[int, Any]:
        body = json.dumps(doc).encode()
        last = ""
        for attempt in range(self.attempts):
            conn = http.client.HTTPConnection(self.host, self.port, timeout=TIMEOUT)
            try:
                conn.request("POST", self.base + path, body,
                             {"Content-Type": "application/json"})  # fmt: skip
                resp = conn.getresponse()
                data = resp.read(MAX_REPLY + 1)
                return resp.status, json.loads(data) if data else None
            except (OSError, http.client.HTTPException, ValueError) as exc:
                last = one_line(exc, 200)
            finally:
                conn.close()
            time.sleep(0.5 * (attempt + 1))
        raise QueueError(f"task queue {self.host}:{self.port}{path}: {last}")

    def claim(self, max_seconds: float) -> Claimed:
        """One payload for this pilot, or None with how many are deferred."""
        status, doc = self._post("/claim", {"pilot": self.pilot_id,
                                            "max_seconds": int(max_seconds)})  # fmt: skip
        if status != 200 or not isinstance(doc, dict):
            raise QueueError(f"task queue /claim answered HTTP {status}")
        raw = doc.get("payload")
        deferred, after = int(doc.get("deferred") or 0), float(doc.get("retry_after") or 0)
        if raw is None:
            return Claimed(None, deferred, after)
        try:
            return Claimed(parse_payload(raw), deferred, after)
        except BadPayload as exc:
            if isinstance(raw, dict) and isinstance(raw.get("id"), str):
                self.bad = (raw["id"], str(raw.get("claim", "")), str(exc))
            raise

    def report(self, payload_id: str, claim: str, outcome: str, **fields: Any) -> None:
        doc = {"claim": claim, "outcome": outcome, **fields}
        status, reply = self._post(f"/payloads/{urllib.parse.quote(payload_id, safe='')}/report",
                                   doc)  # fmt: skip
        if status != 200:
            err = reply.get("error") if isinstance(reply, dict) else reply
            raise QueueError(f"task queue refused the report of {one_line(payload_id)}: "
                             f"HTTP {status} {one_line(err, 200)}")  # fmt: skip
