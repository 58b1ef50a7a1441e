"""The pilot's first process: run the loop in a child and clean up whatever becomes of it.

A process cannot clean up after its own SIGKILL (the OOM killer, ``kill -9``, a careless
operator). So the pilot forks: the child runs the loop; this parent does nothing but wait,
and when the child is gone, for whatever reason, it

- stops what the child left running (its glexec, whose real uid is the pilot's) with SIGTERM,
  which glexec forwards to the payload, then SIGKILL after the grace period;
- removes every proxy file in the pilot's directory and puts the in-flight payload back;
- waits for processes the payload left behind (they are re-parented here, as this process
  is a child subreaper, so they stay in the job's process tree where the batch system sees
  and ends them; they run as the pool account, which the pilot may not signal).

Only a SIGKILL of this small parent itself, or of the whole job at once, escapes: then the
batch system ends the processes, and the proxy files stay in the pilot's directory until the
job's scratch space is cleaned (README: put ``--work-dir`` on per-job scratch).
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path

from pilot.loop import INFLIGHT, STOP_SIGNALS

PR_SET_CHILD_SUBREAPER = 36


def set_subreaper() -> bool:
    """Make orphaned descendants this process's children (Linux 3.4+); False if refused."""
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def children() -> dict[int, int]:
    """pid -> real uid of this process's children (from /proc/PID/status, which stays
    readable for the setuid helper; /proc/PID itself is root's while it is non-dumpable)."""
    me, found = os.getpid(), {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{entry}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
            if int(status["PPid"]) == me:
                found[int(entry)] = int(status["Uid"].split()[0])
        except (OSError, ValueError, KeyError):
            continue
    return found


def reap() -> None:
    """Collect every exited child without blocking."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _signal_all(sig: int) -> list[int]:
    """Send ``sig`` to every child the kernel lets this process signal; those pids."""
    sent = []
    for pid in children():
        try:
            os.kill(pid, sig)
            sent.append(pid)
        except (ProcessLookupError, PermissionError):
            pass
    return sent


def stop_children(grace: float) -> None:
    """SIGTERM to the children this process may signal (glexec: its real uid is the pilot's,
    and it forwards the signal to the payload), SIGKILL after ``grace`` seconds."""
    for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 2.0)):
        sent = _signal_all(sig)
        deadline = time.monotonic() + wait
        while sent and time.monotonic() < deadline:
            reap()
            alive = children()
            sent = [pid for pid in sent if pid in alive]
            time.sleep(0.05)
        reap()


def remove_proxies(work: Path) -> list[str]:
    """Remove every proxy file the loop may have left in ``work``; their names."""
    gone = []
    for path in sorted(work.glob("proxy-*")):
        try:
            path.unlink()
            gone.append(path.name)
        except FileNotFoundError:
            pass
    return gone


def inflight(work: Path) -> dict[str, str] | None:
    try:
        doc = json.loads((work / INFLIGHT).read_text())
    except (OSError, ValueError):
        return None
    return doc if isinstance(doc, dict) else None


def supervise(worker: Callable[[], int], *, work: Path, grace: float, wait_until: float,
              on_lost: Callable[[int, dict[str, str] | None, list[str]], None],
              on_wait: Callable[[dict[int, int]], None]) -> int:  # fmt: skip
    """Fork ``worker``; forward stop signals to it; clean up after it; its exit code.

    ``on_lost(status, in-flight payload, removed proxies)`` is called when the loop died of a
    signal (status -N) or ended with a payload still in hand (it could not report it).
    """
    set_subreaper()
    sys.stdout.flush()
    pid = os.fork()
    if pid == 0:
        code = 2
        try:
            code = worker()
        except BaseException:  # os._exit below would swallow the traceback
            traceback.print_exc()
        finally:
            sys.stdout.flush()
            sys.stderr.flush()
            os._exit(code)
    stopping: list[int] = []

    def forward(signum: int, _frame: object) -> None:
        stopping.append(signum)
        try:
            os.kill(pid, signum)
        except ProcessLookupError:
            pass

    for sig in STOP_SIGNALS:
        signal.signal(sig, forward)
    status = _wait_for(pid)
    code = os.waitstatus_to_exitcode(status)
    stop_children(grace)  # the worker's glexec, if the worker could not stop it itself
    removed, current = remove_proxies(work), inflight(work)
    if code < 0 or current:  # killed, or crashed with a payload in hand
        on_lost(code, current, removed)
    code = 128 - code if code < 0 else code
    if not stopping and children():
        on_wait(children())
    while not stopping and time.monotonic() < wait_until and children():
        reap()  # what the payload left behind: the batch system ends it with the job
        time.sleep(0.2)
    return code


def _wait_for(pid: int) -> int:
    while True:
        got, status = os.waitpid(-1, 0)
        if got == pid:
            return status
