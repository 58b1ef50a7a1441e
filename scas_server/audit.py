"""One JSON line per decision, for the site's audit trail, reopened when logrotate moves it.

JSON encoding escapes newlines and control characters, so a DN or FQAN
cannot forge a second line; values are also trimmed to a bounded length.
Every line is written with a single ``write(2)`` on an ``O_APPEND``
descriptor, so lines from several gunicorn workers never interleave.
That descriptor follows the path, not the file: SIGUSR1 (gunicorn's
"reopen logs", sent by logrotate's postrotate) reopens it in every worker,
and a rename without a signal is noticed by a stat check at most a second
later, so no line goes to the rotated file. copytruncate needs nothing:
``O_APPEND`` writes at the truncated file's new end.
"""

from __future__ import annotations

import errno
import json
import os
import sys
import threading
import time
import weakref
from dataclasses import dataclass, field, fields
from datetime import UTC, datetime
from typing import Any

from gunicorn.glogging import Logger

__all__ = ["AuditLog", "AuditRecord", "ReopeningLogger", "reopen_all"]

MAX_VALUE = 1024
#: seconds between checks that the open file is still the one at the path
STAT_INTERVAL = 1.0

# every AuditLog of this process, so a signal can reach the ones the pipeline holds;
# reentrant because the worker's SIGUSR1 handler may interrupt its own thread in here
_LIVE: weakref.WeakSet[AuditLog] = weakref.WeakSet()
_LIVE_LOCK = threading.RLock()


def reopen_all() -> None:
    """Make every AuditLog of this process open its path again at its next write."""
    with _LIVE_LOCK:
        logs = list(_LIVE)
    for audit in logs:
        audit.reopen()


class ReopeningLogger(Logger):
    """gunicorn's logger, whose SIGUSR1 reopen (master and each worker) covers the audit log."""

    def reopen_files(self) -> None:
        super().reopen_files()
        reopen_all()


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
    lease_event: str | None = None  # "new": this request made the lease; "held": it existed
    reason: str = ""
    latency_ms: float = 0.0
    request_id: str | None = None
    ticket_nonce: str | None = None
    caller_uid: int | None = None
    extra: dict[str, Any] = field(default_factory=dict)


_NAMES = tuple(f.name for f in fields(AuditRecord) if f.name != "extra")
_EMPTY: tuple[Any, ...] = (None, "", (), [])
_ENCODE = json.JSONEncoder(ensure_ascii=True, separators=(",", ":")).encode  # made once


def _clean(value: Any) -> Any:
    if isinstance(value, str):
        return value if len(value) <= MAX_VALUE else value[:MAX_VALUE] + "..."
    if isinstance(value, (list, tuple)):
        return [_clean(v) for v in value[:64]]
    if isinstance(value, dict):
        return {str(k)[:64]: _clean(v) for k, v in list(value.items())[:32]}
    return value


class AuditLog:
    """Append-only JSON-lines writer (``-`` means stderr) that follows its path on rotation."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._lock = threading.Lock()
        self._fd: int | None = None
        self._checked = 0.0  # time.monotonic() of the last stat check
        # reopen() counts requests; the descriptor remembers the count it was opened at. A
        # counter, not a flag a writer clears, so a request arriving mid-write is not lost.
        self._reopens = 0
        self._opened_at = 0
        with _LIVE_LOCK:
            _LIVE.add(self)

    def _descriptor(self) -> int:
        """The open descriptor (lock held), reopened when rotation has moved the file away."""
        if self.path == "-":
            return sys.stderr.fileno()
        if self._fd is not None and (self._opened_at != self._reopens or self._moved()):
            self._close()
        if self._fd is None:
            self._opened_at = self._reopens
            self._fd = os.open(self.path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o640)
            self._checked = time.monotonic()
        return self._fd

    def _moved(self) -> bool:
        """True when the path no longer names the open file (renamed or removed); checked at
        most once per STAT_INTERVAL, so a busy server pays one stat() a second, not per line."""
        now = time.monotonic()
        if now - self._checked < STAT_INTERVAL:
            return False
        self._checked = now
        assert self._fd is not None
        opened = os.fstat(self._fd)
        try:
            current = os.stat(self.path)
        except FileNotFoundError:
            return True
        return (opened.st_dev, opened.st_ino) != (current.st_dev, current.st_ino)

    def line(self, record: AuditRecord, *, now: datetime | None = None) -> str:
        data: dict[str, Any] = {
            "time": (now or datetime.now(UTC)).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
        }
        for name in _NAMES:
            value = getattr(record, name)
            if name == "latency_ms":
                value = round(value, 3)
            if value not in _EMPTY:
                data[name] = _clean(value)
        data.update({k: _clean(v) for k, v in record.extra.items() if k not in data})
        data.setdefault("decision", record.decision)
        data["worker"] = os.getpid()
        return _ENCODE(data)

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

    def reopen(self) -> None:
        """Let go of the file now, so the next write opens the path anew (logrotate's SIGUSR1).

        Runs in a signal handler that may have interrupted a write of this very thread, so
        it never waits for the lock: if the lock is busy, the write holding it is already
        under way, and the count makes the next one reopen.
        """
        self._reopens += 1
        if self._lock.acquire(blocking=False):
            try:
                self._close()
            finally:
                self._lock.release()

    def close(self) -> None:
        with self._lock:
            self._close()

    def _close(self) -> None:
        if self._fd is not None:
            fd, self._fd = self._fd, None
            os.close(fd)
