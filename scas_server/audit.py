"""One JSON line per decision, for the site's audit trail.

JSON encoding escapes newlines and control characters, so a DN or FQAN
cannot forge a second line; values are also trimmed to a bounded length.
Every line is written with a single ``write(2)`` on an ``O_APPEND``
descriptor, so lines from several gunicorn workers never interleave.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

__all__ = ["AuditLog", "AuditRecord"]

MAX_VALUE = 1024


@dataclass
class AuditRecord:
    """What the server decided for one request; filled in as the pipeline runs."""

    pep: str = ""
    dn: str | None = None
    fqans: tuple[str, ...] = ()
    resource: str | None = None
    action: str | None = None
    decision: str = "Indeterminate"
    account: str | None = None
    uid: int | None = None
    gid: int | None = None
    lease: str | None = None
    reason: str = ""
    latency_ms: float = 0.0
    request_id: str | None = None
    ticket_nonce: str | None = None
    caller_uid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_FIELDS = tuple(f for f in fields(AuditRecord) if f.name != "extra")


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE else value[:MAX_VALUE] + "..."
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value[:64]]
    if isinstance(value, dict):
        return {str(k)[:64]: _clean(v) for k, v in list(value.items())[:32]}
    return value


class AuditLog:
    """Append-only JSON-lines writer (``-`` means stderr)."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None

    def _descriptor(self) -> int:
        if self.path == "-":
            return sys.stderr.fileno()
        if self._fd is None:
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
        return self._fd

    def line(self, record: AuditRecord, *, now: datetime | None = None) -> str:
        data: dict[str, Any] = {
            "time": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        }
        body = {f.name: getattr(record, f.name) for f in _FIELDS}
        extra = record.extra
        body["latency_ms"] = round(record.latency_ms, 3)
        data.update({k: _clean(v) for k, v in body.items() if v not in (None, "", (), [])})
        data.update({k: _clean(v) for k, v in extra.items() if k not in data})
        data.setdefault("decision", record.decision)
        data["worker"] = os.getpid()
        return json.dumps(data, ensure_ascii=True, separators=(",", ":"))

    def write(self, record: AuditRecord, *, now: datetime | None = None) -> None:
        """Append one line; OSError when it is not all on disk.

        A file system without room for the whole line is refused before writing, so a full
        disk does not leave half a line (another worker may still take the last bytes first;
        then the short write is reported as a failure too).
        """
        data = (self.line(record, now=now) + "\n").encode("ascii")
        with self._lock:
            fd = self._descriptor()
            if self.path != "-":
                st = os.fstatvfs(fd)
                if st.f_bavail * st.f_frsize < len(data):
                    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            written = os.write(fd, data)
        if written != len(data):
            raise OSError(errno.ENOSPC, f"short write ({written} of {len(data)} bytes)")

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
