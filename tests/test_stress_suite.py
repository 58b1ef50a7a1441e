"""The load test's own judges: reply checking, the lease audit, and one short real run.

The figures themselves are benchmarks (``stress/run``), never asserted here;
what is asserted is that the suite notices a wrong answer or a broken
gridmapdir, and that the one command works end to end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from client import xacml
from client.xacml import Decision
from stress.lease_audit import AuditReport, audit_gridmapdir, audit_observed, audit_permits
from stress.replies import check_reply

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DN = "/DC=org/DC=example/O=Users/CN=Stress Judge"
ITEM = {"dn": DN, "expect": "Permit", "pool": "stpatl"}


def _reply(decision: Decision, request_id: str = "_q1") -> bytes:
    request = xacml.parse_request(xacml.build_request(subject_dn=DN, request_id=request_id))
    return xacml.build_response(request, decision, issuer="test")


def _permit(name: str = "stpatl0001", uid: int = 5001) -> Decision:
    return Decision.permit(uid=uid, gid=500, sgids=(), username=name)


def test_reply_expected_permit_passes_and_is_remembered() -> None:
    seen: dict[str, tuple[str, int]] = {}
    assert check_reply(ITEM, "_q1", _reply(_permit()), seen) is None
    assert seen == {DN: ("stpatl0001", 5001)}


def test_reply_for_another_request_id_fails() -> None:
    problem = check_reply(ITEM, "_other", _reply(_permit()), {})
    assert problem and "not a well-formed decision" in problem


def test_reply_that_is_not_xml_fails() -> None:
    problem = check_reply(ITEM, "_q1", b"<html>busy</html>", {})
    assert problem and "not a well-formed decision" in problem


def test_reply_permit_for_banned_user_fails() -> None:
    banned = dict(ITEM, expect="Deny", pool=None)
    problem = check_reply(banned, "_q1", _reply(_permit()), {})
    assert problem and problem.startswith("Permit for a user expecting Deny")


def test_reply_account_from_wrong_pool_fails() -> None:
    problem = check_reply(ITEM, "_q1", _reply(_permit("stpcms0001")), {})
    assert problem and "not from pool stpatl" in problem


def test_reply_remapped_user_fails() -> None:
    seen = {DN: ("stpatl0001", 5001)}
    problem = check_reply(ITEM, "_q1", _reply(_permit("stpatl0002", 5002)), seen)
    assert problem and "earlier in this run to stpatl0001" in problem


def test_reply_bare_endpoint_checks_form_only() -> None:
    banned = dict(ITEM, expect="Deny", pool=None)
    assert check_reply(banned, "_q1", _reply(_permit()), {}, bare=True) is None


def _gridmapdir(tmp_path: os.PathLike[str], links: dict[str, str]) -> str:
    """Accounts a0001..a0003; ``links`` maps lease file -> account it is linked to."""
    path = os.path.join(tmp_path, "gridmapdir")
    os.makedirs(path)
    for account in ("a0001", "a0002", "a0003"):
        open(os.path.join(path, account), "w").close()
    for lease, account in links.items():
        os.link(os.path.join(path, account), os.path.join(path, lease))
    return path


ACCOUNTS = {"a0001", "a0002", "a0003"}


def test_audit_sound_gridmapdir_passes(tmp_path: os.PathLike[str]) -> None:
    path = _gridmapdir(tmp_path, {"%2fcn%3dx": "a0001", "%2fcn%3dy": "a0002"})
    report = AuditReport()
    lease_of = audit_gridmapdir(path, ACCOUNTS, report)
    assert report.ok and lease_of == {"%2fcn%3dx": "a0001", "%2fcn%3dy": "a0002"}
    assert (report.accounts, report.leases) == (3, 2)


def test_audit_account_with_two_leases_is_reported(tmp_path: os.PathLike[str]) -> None:
    path = _gridmapdir(tmp_path, {"%2fcn%3dx": "a0001", "%2fcn%3dy": "a0001"})
    report = AuditReport()
    audit_gridmapdir(path, ACCOUNTS, report)
    assert report.problems == ["account a0001 is linked to 2 leases"]


def test_audit_orphan_lease_is_reported(tmp_path: os.PathLike[str]) -> None:
    path = _gridmapdir(tmp_path, {})
    open(os.path.join(path, "%2fcn%3dz"), "w").close()
    report = AuditReport()
    audit_gridmapdir(path, ACCOUNTS, report)
    assert report.problems == ["lease %2fcn%3dz is linked to 0 pool accounts"]


def test_audit_permit_naming_another_account_is_reported() -> None:
    report = AuditReport()
    lines = [{"decision": "Permit", "dn": "/CN=x", "account": "a0002", "lease": "%2fcn%3dx"}]
    audit_permits(lines, {"%2fcn%3dx": "a0001"}, set(), report)
    assert report.problems == ["Permit for /CN=x names a0002, but lease %2fcn%3dx is linked "
                               "to a0001"]


def test_audit_permit_for_banned_user_is_reported() -> None:
    report = AuditReport()
    lines = [{"decision": "Permit", "dn": "/CN=b", "account": "a0001", "lease": "l"}]
    audit_permits(lines, {"l": "a0001"}, {"/CN=b"}, report)
    assert report.problems == ["banned user /CN=b was permitted as a0001"]


def test_audit_client_view_must_match_the_server_log() -> None:
    report = AuditReport()
    audit_observed({"/CN=x": ["a0003", 5003]}, {"/CN=x": "a0001"}, report)
    assert report.problems == ["client saw /CN=x mapped to a0003, the server logged a0001"]


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("newusers"),
                    reason="stress/run needs root to create its pool accounts")
def test_stress_run_end_to_end(tmp_path: os.PathLike[str]) -> None:
    """The one command: site, accounts, both servers, locust, audit, CSV and plot."""
    work = os.path.join(tmp_path, "work")
    run = subprocess.run(
        [os.path.join(ROOT, "stress", "run"), "--work", work, "--users", "24", "--clients",
         "4", "--duration", "4", "--warmup", "2", "--mode", "both"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    out = run.stdout + run.stderr
    assert run.returncode == 0, out
    assert "lease audit:" in out and "consistent" in out, out
    for label in ("bare keepalive", "scas keepalive", "bare handshake", "scas handshake"):
        line = next(x for x in out.splitlines() if x.startswith(label))
        assert line.endswith(" 0 errors") and "/s" in line, line
    results = os.path.join(work, "results")
    for name in ("keepalive_scas_stats.csv", "handshake_scas_stats_history.csv",
                 "server_resources.csv", "plot.png"):
        assert os.path.getsize(os.path.join(results, name)) > 0, name
    with open(os.path.join(results, "plot.png"), "rb") as fh:
        assert fh.read(8) == b"\x89PNG\r\n\x1a\n"
    leftover = subprocess.run(["getent", "passwd"], capture_output=True, text=True).stdout
    assert "stress pool account" not in leftover  # accounts removed after the run


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                    reason="stress.bench_http needs root to create its two pool accounts")
def test_pinned_http_bench_measures_four_modes_against_bare(tmp_path: Path) -> None:
    """The pinned mode: both servers on one core, the stdlib generator on the other, every
    reply a Permit for its own ID, with an ECDSA host key (the RSA one is the default);
    ``--profile`` leaves py-spy's stacks of the scas worker per mode."""
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs")
    run = subprocess.run(
        [sys.executable, "-m", "stress.bench_http", "--duration",
         "1", "--repeats", "1", "--clients", "2", "--fresh", "1200", "--server-key", "ec",
         "--json", "--profile", str(tmp_path)],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    figures = json.loads(run.stdout)
    assert set(figures["modes"]) == {"keepalive-repeat", "keepalive-fresh", "handshake-repeat",
                                     "handshake-fresh"}  # fmt: skip
    for mode, m in figures["modes"].items():
        assert m["errors"] == 0 and m["bare_per_s"] > 0 and m["scas_per_s"] > 0, (mode, m)
        assert 0 < m["ratio"] < 5, (mode, m)
    assert figures["gen_cpu"] != figures["srv_cpu"]
    stacks = sorted(p.name for p in tmp_path.iterdir())
    assert stacks == sorted(f"{mode}-1.txt" for mode in figures["modes"]), stacks
    assert "Pipeline.decide" in "".join(p.read_text() for p in tmp_path.iterdir())


@pytest.mark.slow
@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("useradd"),
                    reason="stress.bench_scale needs root to create its two pool accounts")
def test_scale_bench_runs_every_combination_and_leaves_passwd_alone() -> None:
    """Each (leases, passwd lines) pair is measured on a Permit; /etc/passwd is not touched."""
    with open("/etc/passwd", "rb") as fh:
        before = fh.read()
    run = subprocess.run(
        [sys.executable, "-m", "stress.bench_scale", "--leases", "10,500", "--passwd",
         "0,2000", "--queries", "20", "--repeats", "1", "--json"],
        capture_output=True, text=True, timeout=600, cwd=ROOT,
    )  # fmt: skip
    assert run.returncode == 0, run.stdout + run.stderr
    rows = json.loads(run.stdout)["rows"]
    assert [(r["leases"], r["passwd_lines"]) for r in rows] == [
        (10, 0), (500, 0), (10, 2000), (500, 2000)]  # fmt: skip
    assert all(r["warm_us"] > 0 for r in rows)
    with open("/etc/passwd", "rb") as fh:
        assert fh.read() == before


@pytest.mark.parametrize("argv,reason", [
    (["--modes", "keepalive-repeat,nope"], "--modes: choose from keepalive-repeat,"),
    (["--duration", "0"], "need a positive duration"),
    (["--fresh", "1", "--clients", "4"], "need a positive duration, a repeat, a client"),
    (["--profile", "/etc/passwd/x"], "--profile: cannot make /etc/passwd/x: Not a directory"),
])  # fmt: skip
def test_pinned_http_bench_refuses_bad_arguments(argv: list[str], reason: str) -> None:
    """Refused before anything is built: exit 2 and argparse's one-line reason."""
    run = subprocess.run([sys.executable, "-m", "stress.bench_http", *argv],
                         capture_output=True, text=True, timeout=60, cwd=ROOT)  # fmt: skip
    assert run.returncode == 2 and reason in run.stderr and run.stdout == ""
