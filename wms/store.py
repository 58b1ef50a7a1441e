"""The CE's state in SQLite: delegations, jobs, their state history. A restart loses nothing.

One database file in the CE's state directory (mode 0600, the directory 0700: pending
delegation keys live here until the client returns the signed certificate). WAL mode, so
status readers never wait for a writer; one connection per thread and process (gunicorn
threads and forked workers each open their own). A final state is never overwritten,
except by Cleared after the output was retrieved.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

from wms.states import CLEARED, FINAL, Status

__all__ = ["Delegation", "JobRecord", "Store", "StoreError"]

SCHEMA = """
CREATE TABLE IF NOT EXISTS delegations (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, key_pem BLOB NOT NULL, created REAL NOT NULL);
CREATE TABLE IF NOT EXISTS jobs (
    id TEXT PRIMARY KEY, owner TEXT NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL,
    exit_code INTEGER, slurm_id TEXT, username TEXT, uid INTEGER, gid INTEGER,
    job TEXT NOT NULL, workdir TEXT NOT NULL, proxy TEXT, created REAL NOT NULL,
    updated REAL NOT NULL, timings TEXT NOT NULL DEFAULT '{}');
CREATE INDEX IF NOT EXISTS jobs_owner ON jobs (owner);
CREATE TABLE IF NOT EXISTS events (
    job_id TEXT NOT NULL, at REAL NOT NULL, state TEXT NOT NULL, detail TEXT NOT NULL);
CREATE INDEX IF NOT EXISTS events_job ON events (job_id);
"""


class StoreError(Exception):
    """The database cannot be opened or written."""


@dataclass(frozen=True)
class Delegation:
    id: str
    owner: str
    key_pem: bytes
    created: float


@dataclass
class JobRecord:
    """One job as the CE knows it."""

    id: str
    owner: str
    state: str
    detail: str
    exit_code: int | None
    slurm_id: str | None
    username: str | None
    uid: int | None
    gid: int | None
    job: dict[str, Any]
    workdir: str
    proxy: str | None
    created: float
    updated: float
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def status(self) -> Status:
        return Status(self.state, self.detail, self.exit_code)

    @property
    def final(self) -> bool:
        return self.state in FINAL


_COLUMNS = ("id, owner, state, detail, exit_code, slurm_id, username, uid, gid, job, workdir, "
            "proxy, created, updated, timings")  # fmt: skip


def _record(row: tuple[Any, ...]) -> JobRecord:
    values = list(row)
    values[9] = json.loads(values[9])
    values[14] = json.loads(values[14])
    return JobRecord(*values)


class Store:
    """The database at ``path``; made (0600) on first use."""

    def __init__(self, path: str) -> None:
        self.path = path
        self._local = threading.local()
        try:
            self._conn().executescript(SCHEMA)
        except sqlite3.Error as exc:
            raise StoreError(f"{path}: {exc}") from None

    def _conn(self) -> sqlite3.Connection:
        conn = getattr(self._local, "conn", None)
        if conn is None or getattr(self._local, "pid", None) != os.getpid():
            fresh = not os.path.exists(self.path)
            if fresh:
                os.close(os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_CLOEXEC, 0o600))
            try:
                conn = sqlite3.connect(self.path, timeout=30, isolation_level=None,
                                       check_same_thread=False)  # fmt: skip
                conn.execute("PRAGMA journal_mode=WAL")
                conn.execute("PRAGMA synchronous=NORMAL")
            except sqlite3.Error as exc:
                raise StoreError(f"{self.path}: {exc}") from None
            self._local.conn, self._local.pid = conn, os.getpid()
        return conn

    @contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        conn = self._conn()
        try:
            conn.execute("BEGIN IMMEDIATE")
            yield conn
            conn.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise StoreError(f"{self.path}: {exc}") from None
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise

    # -- delegations -----------------------------------------------------------------

    def add_delegation(self, d: Delegation) -> None:
        with self._tx() as db:
            db.execute("INSERT INTO delegations VALUES (?, ?, ?, ?)",
                       (d.id, d.owner, d.key_pem, d.created))  # fmt: skip

    def take_delegation(self, delegation_id: str, owner: str) -> Delegation | None:
        """The pending delegation of ``owner`` (removed: a key is used for one job only)."""
        with self._tx() as db:
            row = db.execute(
                "SELECT id, owner, key_pem, created FROM delegations WHERE id = ? AND owner = ?",
                (delegation_id, owner),
            ).fetchone()
            if row is None:
                return None
            db.execute("DELETE FROM delegations WHERE id = ?", (delegation_id,))
        return Delegation(row[0], row[1], bytes(row[2]), row[3])

    def expire_delegations(self, older_than: float) -> int:
        with self._tx() as db:
            return db.execute("DELETE FROM delegations WHERE created < ?",
                              (older_than,)).rowcount  # fmt: skip

    # -- jobs ------------------------------------------------------------------------

    def add_job(self, rec: JobRecord) -> None:
        with self._tx() as db:
            db.execute(f"INSERT INTO jobs ({_COLUMNS}) VALUES ({', '.join('?' * 15)})", (
                rec.id, rec.owner, rec.state, rec.detail, rec.exit_code, rec.slurm_id,
                rec.username, rec.uid, rec.gid, json.dumps(rec.job), rec.workdir, rec.proxy,
                rec.created, rec.updated, json.dumps(rec.timings)))  # fmt: skip
            db.execute("INSERT INTO events VALUES (?, ?, ?, ?)",
                       (rec.id, rec.updated, rec.state, rec.detail))  # fmt: skip

    def job(self, job_id: str) -> JobRecord | None:
        row = self._conn().execute(f"SELECT {_COLUMNS} FROM jobs WHERE id = ?",
                                   (job_id,)).fetchone()  # fmt: skip
        return _record(row) if row else None

    def jobs(self, owner: str | None = None, *, states: tuple[str, ...] = ()) -> list[JobRecord]:
        sql, args = f"SELECT {_COLUMNS} FROM jobs WHERE 1=1", []
        if owner is not None:
            sql, args = sql + " AND owner = ?", [owner]
        if states:
            sql += f" AND state IN ({', '.join('?' * len(states))})"
            args += list(states)
        rows = self._conn().execute(sql + " ORDER BY created", args).fetchall()
        return [_record(r) for r in rows]

    def update(self, job_id: str, status: Status | None = None, **fields: Any) -> bool:
        """Set fields and/or a new state; False (nothing changed) if the job is final and the
        new state is not Cleared, so a late Slurm report never rewrites a final state."""
        now = time.time()
        with self._tx() as db:
            row = db.execute("SELECT state, detail FROM jobs WHERE id = ?", (job_id,)).fetchone()
            if row is None:
                return False
            if status is not None and row[0] in FINAL and status.state != CLEARED:
                return False
            sets = dict(fields)
            if "timings" in sets:
                sets["timings"] = json.dumps(sets["timings"])
            if status is not None:
                sets.update(state=status.state, detail=status.detail,
                            exit_code=status.exit_code)  # fmt: skip
            sets["updated"] = now
            db.execute(f"UPDATE jobs SET {', '.join(f'{k} = ?' for k in sets)} WHERE id = ?",
                       [*sets.values(), job_id])  # fmt: skip
            if status is not None and (status.state, status.detail) != tuple(row):
                db.execute("INSERT INTO events VALUES (?, ?, ?, ?)",
                           (job_id, now, status.state, status.detail))  # fmt: skip
        return True

    def events(self, job_id: str) -> list[tuple[float, str, str]]:
        rows = self._conn().execute("SELECT at, state, detail FROM events WHERE job_id = ? "
                                    "ORDER BY at, rowid", (job_id,)).fetchall()  # fmt: skip
        return [(r[0], r[1], r[2]) for r in rows]
