"""The single-node Slurm cluster of testkit/batch.py, with real munged, slurmctld and slurmd.

Jobs are submitted by a throw-away unprivileged account, as the CE will submit them with
``glexec sbatch`` under a pool account: the job must run as that account, ``scancel`` must
end its processes, and its exit code must come back without an accounting database.
"""

from __future__ import annotations

import os
import pwd
import shutil
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from helper_fixtures import throwaway_accounts

from testkit.batch import Cluster, missing_programs, slurm_cluster

pytestmark = [pytest.mark.root, pytest.mark.slow]

USER = "sbharn01"


def _missing() -> str:
    if os.geteuid() != 0:
        return "needs root: runs slurmd and creates a throw-away account"
    gone = missing_programs()
    if gone:
        return f"not installed: {', '.join(gone)} (packages slurmctld slurmd slurm-client munge)"
    return ""


@pytest.fixture(scope="module")
def base() -> Iterator[Path]:
    """A directory every user can traverse (pytest's own tmp dirs are 0700 root)."""
    path = Path(tempfile.mkdtemp(prefix="slurm-harness-", dir="/tmp"))
    os.chmod(path, 0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def cluster(base: Path) -> Iterator[Cluster]:
    reason = _missing()
    if reason:
        pytest.skip(reason)
    with throwaway_accounts([USER]) as problem:
        if problem:
            pytest.skip(problem)
        with slurm_cluster(base / "cluster") as running:
            yield running


@pytest.fixture
def workdir(cluster: Cluster, request: pytest.FixtureRequest) -> Path:
    """A job directory owned by the submitting user."""
    pw = pwd.getpwnam(USER)
    path = cluster.base_dir / "jobs" / request.node.name
    path.mkdir(parents=True)
    os.chown(path, pw.pw_uid, pw.pw_gid)
    return path


def _procs(uid: int, comm: str) -> list[int]:
    """Pids of processes named ``comm`` whose real uid is ``uid``."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/status") as fh:
                status = dict(line.split(":", 1) for line in fh if ":" in line)
        except OSError:
            continue
        if status.get("Name", "").strip() == comm and int(status["Uid"].split()[0]) == uid:
            found.append(int(entry))
    return found


def _until(check: Callable[[], object], timeout: float = 15.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(0.2)
    return bool(check())


def test_job_runs_as_the_submitting_user(cluster: Cluster, workdir: Path) -> None:
    """sbatch by an unprivileged user: slurmd runs the job under that user's uid and gid."""
    pw = pwd.getpwnam(USER)
    job = cluster.sbatch(["--wrap", "id", "-o", str(workdir / "%j.out")], user=USER, cwd=workdir)
    info = cluster.wait(job)
    assert (info.state, info.exit_code, info.user) == ("COMPLETED", 0, USER)
    out = (workdir / f"{job}.out").read_text()
    assert out.startswith(f"uid={pw.pw_uid}({USER}) gid={pw.pw_gid}(")
    assert (workdir / f"{job}.out").stat().st_uid == pw.pw_uid


def test_scancel_ends_the_job_and_its_processes(cluster: Cluster, workdir: Path) -> None:
    """The user cancels a running job: state CANCELLED and no process of the job survives."""
    uid = pwd.getpwnam(USER).pw_uid
    job = cluster.sbatch(["--wrap", "sleep 300", "-o", "/dev/null"], user=USER, cwd=workdir)
    cluster.wait(job, states=frozenset({"RUNNING"}))
    assert _until(lambda: _procs(uid, "sleep")), "the job's sleep never started"
    assert cluster.squeue(user=USER) == [job]
    cluster.scancel(job, user=USER)
    assert cluster.wait(job).state == "CANCELLED"
    assert _until(lambda: not _procs(uid, "sleep")), f"left running: {_procs(uid, 'sleep')}"
    assert cluster.squeue(user=USER) == []


def test_exit_code_comes_back(cluster: Cluster, workdir: Path) -> None:
    """A job exiting 3 ends FAILED with exit code 3, read from scontrol (no accounting DB)."""
    job = cluster.sbatch(["--wrap", "exit 3", "-o", "/dev/null"], user=USER, cwd=workdir)
    info = cluster.wait(job)
    assert (info.state, info.exit_code, info.signal) == ("FAILED", 3, 0)
    # What status reports once slurmctld has purged the job (MinJobAge): the completion log.
    assert _until(lambda: cluster.completion_record(job), timeout=5)
    record = cluster.completion_record(job)
    assert record is not None
    assert (record.state, record.exit_code, record.user) == ("FAILED", 3, USER)


def test_another_user_cannot_cancel_the_job(cluster: Cluster, workdir: Path) -> None:
    """Slurm authenticates the caller through munge: nobody cancels another user's job."""
    job = cluster.sbatch(["--wrap", "sleep 60", "-o", "/dev/null"], user=USER, cwd=workdir)
    cluster.wait(job, states=frozenset({"RUNNING"}))
    res = cluster.run(["scancel", job], user="nobody", check=False, cwd="/")
    assert res.returncode != 0
    assert "Access/permission denied" in res.stderr
    assert cluster.job(job).state == "RUNNING"  # type: ignore[union-attr]
    cluster.scancel(job)
    assert cluster.wait(job).state == "CANCELLED"


def _using(directory: Path) -> list[int]:
    """Pids of processes whose cwd or an open file lies under ``directory``."""
    prefix, found = f"{directory}/", []
    for entry in filter(str.isdigit, os.listdir("/proc")):
        try:
            fds = [f"/proc/{entry}/fd/{fd}" for fd in os.listdir(f"/proc/{entry}/fd")]
            links = [os.readlink(p) for p in (f"/proc/{entry}/cwd", *fds)]
        except OSError:
            continue
        if any(link.startswith(prefix) for link in links):
            found.append(int(entry))
    return found


def test_stop_leaves_no_process_behind(base: Path, cluster: Cluster) -> None:
    """stop() with a job still running: no daemon, slurmstepd or job process remains."""
    uid = pwd.getpwnam(USER).pw_uid
    work = base / "second" / "jobs"
    with slurm_cluster(base / "second") as second:
        work.mkdir()
        os.chown(work, uid, -1)
        job = second.sbatch(["--wrap", "sleep 301", "-o", "/dev/null"], user=USER, cwd=work)
        second.wait(job, states=frozenset({"RUNNING"}))
        daemons = second.daemon_pids
        assert len(daemons) == 3
        assert _until(lambda: _procs(uid, "sleep"))
        assert len(_using(base / "second")) > 3  # the daemons, slurmstepd and the job
    assert [pid for pid in daemons if os.path.exists(f"/proc/{pid}")] == []
    assert _using(base / "second") == []
    assert _until(lambda: not _procs(uid, "sleep"), timeout=5)
    assert cluster.squeue() == []  # the first cluster never saw the second's job
