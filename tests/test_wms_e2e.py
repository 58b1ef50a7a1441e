"""The job submission path end to end, on real parts (root only).

One site for the module (testkit/wms_site.py): a live scas-server (LCAS bans eve, LCMAPS
leases pool accounts by DN), the glexec front and the setuid helper installed setuid root,
a single-node Slurm cluster (munged, slurmctld, slurmd), and the CE (``wms-ce`` under
gunicorn, mutual TLS) running as its unprivileged service account. The user's side is the
installed ``wms`` command with the user's VOMS proxy.

Every refusal checks that nothing reached Slurm, nothing was staged and no job was recorded.
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import sqlite3
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from testkit.wms_site import CE_ACCOUNT, POOL, WmsSite, missing, wms_site

pytestmark = [pytest.mark.root, pytest.mark.slow]

ID_JOB = """[
  Executable = "/bin/sh";
  Arguments = "-c 'id -un; id -u; echo result > result.txt'";
  StdOutput = "std.out";
  StdError = "std.err";
  OutputSandbox = {"result.txt"};
  VirtualOrganisation = "dteam";
]
"""


@pytest.fixture(scope="module")
def site() -> Iterator[WmsSite]:
    reason = missing()
    if reason:
        pytest.skip(reason)
    base = tempfile.mkdtemp(prefix="wms-e2e-", dir="/tmp")
    try:
        with wms_site(base) as running:
            yield running
    finally:
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def work(site: WmsSite, request: pytest.FixtureRequest) -> Path:
    """A directory for this test's JDL and sandbox files."""
    path = site.base / "work" / request.node.name.replace("[", "-").replace("]", "")
    path.mkdir(parents=True)
    return path


def _jdl(work: Path, text: str, name: str = "job.jdl") -> str:
    (work / name).write_text(text)
    return str(work / name)


def _submit(site: WmsSite, jdl: str, user: str = "alice") -> dict[str, Any]:
    res = site.wms(["submit", jdl, "--json"], user=user)
    assert res.returncode == 0, (res.returncode, res.stderr, site.log_tail("ce"))
    return dict(json.loads(res.stdout))


def _status(site: WmsSite, job_id: str, user: str = "alice") -> dict[str, Any]:
    res = site.wms(["status", job_id, "--json"], user=user)
    assert res.returncode == 0, (res.returncode, res.stderr)
    return dict(json.loads(res.stdout))


def _wait(site: WmsSite, job_id: str, states: tuple[str, ...] = ("Done", "Aborted", "Cancelled"),
          user: str = "alice", timeout: float = 90) -> dict[str, Any]:  # fmt: skip
    deadline = time.monotonic() + timeout
    doc = _status(site, job_id, user)
    while doc["state"] not in states and time.monotonic() < deadline:
        time.sleep(0.5)
        doc = _status(site, job_id, user)
    assert doc["state"] in states, doc
    return doc


def _snapshot(site: WmsSite) -> tuple[set[str], set[str], int]:
    """What a refused submission must not add to: the jobs Slurm has seen (queued or
    ended), the job directories, the CE's job rows. A job that has just ended can be in
    neither the default queue listing nor yet the completion log, so every state is asked."""
    with sqlite3.connect(site.db_path) as db:
        rows = db.execute("SELECT count(*) FROM jobs").fetchone()[0]
    log = site.cluster.jobcomp_log
    ended = {f.split("=", 1)[1] for line in (log.read_text().splitlines() if log.exists() else [])
             for f in line.split() if f.startswith("JobId=")}  # fmt: skip
    return (set(site.cluster.squeue(ended_too=True)) | ended, set(os.listdir(site.job_dir)),
            rows)


def _refused(site: WmsSite, args: list[str], code: int, needle: str, user: str = "alice") -> str:
    before = _snapshot(site)
    res = site.wms(args, user=user)
    assert res.returncode == code, (res.returncode, res.stdout, res.stderr)
    assert needle in res.stderr, res.stderr
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    after = _snapshot(site)
    assert after[0] <= before[0], f"new Slurm jobs: {after[0] - before[0]}"
    assert after[1] <= before[1], f"new job directories: {after[1] - before[1]}"
    assert after[2] == before[2], "a job was recorded"
    return res.stderr


# -- the path works -------------------------------------------------------------------------


def test_two_users_run_under_different_pool_accounts(site: WmsSite, work: Path) -> None:
    jdl = _jdl(work, ID_JOB)
    jobs = {user: _submit(site, jdl, user) for user in ("alice", "bob")}
    outputs = {}
    for user, doc in jobs.items():
        assert doc["state"] in ("Ready", "Scheduled", "Running", "Done"), doc
        done = _wait(site, doc["id"], user=user)
        assert (done["state"], done["detail"], done["exit_code"]) == ("Done", "Success", 0)
        dest = work / f"out-{user}"
        res = site.wms(["output", doc["id"], "--dir", str(dest)], user=user)
        assert res.returncode == 0, res.stderr
        assert sorted(os.listdir(dest)) == ["result.txt", "std.err", "std.out"]
        assert (dest / "result.txt").read_text() == "result\n"
        outputs[user] = (dest / "std.out").read_text().split()
        assert _status(site, doc["id"], user)["state"] == "Cleared"
        assert not (site.job_dir / doc["id"].rsplit("/", 1)[1]).exists()
    (alice_name, alice_uid), (bob_name, bob_uid) = outputs["alice"], outputs["bob"]
    assert alice_name in POOL and bob_name in POOL and alice_name != bob_name
    assert int(alice_uid) == pwd.getpwnam(alice_name).pw_uid
    assert int(bob_uid) == pwd.getpwnam(bob_name).pw_uid
    assert jobs["alice"]["account"] == alice_name and jobs["bob"]["account"] == bob_name
    # queued by the mapped account itself (glexec sbatch), not by the CE's account
    info = site.cluster.job(jobs["bob"]["slurm_id"])
    assert info is not None and info.user == bob_name


def test_job_directory_is_handed_over_not_chowned(site: WmsSite, work: Path) -> None:
    """The running job's directory: the pool account's, group the CE's, mode 2770."""
    jdl = _jdl(work, '[ Executable = "/bin/sleep"; Arguments = "20"; ]')
    doc = _submit(site, jdl)
    try:
        _wait(site, doc["id"], ("Running",))
        st = (site.job_dir / doc["id"].rsplit("/", 1)[1]).stat()
        assert pwd.getpwuid(st.st_uid).pw_name == doc["account"]
        assert st.st_gid == site.ids[CE_ACCOUNT][1] and st.st_mode & 0o7777 == 0o2770
        assert os.stat(site.job_dir).st_mode & 0o777 == 0o711
    finally:
        site.wms(["cancel", doc["id"]])


def test_nonzero_exit_is_done_with_exit_code(site: WmsSite, work: Path) -> None:
    jdl = _jdl(work, '[ Executable = "/bin/sh"; Arguments = "-c \'exit 3\'"; ]')
    doc = _wait(site, _submit(site, jdl)["id"])
    assert (doc["state"], doc["detail"], doc["exit_code"]) == ("Done", "Exit Code 3", 3)
    text = site.wms(["status", doc["id"]]).stdout
    assert "Done (Exit Code 3)" in text


def test_cancel_reaches_slurm(site: WmsSite, work: Path) -> None:
    jdl = _jdl(work, '[ Executable = "/bin/sleep"; Arguments = "300"; ]')
    doc = _submit(site, jdl)
    _wait(site, doc["id"], ("Running",))
    res = site.wms(["cancel", doc["id"], "--json"])
    assert res.returncode == 0, res.stderr
    assert json.loads(res.stdout)["state"] == "Cancelled"
    info = site.cluster.wait(doc["slurm_id"], timeout=30)
    assert info.state == "CANCELLED"
    assert _status(site, doc["id"])["state"] == "Cancelled"
    again = site.wms(["cancel", doc["id"]])
    assert again.returncode == 1 and "nothing to cancel" in again.stderr


def test_another_user_cannot_see_or_fetch_the_output(site: WmsSite, work: Path) -> None:
    doc = _wait(site, _submit(site, _jdl(work, ID_JOB))["id"])
    for args in (["status", doc["id"]], ["output", doc["id"], "--dir", str(work / "bob")],
                 ["cancel", doc["id"]]):  # fmt: skip
        res = site.wms(args, user="bob")
        assert res.returncode == 1, (args, res.stdout, res.stderr)
        assert "of yours" in res.stderr
    assert not (work / "bob").exists()
    listed = json.loads(site.wms(["list", "--json"], user="bob").stdout)["jobs"]
    assert doc["id"] not in [j["id"] for j in listed]
    mine = site.wms(["output", doc["id"], "--dir", str(work / "alice")])
    assert mine.returncode == 0 and (work / "alice" / "std.out").exists()


def test_status_survives_a_ce_restart(site: WmsSite, work: Path) -> None:
    doc = _submit(site, _jdl(work, '[ Executable = "/bin/sleep"; Arguments = "6"; ]'))
    _wait(site, doc["id"], ("Running",))
    old = site.procs["ce"].pid
    site.stop("ce")
    site.start_ce()
    assert site.procs["ce"].pid != old
    assert _status(site, doc["id"])["state"] in ("Running", "Done")
    done = _wait(site, doc["id"])
    assert (done["state"], done["detail"], done["slurm_id"]) == ("Done", "Success",
                                                                 doc["slurm_id"])  # fmt: skip


# -- refusals: nothing reaches Slurm, nothing is staged ------------------------------------


def test_banned_user_is_refused_with_the_reason(site: WmsSite, work: Path) -> None:
    err = _refused(site, ["submit", _jdl(work, ID_JOB)], 1, "banned", user="eve")
    assert "not authorized" in err


def test_scas_down_is_retryable_and_leaves_nothing(site: WmsSite, work: Path) -> None:
    jdl = _jdl(work, ID_JOB)
    site.stop("scas")
    try:
        err = _refused(site, ["submit", jdl], 2, "retry later")
        assert "SCAS did not answer" in err
    finally:
        site.start_scas()
    assert site.wms(["submit", jdl]).returncode == 0  # and works again once SCAS is back


def test_malformed_jdl_names_file_and_line(site: WmsSite, work: Path) -> None:
    jdl = _jdl(work, '[\n  Executable = "/bin/true"\n  Arguments = "x";\n]\n')
    err = _refused(site, ["submit", jdl], 2, f"{jdl}:3:3: unexpected 'Arguments'")
    assert "missing ';'" in err


def test_job_type_other_than_normal_is_refused(site: WmsSite, work: Path) -> None:
    jdl = _jdl(work, '[ Executable = "/bin/true"; JobType = "MPICH"; ]')
    _refused(site, ["submit", jdl], 2, 'only "Normal" jobs are supported')


def test_missing_input_sandbox_file(site: WmsSite, work: Path) -> None:
    jdl = _jdl(work, '[ Executable = "run.sh"; InputSandbox = {"run.sh"}; ]')
    _refused(site, ["submit", jdl], 2, "'run.sh': no such file")


@pytest.mark.parametrize("kind", ["dotdot", "absolute", "symlink", "symlinked-dir"])
def test_escaping_sandbox_paths_are_refused(site: WmsSite, work: Path, kind: str) -> None:
    (work / "sub").mkdir()
    (work.parent / "outside.txt").write_text("secret\n")
    name = {"dotdot": "../outside.txt", "absolute": "/etc/passwd", "symlink": "link.txt",
            "symlinked-dir": "ln/outside.txt"}[kind]  # fmt: skip
    os.symlink(work.parent / "outside.txt", work / "link.txt")
    os.symlink(work.parent, work / "ln")
    jdl = _jdl(work, f'[ Executable = "/bin/true"; InputSandbox = {{"{name}"}}; ]')
    err = _refused(site, ["submit", jdl], 2, repr(name))
    assert any(w in err for w in ("relative path", "symbolic link", "not a directory")), err


def test_sandbox_over_the_limit_is_refused(site: WmsSite, work: Path) -> None:
    (work / "big.dat").write_bytes(b"\0" * (1024 * 1024 + 1))  # the site's limit: 1 MiB
    jdl = _jdl(work, '[ Executable = "/bin/true"; InputSandbox = {"big.dat"}; ]')
    _refused(site, ["submit", jdl], 2, "over the limit of 1048576 bytes")


def test_ce_itself_refuses_an_oversized_or_undeclared_upload(site: WmsSite) -> None:
    """A client that skips the checks: the CE refuses before asking SCAS, staging nothing."""
    import io
    import tarfile
    from datetime import UTC, datetime

    from wms.delegation import sign_request
    from wms.transport import CeClient, multipart

    client = CeClient(site.ce_url, site.proxies["alice"], site.pki.certdir)
    before = _snapshot(site)
    for extra, size, status in (("big.dat", 2 * 1024 * 1024, 413), ("extra.sh", 10, 400)):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w") as tar:
            info = tarfile.TarInfo(extra)
            info.size = size
            tar.addfile(info, io.BytesIO(b"\0" * size))
        offer = client.request("POST", "/delegations").json()
        with open(site.proxies["alice"], "rb") as fh:
            chain = sign_request(offer["request"].encode(), fh.read(), now=datetime.now(UTC))
        jdl = '[ Executable = "/bin/true"; InputSandbox = {"big.dat"}; ]'
        fields = {"jdl": jdl, "delegation": offer["id"], "chain": chain.decode()}
        body, ctype = multipart(fields, {"sandbox": buf.getvalue()})
        reply = client.request("POST", "/jobs", body, {"Content-Type": ctype})
        assert reply.status == status, reply.body
        client.close()
    after = _snapshot(site)
    assert after[0] <= before[0] and after[1] <= before[1] and after[2] == before[2]


def test_delegation_of_another_user_is_refused(site: WmsSite) -> None:
    """Bob cannot use a delegation alice's client opened, nor hand in a chain of his own
    for her key: the CE's key stays with the CE and the DN must match."""
    from datetime import UTC, datetime

    from wms.delegation import sign_request
    from wms.transport import CeClient, multipart

    alice = CeClient(site.ce_url, site.proxies["alice"], site.pki.certdir)
    bob = CeClient(site.ce_url, site.proxies["bob"], site.pki.certdir)
    offer = alice.request("POST", "/delegations").json()
    with open(site.proxies["bob"], "rb") as fh:
        chain = sign_request(offer["request"].encode(), fh.read(), now=datetime.now(UTC))
    body, ctype = multipart({"jdl": '[ Executable = "/bin/true"; ]', "delegation": offer["id"],
                             "chain": chain.decode()}, {"sandbox": b""})  # fmt: skip
    try:
        reply = bob.request("POST", "/jobs", body, {"Content-Type": ctype})
    finally:
        alice.close()
        bob.close()
    assert reply.status == 400 and b"no pending delegation" in reply.body
