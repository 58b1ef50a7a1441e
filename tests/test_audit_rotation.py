"""Log rotation loses no audit line: each line is in exactly one file, the rotated one or the
new one, whichever way the file is rotated (rename + SIGUSR1, rename alone, copytruncate, a
real logrotate run, rename + SIGHUP). Real ``scas-server`` with two workers.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from server_harness import Server, Site

from scas_server.audit import AuditLog, AuditRecord, reopen_all

N = 20
LOGROTATE = shutil.which("logrotate") or "/usr/sbin/logrotate"


@pytest.fixture
def live(tmp_path: Path) -> Iterator[tuple[Site, Server]]:
    site = Site(str(tmp_path / "site"))
    server = Server(site, site.write_config(workers=2))
    try:
        yield site, server
    finally:
        server.stop()


def send(server: Server, site: Site, tag: str, n: int = N) -> set[str]:
    """``n`` queries, four at a time so both workers answer; their request IDs."""
    ids = [f"{tag}-{i}" for i in range(n)]

    def one(request_id: str) -> None:
        status, _ = server.post(site.query(request_id=request_id))
        assert status == 200

    with ThreadPoolExecutor(4) as pool:
        list(pool.map(one, ids))
    return set(ids)


def send_to_both(server: Server, site: Site, tag: str) -> set[str]:
    """Batches of N queries until both workers have written one of them to the audit file
    (the kernel may give one worker every connection of a batch); their request IDs."""
    sent: set[str] = set()
    for batch in range(10):
        sent |= send(server, site, f"{tag}{batch}")
        if len({x["worker"] for x in read(site.audit) if x["request_id"] in sent}) >= 2:
            return sent
    raise AssertionError(f"one worker answered all {len(sent)} queries")


def read(path: str) -> list[dict[str, Any]]:
    """Every line of an audit file, each of which must be a whole JSON object."""
    with open(path, "rb") as fh:
        data = fh.read()
    assert data == b"" or data.endswith(b"\n")
    return [json.loads(line) for line in data.decode("ascii").splitlines()]


def ids_in(lines: list[dict[str, Any]]) -> list[str]:
    return [line["request_id"] for line in lines]


def workers(master: int) -> set[int]:
    """The master's children (gunicorn workers), from /proc."""
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            if int(stat.rsplit(")", 1)[1].split()[1]) == master:
                found.add(int(name))
    return found


def holders(master: int, path: str) -> set[int]:
    """Which of the master and its workers have the file now at ``path`` open."""
    st = os.stat(path)
    found = set()
    for pid in workers(master) | {master}:
        try:
            fds = os.listdir(f"/proc/{pid}/fd")
        except OSError:
            continue
        for fd in fds:
            try:
                target = os.stat(f"/proc/{pid}/fd/{fd}")
            except OSError:
                continue
            if (target.st_dev, target.st_ino) == (st.st_dev, st.st_ino):
                found.add(pid)
    return found


def wait_for(condition: Callable[[], bool], what: str, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {timeout} s: {what}")
        time.sleep(0.05)


def check_split(rotated: str, current: str, before: set[str], after: set[str]) -> list[Any]:
    """Each line in exactly one file: the ones sent before rotation in ``rotated``, the ones
    after in ``current``; the lines of ``current``, returned."""
    old, new = read(rotated), read(current)
    assert sorted(ids_in(old)) == sorted(before)
    assert sorted(ids_in(new)) == sorted(after)
    return new


def rotate_and_signal(site: Site, server: Server, sig: signal.Signals | None) -> str:
    """Rename the audit file as logrotate does; with ``sig``, signal the master."""
    rotated = site.audit + ".1"
    os.rename(site.audit, rotated)
    if sig is not None:
        os.kill(server.proc.pid, sig)
    return rotated


def test_reopen_during_a_write_does_not_wait(tmp_path: Path) -> None:
    """A sync worker runs the SIGUSR1 handler in the thread that may be writing: the reopen
    must not wait for the write's lock, and the next write still goes to the new file."""
    path = str(tmp_path / "audit.log")
    log = AuditLog(path)
    log.write(AuditRecord(request_id="before"))
    os.rename(path, path + ".1")
    with log._lock:  # a write under way
        handler = threading.Thread(target=reopen_all, daemon=True)
        handler.start()
        handler.join(5)
        assert not handler.is_alive()
    log.write(AuditRecord(request_id="after"))  # within STAT_INTERVAL: the signal's doing
    log.close()
    assert ids_in(read(path + ".1")) == ["before"] and ids_in(read(path)) == ["after"]


@pytest.mark.slow
@pytest.mark.parametrize("worker_class", ["gevent", "gthread", "sync"])
def test_rename_and_sigusr1(tmp_path: Path, worker_class: str) -> None:
    """logrotate's usual way: every worker lets go of the renamed file on SIGUSR1, before
    it writes again (so the stat check has no part in this). sync and gthread workers run the
    handler in their main thread, even in the middle of a write; gevent in a greenlet."""
    site = Site(str(tmp_path / "site"))
    server = Server(site, site.write_config(workers=2, worker_class=worker_class))
    try:
        sigusr1_rotation(site, server)
    finally:
        server.stop()


def sigusr1_rotation(site: Site, server: Server) -> None:
    before = send_to_both(server, site, "before")
    rotated = rotate_and_signal(site, server, signal.SIGUSR1)
    wait_for(lambda: not holders(server.proc.pid, rotated), "workers close the rotated file")
    after = send_to_both(server, site, "after")
    check_split(rotated, site.audit, before, after)


@pytest.mark.slow
def test_rename_without_signal(live: tuple[Site, Server]) -> None:
    """No signal at all: the once-a-second stat check moves each worker to the new file."""
    site, server = live
    before = send_to_both(server, site, "before")
    rotated = rotate_and_signal(site, server, None)
    time.sleep(1.5)
    assert holders(server.proc.pid, rotated)  # still open: only a write notices the rename
    after = send_to_both(server, site, "after")
    check_split(rotated, site.audit, before, after)
    assert not holders(server.proc.pid, rotated)


@pytest.mark.slow
def test_copytruncate(live: tuple[Site, Server]) -> None:
    """Copy, then truncate in place: O_APPEND writes at the new end, so the truncated file
    starts with the next line, with no hole of NUL bytes where the old lines were."""
    site, server = live
    before = send(server, site, "before")
    rotated = site.audit + ".1"
    shutil.copyfile(site.audit, rotated)
    os.truncate(site.audit, 0)
    after = send(server, site, "after")
    check_split(rotated, site.audit, before, after)
    with open(site.audit, "rb") as fh:
        assert fh.read(1) == b"{"


@pytest.mark.slow
@pytest.mark.skipif(not os.path.exists(LOGROTATE), reason="needs logrotate (Debian: logrotate)")
def test_real_logrotate(live: tuple[Site, Server], tmp_path: Path) -> None:
    site, server = live
    before = send_to_both(server, site, "before")
    conf = tmp_path / "logrotate.conf"
    conf.write_text(f"""\
{site.audit} {{
    rotate 3
    missingok
    create 0640
    sharedscripts
    postrotate
        kill -USR1 {server.proc.pid}
    endscript
}}
""")
    conf.chmod(0o644)
    run = subprocess.run(
        [LOGROTATE, "-f", "-s", str(tmp_path / "logrotate.state"), str(conf)],
        capture_output=True, text=True, timeout=30,
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    rotated = site.audit + ".1"
    assert os.path.exists(rotated) and os.path.getsize(site.audit) == 0
    wait_for(lambda: not holders(server.proc.pid, rotated), "workers close the rotated file")
    after = send_to_both(server, site, "after")
    check_split(rotated, site.audit, before, after)
    assert os.stat(site.audit).st_mode & 0o777 == 0o640


@pytest.mark.slow
def test_rename_and_sighup(live: tuple[Site, Server]) -> None:
    """A reload replaces the workers; the new ones open the path anew."""
    site, server = live
    before = send(server, site, "before")
    old_workers = workers(server.proc.pid)
    assert {line["worker"] for line in read(site.audit)} <= old_workers
    rotated = rotate_and_signal(site, server, signal.SIGHUP)
    wait_for(lambda: not workers(server.proc.pid) & old_workers, "old workers gone")
    server.wait_ready()
    after = send(server, site, "after")
    new = check_split(rotated, site.audit, before, after)
    assert not {line["worker"] for line in new} & old_workers
