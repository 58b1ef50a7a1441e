"""The pilot's side of the task queue and of glexec's answers, no privileges needed.

The real test queue (testkit/taskqueue.py) on loopback and the pilot's client
(pilot/queue.py) speak to each other over HTTP; the classification of glexec's exit codes
and status records (pilot/outcome.py) follows the reference table; and the ``pilot``
console script refuses a bad start with one line and exit 2.
"""

from __future__ import annotations

import subprocess
import sys
import sysconfig
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from pilot.outcome import from_glexec, parse_status
from pilot.queue import BadPayload, QueueClient, QueueError
from testkit.pki import TestPKI
from testkit.taskqueue import MyProxyRef, TaskQueue, task_queue

REF = MyProxyRef("localhost", 7512, "carol")
OWNER = "/DC=org/DC=example/O=Users/CN=Carol"


@pytest.fixture
def queue() -> Iterator[TaskQueue]:
    with task_queue(max_attempts=3) as q:
        yield q


def test_claim_then_done_is_final(queue: TaskQueue) -> None:
    pid = queue.add(owner=OWNER, myproxy=REF, command=["/usr/bin/id"], env={"A": "1"},
                    vo="dteam")  # fmt: skip
    client = QueueClient(queue.url, "pilot-1")
    got = client.claim(600)
    assert got.payload is not None and got.payload.id == pid
    p = got.payload
    assert (p.owner, p.command, p.vo) == (OWNER, ("/usr/bin/id",), "dteam")
    assert dict(p.env) == {"A": "1"}
    assert (p.myproxy.server, p.myproxy.port, p.myproxy.username) == ("localhost", 7512, "carol")
    assert client.claim(600).payload is None  # claimed: nobody else gets it
    client.report(pid, p.claim, "done", exit=0, stdout="ok\n")
    snap = queue.payload(pid)
    assert snap["state"] == "done" and snap["history"][0]["stdout"] == "ok\n"
    assert snap["history"][0]["pilot"] == "pilot-1"
    with pytest.raises(QueueError, match="409"):  # a second report with the spent claim
        client.report(pid, p.claim, "done")
    empty = client.claim(600)
    assert (empty.payload, empty.deferred) == (None, 0)  # the pilot's signal to stop


def test_retry_puts_back_after_the_delay_and_gives_up_after_max_attempts(
    queue: TaskQueue,
) -> None:  # fmt: skip
    pid = queue.add(owner=OWNER, myproxy=REF, command=["/usr/bin/id"])
    client = QueueClient(queue.url, "p")
    for attempt in range(3):
        got = client.claim(600)
        assert got.payload is not None, attempt
        client.report(pid, got.payload.claim, "retry", glexec_exit=202, retry_after=0.3)
        if attempt < 2:
            later = client.claim(600)
            assert later.payload is None and later.deferred == 1 and later.retry_after > 0
            time.sleep(0.35)
    assert queue.payload(pid)["state"] == "failed"  # max_attempts=3 reports of retry
    assert [h["glexec_exit"] for h in queue.payload(pid)["history"]] == [202, 202, 202]


def test_claim_respects_the_pilots_remaining_time(queue: TaskQueue) -> None:
    queue.add(owner=OWNER, myproxy=REF, command=["/bin/sleep", "100"], seconds=100)
    client = QueueClient(queue.url, "p")
    assert client.claim(50).payload is None
    assert client.claim(150).payload is not None


def test_unreported_claim_expires_back_into_the_queue() -> None:
    with task_queue(lease_seconds=0.2) as q:
        pid = q.add(owner=OWNER, myproxy=REF, command=["/usr/bin/id"])
        client = QueueClient(q.url, "p")
        first = client.claim(60).payload
        time.sleep(0.3)
        second = client.claim(60).payload
        assert first is not None and second is not None and second.id == pid
        assert second.claim != first.claim
        assert q.payload(pid)["history"][0]["reason"] == "claim expired"


def test_malformed_payload_is_named_for_the_report(queue: TaskQueue) -> None:
    pid = queue.add(owner=OWNER, myproxy=REF, command=[])
    client = QueueClient(queue.url, "p")
    with pytest.raises(BadPayload, match="command"):
        client.claim(60)
    assert client.bad is not None and client.bad[0] == pid
    client.report(pid, client.bad[1], "failed", reason="malformed")
    assert queue.payload(pid)["state"] == "failed"


def test_unreachable_queue_is_a_queue_error() -> None:
    with task_queue() as q:
        url = q.url
    with pytest.raises(QueueError, match="task queue"):
        QueueClient(url, "p", attempts=1).claim(60)
    with pytest.raises(QueueError, match="http://HOST"):
        QueueClient("https://example.org/", "p")


# -- glexec's answers ----------------------------------------------------------------------

R = {"phase": "scas", "exit": 202, "signal": 0, "reason": "no SCAS answer"}


@pytest.mark.parametrize("code, record, want", [
    (0, {"phase": "payload", "exit": 0, "signal": 0, "reason": "ok"}, ("done", 0, 0)),
    (201, {"phase": "environment", "exit": 201, "signal": 0, "reason": "x"}, ("failed", None, 0)),
    (202, R, ("retry", None, 0)),
    (203, {"phase": "scas", "exit": 203, "signal": 0, "reason": "denied"}, ("refused", None, 0)),
    (204, {"phase": "payload", "exit": 203, "signal": 0, "reason": "x"}, ("done", 203, 0)),
    (126, {"phase": "payload", "exit": 126, "signal": 0, "reason": "x"}, ("done", 126, 0)),
    (143, {"phase": "payload", "exit": 143, "signal": 15, "reason": "x"}, ("done", 143, 15)),
    (203, {"phase": "ticket", "exit": 203, "signal": 0, "reason": "bad"}, ("refused", None, 0)),
    (201, None, ("failed", None, 0)),
    (202, None, ("retry", None, 0)),
    (204, None, ("done", 204, 0)),
    (7, None, ("done", 7, 0)),
    (-9, None, ("retry", None, 9)),
])  # fmt: skip
def test_glexec_codes_follow_the_reference_table(
    code: int, record: dict[str, object] | None, want: tuple[str, int | None, int]
) -> None:
    o = from_glexec(code, record)
    assert (o.outcome, o.exit, o.signal) == want
    assert o.glexec_exit == code


def test_status_record_parsing() -> None:
    assert parse_status('{"phase": "payload", "exit": 3, "signal": 0, "reason": "r"}\n') == {
        "phase": "payload", "exit": 3, "signal": 0, "reason": "r"}  # fmt: skip
    assert parse_status("") is None
    assert parse_status("not json\n") is None
    assert parse_status('{"phase": "payload"}') is None  # no exit: not a record


# -- a bad start -------------------------------------------------------------------------

PILOT = Path(sysconfig.get_path("scripts")) / "pilot"


def _pilot(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, str(PILOT), *args], env={"PATH": "/usr/bin:/bin",
                          **env}, capture_output=True, text=True, timeout=60)  # fmt: skip


def test_bad_start_is_one_line_and_exit_2(tmp_path: Path, pki: TestPKI) -> None:
    res = _pilot(["--queue", "http://127.0.0.1:9"], {})
    assert (res.returncode, res.stdout) == (2, "")
    assert res.stderr == "pilot: X509_USER_PROXY is not set: the pilot needs its own proxy\n"
    user = pki.user("pilot-start", "/DC=org/DC=example/O=Users/CN=Pilot Start")
    proxy = pki.proxy(user, fqans=["/dteam/Role=pilot/Capability=NULL"])
    res = _pilot(["--queue", "ftp://x"], {"X509_USER_PROXY": proxy})
    assert res.returncode == 2 and res.stderr.startswith("pilot: queue URL must be http://")
    res = _pilot(["--queue", "http://127.0.0.1:9", "--work-dir", str(tmp_path / "nope")],
                 {"X509_USER_PROXY": proxy})  # fmt: skip
    assert res.returncode == 2 and len(res.stderr.splitlines()) == 1


def test_empty_queue_ends_the_pilot_with_0(tmp_path: Path, pki: TestPKI) -> None:
    user = pki.user("pilot-empty", "/DC=org/DC=example/O=Users/CN=Pilot Empty")
    proxy = pki.proxy(user, fqans=["/dteam/Role=pilot/Capability=NULL"])
    with task_queue() as q:
        res = _pilot(["--queue", q.url, "--json", "--work-dir", str(tmp_path)],
                     {"X509_USER_PROXY": proxy})  # fmt: skip
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == ('{"event": "end", "reason": "queue empty", "payloads": 0, '
                                  '"outcomes": {}, "exit": 0}')  # fmt: skip
    assert list(tmp_path.iterdir()) == []  # its private directory is gone
    with task_queue() as q:  # a proxy without the role: warned, not refused (MyProxy decides)
        res = _pilot(["--queue", q.url, "--work-dir", str(tmp_path)],
                     {"X509_USER_PROXY": pki.proxy(user)})  # fmt: skip
    assert res.returncode == 0 and "no /<vo>/Role=pilot attribute" in res.stderr
    assert res.stdout == "pilot: queue empty; 0 payload(s)\n"
