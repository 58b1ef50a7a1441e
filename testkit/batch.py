"""A single-node Slurm cluster (slurmctld + slurmd + munged) on loopback, for tests and demos.

    with slurm_cluster(base_dir) as cluster:        # as root
        job = cluster.sbatch(["--wrap", "id"], user="pool001", cwd=workdir)
        info = cluster.wait(job)                    # JobInfo(state="COMPLETED", exit_code=0)

Everything lives under ``base_dir``: the munge key and socket, slurm.conf, the state and spool
directories, the daemons' logs and a job-completion log. The daemons run in the foreground as
children of this process, on free loopback ports, and ``stop()`` ends every job and every daemon
(slurmstepd included), so nothing outlives the cluster. There is no accounting database:
job state comes from ``scontrol show job`` while slurmctld still holds the record
(``MinJobAge``), then from the ``jobcomp/filetxt`` log.

``base_dir`` must be traversable by other users (each parent has the ``o+x`` bit), because
unprivileged users' commands read slurm.conf and talk to munged there. README says what a
real site changes (cgroup tracking, a slurm SlurmUser, slurmdbd, the shared munge key).
"""

from __future__ import annotations

import os
import pwd
import re
import shlex
import signal
import socket
import subprocess
import time
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

__all__ = [
    "FINAL_STATES", "BatchError", "Cluster", "ClusterStartError", "JobInfo", "free_port",
    "missing_programs", "slurm_cluster",
]  # fmt: skip

PROGRAMS = ("munged", "slurmctld", "slurmd", "sbatch", "squeue", "scancel", "scontrol", "sinfo")
FINAL_STATES = frozenset({
    "COMPLETED", "CANCELLED", "FAILED", "TIMEOUT", "NODE_FAIL", "PREEMPTED", "BOOT_FAIL",
    "DEADLINE", "OUT_OF_MEMORY",
})  # fmt: skip
PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"


class BatchError(Exception):
    """A Slurm command failed or a job did not reach the awaited state."""


class ClusterStartError(BatchError):
    """The daemons did not come up; the message carries the log tails."""


@dataclass(frozen=True)
class JobInfo:
    """One job as slurmctld (or the completion log) reports it."""

    job_id: str
    state: str
    exit_code: int | None
    signal: int | None
    user: str
    fields: Mapping[str, str] = field(repr=False)

    @property
    def final(self) -> bool:
        return self.state in FINAL_STATES


def free_port() -> int:
    """A loopback TCP port free right now (the daemon that gets it binds it moments later)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def missing_programs(programs: Sequence[str] = PROGRAMS) -> list[str]:
    """The programs of ``programs`` not found on PATH (with the sbin directories added)."""
    return [p for p in programs if not _which(p)]


def _which(program: str) -> str | None:
    for directory in PATH.split(":"):
        candidate = os.path.join(directory, program)
        if os.access(candidate, os.X_OK):
            return candidate
    return None


def tail(path: str | os.PathLike[str], lines: int = 15) -> str:
    """The last ``lines`` lines of a log file, or a note that it does not exist."""
    try:
        with open(path, errors="replace") as fh:
            return "".join(fh.readlines()[-lines:])
    except OSError as exc:
        return f"({exc.strerror})\n"


def _world_traversable(path: Path) -> bool:
    return all(os.stat(p).st_mode & 0o001 for p in [path, *path.parents])


def _parse_fields(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value two`` (``scontrol -o`` / jobcomp lines) -> dict.

    A value runs up to the next `` Key=``, so values with spaces (e.g. Command) survive.
    """
    pairs = re.findall(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s[A-Za-z][\w:/]*=|$)", line.strip())
    return dict(pairs)


def _job_info(fields: Mapping[str, str]) -> JobInfo:
    state = (fields.get("JobState") or "UNKNOWN").split()[0]
    code, _, sig = fields.get("ExitCode", "").partition(":")
    user = fields.get("UserId", "").split("(")[0]
    return JobInfo(
        job_id=fields.get("JobId", ""), state=state,
        exit_code=int(code) if code.isdigit() else None,
        signal=int(sig) if sig.isdigit() else None, user=user, fields=dict(fields),
    )  # fmt: skip


class _Daemon:
    """A foreground daemon in its own session, stdout+stderr appended to a log file."""

    def __init__(self, name: str, argv: Sequence[str], log: Path, env: Mapping[str, str],
                 cwd: Path) -> None:  # fmt: skip
        self.name, self.log = name, log
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                list(argv), stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                env=dict(env), cwd=cwd, start_new_session=True,
            )  # fmt: skip

    def check_alive(self) -> None:
        if self.proc.poll() is not None:
            raise ClusterStartError(
                f"{self.name} exited with {self.proc.returncode}; log {self.log}:\n"
                + tail(self.log)
            )

    def stop(self, grace: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)


class Cluster:
    """A running single-node cluster; build it with :func:`slurm_cluster`."""

    def __init__(self, base_dir: str | os.PathLike[str], *, partition: str = "debug",
                 cluster_name: str = "scastest") -> None:  # fmt: skip
        self.base_dir = Path(base_dir).resolve()
        self.partition = partition
        self.cluster_name = cluster_name
        self.node = socket.gethostname().split(".")[0]
        self.conf_path = self.base_dir / "etc" / "slurm.conf"
        self.munge_socket = self.base_dir / "munge" / "munge.socket"
        self.jobcomp_log = self.base_dir / "log" / "jobcomp.log"
        self.ctld_port = free_port()
        self.slurmd_port = next(p for p in iter(free_port, 0) if p != self.ctld_port)
        self.env: dict[str, str] = {"PATH": PATH, "LANG": "C", "SLURM_CONF": str(self.conf_path)}
        self._daemons: list[_Daemon] = []

    # -- start and stop ----------------------------------------------------------------

    def start(self, timeout: float = 60.0) -> None:
        """Write the configuration, start munged, slurmctld and slurmd; wait for an idle node."""
        self._prepare_dirs()
        self._start_munged()
        self._write_conf()
        conf = str(self.conf_path)
        self._daemons.append(self._spawn("slurmctld", ["slurmctld", "-D", "-i", "-f", conf]))
        self._daemons.append(self._spawn("slurmd", ["slurmd", "-D", "-N", self.node, "-f", conf]))
        self._wait_idle(timeout)

    def _prepare_dirs(self) -> None:
        if os.geteuid() != 0:
            raise ClusterStartError("slurm_cluster needs root (slurmd runs jobs as their users)")
        missing = missing_programs()
        if missing:
            raise ClusterStartError(f"programs not installed: {', '.join(missing)}")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.base_dir, 0o755)
        if not _world_traversable(self.base_dir):
            raise ClusterStartError(f"{self.base_dir}: not traversable by other users")
        for sub, mode in (("etc", 0o755), ("munge", 0o755), ("log", 0o755),
                          ("state", 0o700), ("spool", 0o755)):  # fmt: skip
            path = self.base_dir / sub
            path.mkdir(exist_ok=True)
            os.chmod(path, mode)
        (self.base_dir / "spool" / f"slurmd.{self.node}").mkdir(exist_ok=True)

    def _start_munged(self) -> None:
        """munged as root with its own key (0400 root) and socket, in the foreground."""
        key = self.base_dir / "munge" / "munge.key"
        if not key.exists():
            fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
            with os.fdopen(fd, "wb") as fh:
                fh.write(os.urandom(1024))
        argv = ["munged", "-F", f"--key-file={key}", f"--socket={self.munge_socket}",
                f"--pid-file={self.base_dir / 'munge' / 'munged.pid'}",
                f"--seed-file={self.base_dir / 'munge' / 'munged.seed'}",
                "--num-threads=4"]  # fmt: skip
        daemon = self._spawn("munged", argv)
        self._daemons.append(daemon)
        deadline = time.monotonic() + 10
        while not self.munge_socket.exists():
            daemon.check_alive()
            if time.monotonic() > deadline:
                raise ClusterStartError("munged made no socket in 10 s:\n" + tail(daemon.log))
            time.sleep(0.05)

    def _node_line(self) -> str:
        """This host as ``slurmd -C`` sees it (real CPUs, sockets, memory), named ``self.node``."""
        out = subprocess.run(["slurmd", "-C"], capture_output=True, text=True, env=self.env,
                             timeout=30).stdout  # fmt: skip
        first = next((ln for ln in out.splitlines() if ln.startswith("NodeName=")), "")
        hw = {k: v for k, v in _parse_fields(first).items() if k != "NodeName"}
        if "CPUs" not in hw:
            hw = {"CPUs": str(os.cpu_count() or 1)}
        hw_text = " ".join(f"{k}={v}" for k, v in hw.items())
        return (f"NodeName={self.node} NodeHostname={self.node} NodeAddr=127.0.0.1 "
                f"{hw_text} State=UNKNOWN")  # fmt: skip

    def _write_conf(self) -> None:
        b, log = self.base_dir, self.base_dir / "log"
        text = f"""\
# written by testkit/batch.py: a throw-away single-node cluster on loopback
ClusterName={self.cluster_name}
SlurmctldHost=localhost
SlurmctldPort={self.ctld_port}
SlurmdPort={self.slurmd_port}
SlurmUser=root
SlurmdUser=root
AuthType=auth/munge
CredType=cred/munge
AuthInfo=socket={self.munge_socket}
StateSaveLocation={b / "state"}
SlurmdSpoolDir={b / "spool"}/slurmd.%n
SlurmctldPidFile={b / "state"}/slurmctld.pid
SlurmdPidFile={b / "spool"}/slurmd.%n.pid
SlurmctldLogFile={log / "slurmctld.log"}
SlurmdLogFile={log / "slurmd.log"}
SlurmctldDebug=info
SlurmdDebug=info
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={self.jobcomp_log}
MpiDefault=none
MailProg=/bin/true
SwitchType=switch/none
SchedulerType=sched/backfill
SchedulerParameters=batch_sched_delay=0
SelectType=select/cons_tres
SelectTypeParameters=CR_CPU
ReturnToService=2
MinJobAge=600
KillWait=5
SlurmdTimeout=60
InactiveLimit=0
{self._node_line()}
PartitionName={self.partition} Nodes={self.node} Default=YES MaxTime=INFINITE State=UP
"""
        self.conf_path.write_text(text)
        os.chmod(self.conf_path, 0o644)

    def _spawn(self, name: str, argv: list[str]) -> _Daemon:
        return _Daemon(name, argv, self.base_dir / "log" / f"{name}.out", self.env,
                       self.base_dir)  # fmt: skip

    def _wait_idle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        state = ""
        while time.monotonic() < deadline:
            for daemon in self._daemons:
                daemon.check_alive()
            res = self.run(["sinfo", "-h", "-N", "-n", self.node, "-o", "%t"], check=False)
            state = res.stdout.strip()
            if state == "idle":
                return
            time.sleep(0.2)
        raise ClusterStartError(f"node {self.node} not idle after {timeout:.0f} s "
                                f"(sinfo: {state!r})\n" + self.log_tails())  # fmt: skip

    @property
    def daemon_pids(self) -> list[int]:
        """Pids of munged, slurmctld and slurmd (the ones still running)."""
        return [d.proc.pid for d in self._daemons if d.proc.poll() is None]

    def log_tails(self) -> str:
        """The tails of every daemon log, for a failure message."""
        names = ("munged.out", "slurmctld.out", "slurmctld.log", "slurmd.out", "slurmd.log")
        return "".join(f"--- {n}\n{tail(self.base_dir / 'log' / n)}" for n in names)

    def stop(self) -> None:
        """Cancel every job, stop the daemons, and kill any slurmstepd or job process left."""
        if any(d.proc.poll() is None for d in self._daemons[1:]):
            self._cancel_all()
        for daemon in reversed(self._daemons):
            daemon.stop()
        self._kill_leftovers()
        self._daemons.clear()

    def _cancel_all(self, timeout: float = 20.0) -> None:
        jobs = self.squeue()
        if jobs:
            self.run(["scancel", *jobs], check=False)
        deadline = time.monotonic() + timeout
        prefix = f"{self.base_dir}/"
        while (jobs or _our_stepds(prefix)) and time.monotonic() < deadline:
            time.sleep(0.2)
            jobs = self.squeue()

    def _kill_leftovers(self) -> None:
        """slurmstepd leaves slurmd's process tree; find ours by cwd or open files in base_dir."""
        for _ in range(5):
            pids = _our_stepds(f"{self.base_dir}/")
            if not pids:
                return
            for pid in pids:
                _kill_tree(pid)
            time.sleep(0.2)

    # -- commands and job state --------------------------------------------------------

    def run(self, cmd: Sequence[str], *, user: str | None = None, check: bool = True,
            cwd: str | os.PathLike[str] | None = None, timeout: float = 60.0,
            env: Mapping[str, str] | None = None) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """Run a client command with the cluster's environment, as root or as ``user``."""
        full_env = {**self.env, **(env or {})}
        uid = gid = groups = None
        if user is not None:
            pw = pwd.getpwnam(user)
            full_env.update(USER=user, LOGNAME=user, HOME=pw.pw_dir)
            uid, gid, groups = pw.pw_uid, pw.pw_gid, os.getgrouplist(user, pw.pw_gid)
        res = subprocess.run(list(cmd), capture_output=True, text=True, env=full_env,
                             cwd=cwd or self.base_dir, timeout=timeout, user=uid, group=gid,
                             extra_groups=groups)  # fmt: skip
        if check and res.returncode != 0:
            raise BatchError(f"{shlex.join(cmd)} (as {user or 'root'}) exited "
                             f"{res.returncode}: {res.stderr.strip()}")  # fmt: skip
        return res

    def sbatch(self, args: Sequence[str], *, user: str | None = None,
               cwd: str | os.PathLike[str] | None = None) -> str:  # fmt: skip
        """Submit with ``sbatch --parsable ARGS``; return the job id."""
        res = self.run(["sbatch", "--parsable", *args], user=user, cwd=cwd)
        job_id = res.stdout.strip().split(";")[0]
        if not job_id.isdigit():
            raise BatchError(f"sbatch printed no job id: {res.stdout!r} {res.stderr!r}")
        return job_id

    def scancel(self, job_id: str, *, user: str | None = None) -> None:
        self.run(["scancel", job_id], user=user)

    def squeue(self, *, user: str | None = None, ended_too: bool = False) -> list[str]:
        """Ids of the jobs slurmctld still has pending or running (of ``user`` if given);
        ``ended_too``: also those that ended and slurmctld still remembers."""
        cmd = ["squeue", "-h", "-o", "%i"] + (["-u", user] if user else [])
        cmd += ["-t", "all"] if ended_too else []
        return self.run(cmd, check=False).stdout.split()

    def job(self, job_id: str) -> JobInfo | None:
        """The job from ``scontrol show job``, else from the completion log, else None."""
        res = self.run(["scontrol", "-o", "show", "job", job_id], check=False)
        if res.returncode == 0 and res.stdout.strip():
            return _job_info(_parse_fields(res.stdout.splitlines()[0]))
        return self.completion_record(job_id)

    def completion_record(self, job_id: str) -> JobInfo | None:
        """The job's line in the jobcomp/filetxt log (written when it ends), or None."""
        try:
            lines = self.jobcomp_log.read_text(errors="replace").splitlines()
        except OSError:
            return None
        for line in reversed(lines):
            fields = _parse_fields(line)
            if fields.get("JobId") == job_id:
                return _job_info(fields)
        return None

    def wait(self, job_id: str, *, states: frozenset[str] = FINAL_STATES,
             timeout: float = 60.0) -> JobInfo:  # fmt: skip
        """Poll until the job is in one of ``states``; raise BatchError on timeout."""
        deadline = time.monotonic() + timeout
        info = None
        while time.monotonic() < deadline:
            info = self.job(job_id)
            if info is not None and info.state in states:
                return info
            time.sleep(0.2)
        seen = info.state if info else "unknown to slurmctld"
        raise BatchError(f"job {job_id} not in {sorted(states)} after {timeout:.0f} s: {seen}")


def _processes() -> dict[int, tuple[int, str]]:
    """pid -> (parent pid, comm) for every process, from /proc."""
    table = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as fh:
                    stat = fh.read()
            except OSError:
                continue
            comm = stat[stat.index("(") + 1 : stat.rindex(")")]
            table[int(entry)] = (int(stat[stat.rindex(")") + 1 :].split()[1]), comm)
    return table


def _ours(pid: int, prefix: str) -> bool:
    """True if the process's cwd or one of its open files lies under ``prefix``."""
    try:
        fds = [f"/proc/{pid}/fd/{fd}" for fd in os.listdir(f"/proc/{pid}/fd")]
        links = [f"/proc/{pid}/cwd", *fds]
        return any(os.readlink(link).startswith(prefix) for link in links)
    except OSError:
        return False


def _our_stepds(prefix: str) -> list[int]:
    return [pid for pid, (_, comm) in _processes().items()
            if comm == "slurmstepd" and _ours(pid, prefix)]  # fmt: skip


def _kill_tree(root: int) -> None:
    """SIGKILL a process and all its descendants (the job tasks under a slurmstepd)."""
    table = _processes()
    doomed, frontier = [root], [root]
    while frontier:
        parent = frontier.pop()
        kids = [pid for pid, (ppid, _) in table.items() if ppid == parent]
        doomed += kids
        frontier += kids
    for pid in doomed:
        try:
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass


@contextmanager
def slurm_cluster(base_dir: str | os.PathLike[str], *, timeout: float = 60.0,
                  partition: str = "debug") -> Iterator[Cluster]:  # fmt: skip
    """Start a cluster in ``base_dir`` (as root), yield it, and stop everything afterwards."""
    cluster = Cluster(base_dir, partition=partition)
    try:
        cluster.start(timeout)
        yield cluster
    finally:
        cluster.stop()


def wait_for_signal() -> None:
    """Block until SIGINT or SIGTERM (for the ``python -m`` demos)."""
    got = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, lambda num, _frame: got.append(num))
    while not got:
        signal.pause()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testkit.batch DIR``: run a cluster in DIR until Ctrl-C (root only)."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m testkit.batch", description=main.__doc__)
    parser.add_argument("dir", help="directory for the cluster (made 0755)")
    args = parser.parse_args(argv)
    try:
        with slurm_cluster(args.dir) as cluster:
            print(f"cluster {cluster.cluster_name}: node {cluster.node}, partition "
                  f"{cluster.partition}, slurmctld on 127.0.0.1:{cluster.ctld_port}\n"
                  f"export SLURM_CONF={cluster.conf_path}\nCtrl-C stops it.", flush=True)
            wait_for_signal()
    except BatchError as exc:
        print(f"testkit.batch: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
