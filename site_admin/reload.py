"""Reload the running ``scas-server`` and confirm that the new policy is what serves.

The gunicorn master writes ``<pidfile>.status`` on every load attempt
(:mod:`scas_server.gunicorn_conf`). We note its ``attempt``, send SIGHUP and
wait for an attempt that started after our signal (another admin's SIGHUP may be
in flight). Applied is not yet live: workers forked before the signal still
serve the old policy until gunicorn retires them, so we also wait until every
worker child of the master started after the signal (``/proc/PID/stat``
starttime against ``/proc/uptime`` taken at signal time).
"""

from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import dataclass
from typing import Any

from leases.claims import process_alive
from site_admin.common import AdminError, Refused

__all__ = ["ReloadTimeout", "Reloaded", "ServerRejected", "reload_server"]

TIMEOUT = 30.0
POLL = 0.05
PIDFILE_GRACE = 1.0  # gunicorn unlinks and rewrites the pidfile during a reload


class ServerRejected(Refused):
    """The server refused the new configuration and kept its running policy."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors or ["no reason given"]
        super().__init__("the server rejected the new policy: " + "; ".join(self.errors))


class ReloadTimeout(AdminError):
    """The server did not confirm the reload in time (the edit stays written)."""


@dataclass(frozen=True)
class Reloaded:
    """The outcome: ``live`` (with generation and pid) or ``not running``."""

    live: bool
    pid: int | None = None
    generation: int | None = None

    def document(self) -> dict[str, Any]:
        return {"live": self.live, "pid": self.pid, "generation": self.generation}

    def line(self) -> str:
        if self.live:
            return f"policy live (generation {self.generation})"
        return "server not running; the change takes effect at its next start"


def read_status(pidfile: str) -> dict[str, Any] | None:
    """The master's last load report, or None when there is none (yet)."""
    from scas_server.gunicorn_conf import status_path

    try:
        with open(status_path(pidfile)) as fh:
            data = json.load(fh)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _read_pid(pidfile: str) -> int | None:
    deadline = time.monotonic() + PIDFILE_GRACE
    while True:
        try:
            with open(pidfile) as fh:
                text = fh.read().strip()
            return int(text) if text.isdigit() else None
        except FileNotFoundError:
            if time.monotonic() >= deadline:
                return None
            time.sleep(POLL)
        except OSError as exc:
            raise AdminError(f"{pidfile}: cannot read: {exc.strerror}") from None


def running_master(pidfile: str | None) -> int | None:
    """The pid of the running master named by ``pidfile``, or None when none runs.

    A live pid whose status file names another process is refused: after a crash
    the pid may belong to an unrelated process, and SIGHUP would kill most of them.
    """
    if pidfile is None:
        return None
    pid = _read_pid(pidfile)
    if pid is None or pid <= 1 or not process_alive(pid):
        return None
    status = read_status(pidfile)
    if status is None or status.get("pid") != pid or not _is_that_master(pid, status):
        raise AdminError(f"{pidfile}: pid {pid} is running but is not the scas-server master "
                         f"{pidfile}.status describes; not signalling it")
    return pid


def _is_that_master(pid: int, status: dict[str, Any]) -> bool:
    """The process is a scas-server started before the status file's last write.

    After a crash the pid in both files can be reused by another process (one started
    later), and whoever runs the server could write both files naming any pid: SIGHUP
    kills most programs, so root checks the process itself.
    """
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as fh:
            cmdline = fh.read()
    except OSError:
        return False
    if b"scas-server" not in cmdline:
        return False
    st = _stat(pid)
    last = status.get("last") if isinstance(status.get("last"), dict) else {}
    written = last.get("at") if isinstance(last, dict) else None
    if st is None or not isinstance(written, int | float) or written > time.time() + 1:
        return False
    started = time.time() - (_ticks_now() - st[1]) / os.sysconf("SC_CLK_TCK")
    return started <= written + 1


def _ticks_now() -> int:
    with open("/proc/uptime") as fh:
        return int(float(fh.read().split()[0]) * os.sysconf("SC_CLK_TCK"))


def _stat(pid: int) -> tuple[int, int] | None:
    """(ppid, starttime in ticks) of ``pid``, or None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            data = fh.read()
    except OSError:
        return None
    fields = data[data.rfind(b")") + 2 :].split()
    return int(fields[1]), int(fields[19])


def _workers(master: int) -> list[tuple[int, int]]:
    """(pid, starttime) of every child of ``master``."""
    found = []
    for name in os.listdir("/proc"):
        if name.isdigit():
            st = _stat(int(name))
            if st is not None and st[0] == master:
                found.append((int(name), st[1]))
    return found


def _wait_attempt(pidfile: str, pid: int, after: int, sent_at: float,
                  timeout: float) -> dict[str, Any]:
    """The first status whose attempt is newer than ``after`` and started after our signal."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        status = read_status(pidfile)
        last = (status or {}).get("last") or {}
        if (status is not None and int(status.get("attempt", 0)) > after
                and float(last.get("started", 0)) >= sent_at):
            return status
        if not process_alive(pid):
            raise AdminError(f"scas-server (pid {pid}) exited during the reload")
        time.sleep(POLL)
    raise ReloadTimeout(f"scas-server (pid {pid}) did not report the reload within "
                        f"{timeout:g} s (see its log); the edit is written")


def _wait_workers(pid: int, since_ticks: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        workers = _workers(pid)
        if workers and all(start >= since_ticks for _, start in workers):
            return
        if not process_alive(pid):
            raise AdminError(f"scas-server (pid {pid}) exited during the reload")
        time.sleep(POLL)
    raise ReloadTimeout(f"scas-server (pid {pid}) applied the new policy but its old workers "
                        "were still serving at the deadline")


def reload_server(pidfile: str | None, *, timeout: float = TIMEOUT) -> Reloaded:
    """SIGHUP the master named in ``pidfile``; return once the new policy serves.

    Raises :class:`ServerRejected` (the server kept its policy),
    :class:`ReloadTimeout`, or :class:`AdminError` (cannot signal, server died).
    """
    pid = running_master(pidfile)
    if pid is None or pidfile is None:
        return Reloaded(live=False)
    status = read_status(pidfile) or {}
    before = int(status.get("attempt", 0))
    deadline = time.monotonic() + timeout
    since_ticks = _ticks_now()
    sent_at = time.time()
    try:
        os.kill(pid, signal.SIGHUP)
    except ProcessLookupError:
        return Reloaded(live=False)
    except PermissionError:
        raise AdminError(f"cannot signal scas-server (pid {pid}): permission denied") from None
    status = _wait_attempt(pidfile, pid, before, sent_at, timeout)
    last = status.get("last") or {}
    if last.get("result") != "applied":
        raise ServerRejected([str(e) for e in last.get("errors") or []])
    _wait_workers(pid, since_ticks, max(deadline - time.monotonic(), 0.0))
    return Reloaded(live=True, pid=pid, generation=int(status.get("generation", 0)))
