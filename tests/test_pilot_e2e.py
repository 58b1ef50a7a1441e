"""Multi-user pilot jobs end to end, every part real (the site: tests/test_pilot_site.py).

A pilot job, submitted with ``sbatch`` as the pilot account, claims payloads from the task
queue, fetches each owner's proxy from ``myproxy-server`` with its pilot-role proxy, and runs
each through the installed ``glexec`` (live SCAS over mutual TLS, the setuid-root helper) as
the owner's pool account. One Slurm cluster, one SCAS and one MyProxy for the module; a
fresh task queue per test.
"""

from __future__ import annotations

import itertools
import os
import re
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from test_glexec_e2e import CONSOLE_SCRIPT
from test_pilot_site import (
    ALICE_DN,
    CAROL_DN,
    EVE_DN,
    PILOT,
    PILOT_DN,
    PILOT_SCRIPT,
    POOL,
    PilotSite,
    pilot_site,
)

from testkit.taskqueue import task_queue

pytestmark = [pytest.mark.slow, pytest.mark.root]

ID_UN = re.compile(r"uid=(\d+)\((plpool0[12])\)")


@pytest.fixture(scope="module")
def site() -> Iterator[PilotSite]:
    with pilot_site() as made:
        if isinstance(made, str):
            pytest.skip(made)
        yield made


@pytest.fixture
def ps(site: PilotSite) -> Iterator[PilotSite]:
    """The site with a fresh, empty task queue; SCAS running; nothing left of the pool."""
    site.start_scas()
    with task_queue() as queue:
        site.queue = queue
        yield site
    assert site.until(lambda: not site.pool_processes(), 15), site.pool_processes()


def _last(ps: PilotSite, pid: str) -> dict[str, Any]:
    history = ps.queue.payload(pid)["history"]
    assert history, f"payload {pid} was never reported"
    return dict(history[-1])


def _end(events: list[dict[str, Any]]) -> dict[str, Any]:
    ends = [e for e in events if e.get("event") == "end"]
    assert len(ends) == 1, events
    return ends[0]


def _finished(ps: PilotSite, job: str, timeout: float = 120) -> Any:
    info = ps.cluster.wait(job, timeout=timeout)
    return info


def test_one_pilot_runs_two_users_payloads_each_as_its_owner(ps: PilotSite) -> None:
    script = 'id; echo "tag=$PAYLOAD_TAG"; id -un > who.txt; stat -c %U:%a "$X509_USER_PROXY"'
    jobs = {dn: ps.add(user, ["/bin/sh", "-c", script], env={"PAYLOAD_TAG": f"{user}-1"})
            for user, dn in (("carol", CAROL_DN), ("alice", ALICE_DN))}  # fmt: skip
    before = len(ps.audit())
    job, out, _ = ps.submit("two-users")
    info = _finished(ps, job)
    assert (info.state, info.exit_code, info.user) == ("COMPLETED", 0, PILOT), out.read_text()

    accounts = {}
    for dn, pid in jobs.items():
        report = _last(ps, pid)
        assert ps.queue.payload(pid)["state"] == "done"
        assert (report["outcome"], report["glexec_exit"], report["exit"]) == ("done", 0, 0)
        uid, account = ID_UN.search(report["stdout"]).groups()  # type: ignore[union-attr]
        assert int(uid) == ps.ids[account]
        user = "carol" if dn == CAROL_DN else "alice"
        assert f"tag={user}-1" in report["stdout"]  # --env pass-through
        assert f"{account}:600" in report["stdout"]  # the target's own proxy copy
        assert report["files"] == {"who.txt": f"{account}\n"}  # the work-dir hand-over
        accounts[dn] = account
    assert sorted(accounts.values()) == sorted(POOL)  # each owner its own account

    # the SCAS audit ties each run to the owner's DN: a ticket for that DN and account,
    # asked for by the pilot's uid, and the helper ran that very ticket (its nonce)
    helper_log = (ps.base / "glexec.log").read_text(errors="replace")
    for dn, account in accounts.items():
        lines = [a for a in ps.audit()[before:] if a["dn"] == dn]
        assert len(lines) == 1, lines
        a = lines[0]
        assert (a["decision"], a["account"], a["stated_caller_uid"]) == (
            "Permit", account, ps.ids[PILOT])
        assert PILOT_DN in a["pep"]  # asked by the pilot, with its own proxy
        assert a["ticket_nonce"] and f"nonce={a['ticket_nonce']}" in helper_log

    events = ps.events(out)
    ran = [e for e in events if e.get("event") == "payload"]
    assert [e["id"] for e in ran] == list(jobs.values())
    assert all(ID_UN.search(e["stdout"]) for e in ran)  # both outputs came back to the pilot
    assert (_end(events)["reason"], _end(events)["exit"]) == ("queue empty", 0)


def test_banned_users_payload_is_refused_203_and_the_pilot_carries_on(ps: PilotSite) -> None:
    eve = ps.add("eve", ["/usr/bin/id"])
    carol = ps.add("carol", ["/usr/bin/id", "-un"])
    job, out, _ = ps.submit("banned")
    info = _finished(ps, job)
    assert (info.state, info.exit_code) == ("COMPLETED", 0), out.read_text()

    refused = ps.queue.payload(eve)
    assert refused["state"] == "refused" and len(refused["history"]) == 1  # never retried
    r = refused["history"][0]
    assert (r["outcome"], r["glexec_exit"], r["phase"]) == ("refused", 203, "scas")
    assert r["stdout"] == ""
    assert any(a["dn"] == EVE_DN and a["decision"] == "Deny" for a in ps.audit())
    done = _last(ps, carol)
    assert done["outcome"] == "done" and done["stdout"].strip() in POOL
    assert _end(ps.events(out))["outcomes"] == {"refused": 1, "done": 1}


def test_scancel_ends_the_running_payload_and_nothing_stays_running(ps: PilotSite) -> None:
    """The payload sleeps and leaves an orphan behind; scancel of the pilot job ends both."""
    pid = ps.add("carol", ["/bin/sh", "-c", "(sleep 301 &); exec sleep 302"])
    job, out, work = ps.submit("scancel")
    ok = ps.until(lambda: len([c for _, c in ps.pool_processes() if c == "sleep"]) == 2, 60)
    assert ok, (ps.events(out), ps.pool_processes())
    assert ps.cluster.squeue(user=PILOT) == [job]

    ps.cluster.scancel(job, user=PILOT)
    assert ps.cluster.wait(job, timeout=60).state == "CANCELLED"
    assert ps.until(lambda: not ps.pool_processes(), 20), ps.pool_processes()
    assert ps.proxy_files() == []
    assert list(work.iterdir()) == []  # the pilot's private directory is gone
    assert ps.queue.payload(pid)["history"], out.read_text()
    back = _last(ps, pid)
    assert back["outcome"] == "retry" and "signal 15" in back["reason"], back
    assert ps.queue.payload(pid)["state"] == "queued"  # put back for another pilot


def test_scas_down_for_a_while_gives_202_put_back_and_runs_when_it_returns(
    ps: PilotSite,
) -> None:  # fmt: skip
    ps.stop_scas()
    try:
        pid = ps.add("carol", ["/usr/bin/id", "-un"])
        job, out, _ = ps.submit("scas-down")
        ps.queue.wait(pid, lambda p: len(p["history"]) >= 1, timeout=60)
    finally:
        ps.start_scas()
    info = _finished(ps, job)
    assert (info.state, info.exit_code) == ("COMPLETED", 0), out.read_text()
    payload = ps.queue.payload(pid)
    first, last = payload["history"][0], payload["history"][-1]
    assert (first["outcome"], first["glexec_exit"], first["phase"]) == ("retry", 202, "scas")
    assert first["retry_after"] == 2
    times = [h["time"] for h in payload["history"]]
    assert all(b - a >= 2 for a, b in itertools.pairwise(times)), times  # the pilot backs off
    assert (payload["state"], last["outcome"], last["exit"]) == ("done", "done", 0)
    assert last["stdout"].strip() in POOL
    assert [e["outcome"] for e in ps.events(out) if e.get("event") == "payload"][-1] == "done"


def test_pilot_without_the_pilot_role_can_neither_retrieve_nor_get_a_ticket(
    ps: PilotSite,
) -> None:  # fmt: skip
    pid = ps.add("carol", ["/usr/bin/id"])
    job, out, _ = ps.submit("no-role", proxy="member")
    info = _finished(ps, job)
    assert (info.state, info.exit_code) == ("FAILED", 1), out.read_text()
    back = _last(ps, pid)
    assert back["outcome"] == "retry"  # not the payload's fault: it goes back
    assert "not authorized by server's trusted_retrievers policy" in back["reason"]
    assert ps.queue.payload(pid)["state"] == "queued"
    assert "MyProxy refuses this pilot" in _end(ps.events(out))["reason"]
    assert ps.proxy_files() == []

    # Given the owner's proxy anyway, the role-less pilot gets no ticket from SCAS (203);
    # the same call with the pilot-role proxy runs, so the refusal is the role's doing.
    owner = ps.pilot_dir / "carol-from-myproxy.pem"
    ps.myproxy.retrieve(ps.root_proxies["role"], "carol", owner)
    os.chown(owner, ps.ids[PILOT], ps.ids[f"{PILOT}:gid"])
    try:
        codes = {name: _glexec_id(ps, name, owner) for name in ("member", "role")}
    finally:
        owner.unlink()
    assert codes["member"][0] == 203 and "issued no ticket" in codes["member"][1], codes
    assert codes["role"][0] == 0, codes
    audit = [a for a in ps.audit() if a["dn"] == CAROL_DN][-2:]
    assert [bool(a.get("ticket_nonce")) for a in audit] == [False, True]


def _glexec_id(ps: PilotSite, pilot_proxy: str, owner: Path) -> tuple[int, str]:
    env = {"PATH": "/usr/bin:/bin", "X509_USER_PROXY": str(ps.proxies[pilot_proxy]),
           "X509_CERT_DIR": ps.site.pki.certdir, "GLEXEC_CLIENT_CERT": str(owner),
           "GLEXEC_CONFIG": str(ps.base / "front.conf"),
           "XDG_RUNTIME_DIR": str(ps.pilot_dir / "run")}  # fmt: skip
    res = subprocess.run([str(ps.python), str(CONSOLE_SCRIPT), "/usr/bin/id"], env=env,
                         user=PILOT, group=PILOT, extra_groups=[], cwd="/",
                         capture_output=True, text=True, timeout=60)  # fmt: skip
    return res.returncode, res.stderr


def test_no_proxy_is_left_on_disk_after_the_pilot_ends(ps: PilotSite) -> None:
    pid = ps.add("carol", ["/bin/sh", "-c", "test -s \"$X509_USER_PROXY\" && exec sleep 3"])
    job, out, work = ps.submit("clean-end")
    # while the payload runs both copies exist: the pilot's (retrieved) and the target's
    assert ps.until(lambda: len(ps.proxy_files()) == 2, 60), (ps.proxy_files(), out)
    held = ps.proxy_files()
    assert any(str(ps.sticky) in p for p in held) and any(str(work) in p for p in held)
    info = _finished(ps, job)
    assert (info.state, info.exit_code) == ("COMPLETED", 0), out.read_text()
    assert _last(ps, pid)["exit"] == 0
    assert ps.proxy_files() == [] and list(work.iterdir()) == []


def test_no_proxy_is_left_on_disk_when_the_pilot_is_killed(ps: PilotSite) -> None:
    """SIGKILL to the pilot's loop: its first process stops the payload, removes the proxy,
    puts the payload back."""
    pid = ps.add("carol", ["/bin/sleep", "300"])
    job, out, work = ps.submit("killed")
    assert ps.until(lambda: any(c == "sleep" for _, c in ps.pool_processes()), 60)
    assert ps.proxy_files()  # the retrieved proxy and the target's copy are there
    worker = _pilot_loop_pid(ps)
    os.kill(worker, signal.SIGKILL)
    info = _finished(ps, job)
    assert (info.state, info.exit_code) == ("FAILED", 128 + 9), out.read_text()
    assert ps.until(lambda: not ps.pool_processes(), 20), ps.pool_processes()
    assert ps.proxy_files() == [] and list(work.iterdir()) == []
    back = _last(ps, pid)
    assert back["outcome"] == "retry" and "killed by signal 9" in back["reason"]
    lost = [e for e in ps.events(out) if e.get("event") == "lost"]
    assert lost and lost[0]["payload"] == pid and lost[0]["removed"] == ["proxy-1.pem"]


def _pilot_loop_pid(ps: PilotSite) -> int:
    """The pilot's loop: the pilot process whose parent is the pilot's first process."""
    procs = {}
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            cmd = Path(f"/proc/{entry}/cmdline").read_bytes().split(b"\0")
            stat = Path(f"/proc/{entry}/stat").read_text()
        except OSError:
            continue
        if os.fsencode(PILOT_SCRIPT) in cmd:
            procs[int(entry)] = int(stat[stat.rindex(")") + 2 :].split()[1])
    loops = [pid for pid, parent in procs.items() if parent in procs]
    assert len(loops) == 1, procs
    return loops[0]


def test_glexec_exit_codes_201_and_204_and_a_proxy_without_voms(ps: PilotSite) -> None:
    """204: the payload's own code from the status record; 201: the payload's fault, no
    retry; a stored proxy without the VO's attributes and no --vomses: failed, not run."""
    own = ps.add("carol", ["/bin/sh", "-c", "echo partial; exit 203"])
    relative = ps.add("carol", ["sleep", "1"])
    plain = ps.add("dave", ["/usr/bin/id"], vo="dteam")
    job, out, _ = ps.submit("codes")
    info = _finished(ps, job)
    assert (info.state, info.exit_code) == ("COMPLETED", 0), out.read_text()
    r = _last(ps, own)
    assert (r["outcome"], r["glexec_exit"], r["exit"], r["stdout"]) == (
        "done", 204, 203, "partial\n")
    r = _last(ps, relative)
    assert (r["outcome"], r["glexec_exit"], ps.queue.payload(relative)["state"]) == (
        "failed", 201, "failed")
    r = _last(ps, plain)
    assert r["outcome"] == "failed" and r["glexec_exit"] is None
    assert "no VOMS attributes of 'dteam'" in r["reason"]
    assert ps.proxy_files() == []


def test_budget_runs_out_the_payload_is_stopped_and_put_back(ps: PilotSite) -> None:
    """A wall-clock budget of 15 s: the 300 s payload is stopped through glexec (SIGTERM,
    forwarded), put back for another pilot, and the pilot ends normally."""
    pid = ps.add("carol", ["/bin/sleep", "300"])
    job, out, work = ps.submit("budget", budget=15)
    info = _finished(ps, job, timeout=60)
    assert (info.state, info.exit_code) == ("COMPLETED", 0), out.read_text()
    back = _last(ps, pid)
    assert back["outcome"] == "retry" and "budget ran out" in back["reason"], back
    assert (back["glexec_exit"], back["signal"]) == (143, 15)  # the payload got the SIGTERM
    assert ps.queue.payload(pid)["state"] == "queued"
    assert _end(ps.events(out))["reason"] == "budget spent"
    assert not ps.pool_processes() and ps.proxy_files() == [] and list(work.iterdir()) == []
