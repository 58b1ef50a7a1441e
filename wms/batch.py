"""Slurm through glexec: stage and queue as the mapped account, cancel, read job states.

Staging and submission are one glexec call, so the job is queued by the mapped account and
the CE never needs to chown anything::

    tar -c SANDBOX | glexec --workdir JOB_DIR/ID /bin/sh -c 'tar -x && sbatch --parsable ...'

glexec's work-directory hand-over makes ``JOB_DIR/ID``: owned by the target account, group
the CE's group, mode 2770; the payload starts in it with umask 007. So the job's files are
group-readable by the CE (the output sandbox) and the CE can remove the directory after.
``JOB_DIR`` is the CE's own directory, mode 0711: slurmd enters the job's directory by path,
as the job's account, and nobody can list the other jobs' names.

The staging script prints a time stamp before ``tar -x`` and after it, so one call gives the
latency split: glexec (front, SCAS ticket, helper), staging, ``sbatch``.

Reading states needs no glexec: ``scontrol -o show job`` as the CE, then (once slurmctld has
forgotten the job) the job wrapper's exit record in the job's directory, the jobcomp log or
``sacct`` as configured.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import IO

from safetext import one_line
from wms.config import CeConfig
from wms.jdl import Job

__all__ = ["Batch", "BatchError", "Submitted", "job_script", "parse_fields"]

STAGE_SCRIPT = r"""umask 007
[ -n "$1" ] && export SLURM_CONF="$1"
name=$2; sbatch=$3; shift 3
echo "wms-t0 $(date +%s.%N)"
tar -x --no-same-owner -f - || { echo "staging failed: tar -x exited $?" >&2; exit 97; }
echo "wms-t1 $(date +%s.%N)"
exec "$sbatch" --parsable --job-name="$name" --chdir="$PWD" --output=.wms/slurm.out "$@" \
    .wms/job.sh
"""
CANCEL_SCRIPT = '[ -n "$1" ] && export SLURM_CONF="$1"; exec "$2" "$3"'
WRAPPER_DIR = ".wms"
EXIT_RECORD = f"{WRAPPER_DIR}/exit"
_FIELDS = re.compile(r"(?:^|\s)([A-Za-z][\w:/]*)=(.*?)(?=\s[A-Za-z][\w:/]*=|$)")
RETRYABLE, REFUSED, FAILED = "retryable", "refused", "failed"


class BatchError(Exception):
    """glexec or Slurm failed; ``kind`` is retryable (try again later), refused (glexec
    refused the mapping) or failed (anything else)."""

    def __init__(self, kind: str, message: str) -> None:
        self.kind, self.message = kind, one_line(message, 400)
        super().__init__(self.message)


@dataclass(frozen=True)
class Submitted:
    slurm_id: str
    glexec_s: float  # glexec front + its SCAS query + the helper, up to the script's start
    staging_s: float  # tar -x as the target
    sbatch_s: float


def parse_fields(line: str) -> dict[str, str]:
    """``Key=Value Key2=Value two`` (``scontrol -o``, jobcomp lines) -> dict."""
    return dict(_FIELDS.findall(line.strip()))


def job_script(job: Job) -> str:
    """The job wrapper: environment, the executable with its arguments and redirections,
    and an exit record (so the exit code survives slurmctld forgetting the job)."""
    exe = job.executable
    lines = ["#!/bin/sh", "# written by the wms CE; the job's own files are beside .wms/"]
    for name, value in job.environment:
        lines.append(f"export {name}={shlex.quote(value)}")
    if not exe.startswith("/"):
        exe = "./" + (exe[2:] if exe.startswith("./") else exe)
        lines.append(f"chmod u+x {shlex.quote(exe)}")
    command = " ".join(shlex.quote(a) for a in [exe, *shlex.split(job.arguments)])
    for op, target in (("<", job.std_input), (">", job.std_output), ("2>", job.std_error)):
        if target:
            command += f" {op} {shlex.quote(target)}"
    if not job.std_input:
        command += " < /dev/null"
    lines += [command, "rc=$?",
              f"echo $rc > {EXIT_RECORD}.tmp && mv -f {EXIT_RECORD}.tmp {EXIT_RECORD}",
              "exit $rc", ""]  # fmt: skip
    return "\n".join(lines)


class Batch:
    """The CE's hands on Slurm; ``run`` is injectable (the benchmark times it)."""

    def __init__(self, cfg: CeConfig,
                 run: Callable[..., subprocess.CompletedProcess[bytes]] = subprocess.run,
                 ) -> None:  # fmt: skip
        self.cfg = cfg
        self._run = run
        self.env = {"PATH": f"{cfg.slurm_bin}:/usr/bin:/bin", "LANG": "C",
                    "X509_USER_PROXY": cfg.glexec_credential, "X509_CERT_DIR": cfg.ca_dir,
                    "HOME": cfg.state_dir,
                    "XDG_RUNTIME_DIR": os.path.join(cfg.state_dir, "run")}  # fmt: skip
        if cfg.glexec_config:
            self.env["GLEXEC_CONFIG"] = cfg.glexec_config
        if cfg.slurm_conf:
            self.env["SLURM_CONF"] = cfg.slurm_conf

    def _tool(self, name: str) -> str:
        return os.path.join(self.cfg.slurm_bin, name)

    def _glexec(self, proxy: str, argv: Sequence[str], *, workdir: str | None = None,
                stdin: IO[bytes] | int | None = None,
                ) -> tuple[subprocess.CompletedProcess[bytes], dict[str, object]]:  # fmt: skip
        """Run ``glexec`` with the delegated proxy; (result, its status record)."""
        read, write = os.pipe()
        try:
            cmd = [*self.cfg.glexec_command, "--status-fd", str(write)]
            if workdir:
                cmd += ["--workdir", workdir]
            res = self._run(
                [*cmd, *argv], env={**self.env, "GLEXEC_CLIENT_CERT": proxy},
                stdin=stdin if stdin is not None else subprocess.DEVNULL,
                capture_output=True, pass_fds=(write,), cwd="/", timeout=300,
            )  # fmt: skip
            os.close(write)
            write = -1
            with os.fdopen(read, "rb") as fh:
                read = -1
                raw = fh.read(65536).decode("utf-8", "replace").strip()
        finally:
            for fd in (read, write):
                if fd >= 0:
                    os.close(fd)
        try:
            record = json.loads(raw.splitlines()[-1]) if raw else {}
        except ValueError:
            record = {"reason": raw}
        return res, record if isinstance(record, dict) else {}

    @staticmethod
    def _failure(res: subprocess.CompletedProcess[bytes], record: Mapping[str, object],
                 what: str) -> BatchError:  # fmt: skip
        err = res.stderr.decode("utf-8", "replace").strip().splitlines()
        reason = str(record.get("reason") or (err[-1] if err else f"exit {res.returncode}"))
        if record.get("phase") != "payload" and res.returncode == 202:
            return BatchError(RETRYABLE, f"glexec: {reason} (retry later)")
        if record.get("phase") != "payload" and res.returncode == 203:
            return BatchError(REFUSED, f"glexec refused: {reason}")
        if record.get("phase") == "payload" and err:
            reason = err[-1]
        return BatchError(FAILED, f"{what}: {reason}")

    def submit(self, proxy: str, workdir: str, job_name: str,
               feed: Callable[[IO[bytes]], None]) -> Submitted:  # fmt: skip
        """Stage (``feed`` writes the tar stream) and queue; BatchError on any failure."""
        argv = [
            "/bin/sh",
            "-c",
            STAGE_SCRIPT,
            "wms-stage",
            self.cfg.slurm_conf or "",
            job_name,
            self._tool("sbatch"),
            *self.cfg.sbatch_args,
        ]
        import tempfile

        with tempfile.TemporaryFile(dir=self.cfg.state_dir) as spool:
            feed(spool)
            spool.seek(0)
            started = time.time()
            res, record = self._glexec(proxy, argv, workdir=workdir, stdin=spool)
            ended = time.time()
        out = res.stdout.decode("utf-8", "replace").split()
        if res.returncode != 0:
            raise self._failure(res, record, "staging or sbatch failed")
        marks = {out[i]: float(out[i + 1]) for i in range(len(out) - 1)
                 if out[i] in ("wms-t0", "wms-t1")}  # fmt: skip
        slurm_id = out[-1].split(";")[0] if out else ""
        if not slurm_id.isdigit():
            raise BatchError(FAILED, f"sbatch printed no job id: {' '.join(out)[:200]!r}")
        t0, t1 = marks.get("wms-t0", started), marks.get("wms-t1", started)
        return Submitted(slurm_id, max(0.0, t0 - started), max(0.0, t1 - t0),
                         max(0.0, ended - t1))  # fmt: skip

    def cancel(self, proxy: str, slurm_id: str) -> None:
        """``glexec scancel ID``: the mapped account cancels its own job."""
        argv = ["/bin/sh", "-c", CANCEL_SCRIPT, "wms-cancel", self.cfg.slurm_conf or "",
                self._tool("scancel"), slurm_id]  # fmt: skip
        res, record = self._glexec(proxy, argv)
        if res.returncode != 0:
            raise self._failure(res, record, "scancel failed")

    def find_by_name(self, job_name: str) -> str | None:
        """The Slurm id of a job named ``job_name`` still known to slurmctld (recovery)."""
        res = self._slurm([self._tool("squeue"), "-h", "-n", job_name, "-o", "%i"])
        ids = res.split() if res else []
        return ids[0] if ids else None

    def _slurm(self, argv: list[str]) -> str | None:
        try:
            res = self._run(argv, env=self.env, capture_output=True, timeout=60, cwd="/")
        except (OSError, subprocess.TimeoutExpired):
            return None
        return res.stdout.decode("utf-8", "replace") if res.returncode == 0 else None

    def states(self) -> dict[str, dict[str, str]] | None:
        """Every job slurmctld still holds, by id; None if slurmctld did not answer."""
        out = self._slurm([self._tool("scontrol"), "-o", "show", "job"])
        if out is None:
            return None
        found = {}
        for line in out.splitlines():
            fields = parse_fields(line)
            if fields.get("JobId"):
                found[fields["JobId"]] = fields
        return found

    def finished(self, slurm_id: str) -> dict[str, str] | None:
        """The end record of a job slurmctld forgot: jobcomp log or sacct, as configured."""
        acc = self.cfg.accounting
        if acc == "sacct":
            out = self._slurm([self._tool("sacct"), "-X", "-n", "-P", "-j", slurm_id,
                               "--format=JobIDRaw,State,ExitCode"])  # fmt: skip
            for line in (out or "").splitlines():
                parts = line.split("|")
                if len(parts) == 3 and parts[0] == slurm_id:
                    return {"JobId": slurm_id, "JobState": parts[1], "ExitCode": parts[2]}
            return None
        if acc.startswith("/"):
            try:
                with open(acc, errors="replace") as fh:
                    lines = fh.readlines()
            except OSError:
                return None
            for line in reversed(lines):
                fields = parse_fields(line)
                if fields.get("JobId") == slurm_id:
                    return fields
        return None


def exit_record(workdir: str) -> int | None:
    """The executable's exit code as the wrapper recorded it, or None (not read through a
    symlink: the job owns the directory)."""
    try:
        fd = os.open(os.path.join(workdir, EXIT_RECORD), os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return None
    with os.fdopen(fd) as fh:
        text = fh.read(32).strip()
    return int(text) if text.isdigit() else None


def remove_workdir(path: str) -> bool:
    """Remove a job directory as the CE (group rwx on the job's directories); True if gone."""
    shutil.rmtree(path, ignore_errors=True)
    return not os.path.lexists(path)
