"""Run one payload through glexec and collect what it left.

``glexec --status-fd K --workdir DIR [--env NAME=VALUE]... -- COMMAND...`` with the owner's
proxy as ``GLEXEC_CLIENT_CERT`` and the pilot's own as ``X509_USER_PROXY``:

- the status record comes back on a pipe (nothing on disk), so 204 and 126 are unambiguous;
- the work directory is handed over by glexec (created by the setuid helper, owned by the
  target with the pilot's group, mode 2770): the payload writes there, the pilot reads the
  files afterwards (regular files only, never following a link) and removes the directory;
- the payload's stdout and stderr go to files in the pilot's private directory;
- the target gets its own copy of the proxy (``GLEXEC_TARGET_PROXY``) in a sticky directory;
  the helper removes it when the payload ends.

The payload stays in the pilot's process tree (glexec execs the helper, which forks the
payload), so the batch system tracks it. To stop it the pilot signals glexec, which forwards
the signal; after ``grace`` seconds it is killed, and the helper's ``PR_SET_PDEATHSIG`` takes
the payload with it.
"""

from __future__ import annotations

import os
import signal
import subprocess
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from pilot.outcome import RETRY, Outcome, from_glexec, parse_status
from pilot.queue import Payload
from safetext import one_line

MAX_OUTPUT = 64 * 1024  # bytes of stdout, stderr and each result file reported back
MAX_FILES = 32


@dataclass(frozen=True)
class GlexecSetup:
    command: Sequence[str] = ("glexec",)
    target_proxy_dir: str | None = "/tmp"  # None: the payload gets no proxy copy
    grace: float = 3.0


@dataclass
class Result:
    outcome: Outcome
    stdout: str = ""
    stderr: str = ""
    files: dict[str, str] = field(default_factory=dict)
    leftovers: list[str] = field(default_factory=list)


def _tail(path: Path) -> str:
    try:
        with open(path, "rb") as fh:
            fh.seek(max(0, os.fstat(fh.fileno()).st_size - MAX_OUTPUT))
            return fh.read(MAX_OUTPUT).decode("utf-8", "replace")
    except OSError:
        return ""


def glexec_argv(setup: GlexecSetup, payload: Payload, workdir: Path, status_fd: int) -> list[str]:
    argv = [*setup.command, "--status-fd", str(status_fd), "--workdir", str(workdir)]
    for name, value in payload.env.items():
        argv += ["--env", f"{name}={value}"]
    return [*argv, "--", *payload.command]


def glexec_env(base: Mapping[str, str], proxy: Path, target: str | None) -> dict[str, str]:
    drop = ("GLEXEC_SOURCE_PROXY", "GLEXEC_TARGET_PROXY")
    env = {k: v for k, v in base.items() if k not in drop}
    env["GLEXEC_CLIENT_CERT"] = str(proxy)
    if target is not None:
        env["GLEXEC_TARGET_PROXY"] = target
    return env


def stop(proc: subprocess.Popen[bytes], grace: float) -> None:
    """SIGTERM to glexec (forwarded to the payload), then SIGKILL after ``grace`` seconds."""
    if proc.poll() is not None:
        return
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def run_payload(payload: Payload, proxy: Path, work: Path, n: int, setup: GlexecSetup, *,
                env: Mapping[str, str], timeout: float | None) -> Result:  # fmt: skip
    """Run ``payload`` as its owner, stopping it after ``timeout`` seconds."""
    workdir, logs = work / f"job-{n}", work / f"out-{n}"
    logs.mkdir(mode=0o700)
    target = None
    if setup.target_proxy_dir:
        target = os.path.join(setup.target_proxy_dir, f"x509up_pilot{os.getpid()}_{n}")
    rfd, wfd = os.pipe()
    try:
        code, stopped = _spawn(payload, proxy, workdir, logs, setup, env, target, wfd,
                               timeout)  # fmt: skip
        os.set_blocking(rfd, False)  # glexec is gone; a payload's orphan may hold the pipe
        record = parse_status(_drain(rfd))
    finally:
        os.close(rfd)
        os.close(wfd)
    outcome = from_glexec(code, record)
    if stopped:
        outcome = Outcome(RETRY, f"stopped: the pilot's budget ran out ({outcome.reason})",
                          code, signal=outcome.signal, phase=outcome.phase)  # fmt: skip
    result = Result(outcome, _tail(logs / "stdout"), _tail(logs / "stderr"))
    result.files = collect(workdir)
    result.leftovers = remove_tree(workdir) + remove_tree(logs)
    if target and os.path.lexists(target):
        result.leftovers.append(f"{target} (the target's proxy copy; the pilot cannot remove it)")
    return result


def _spawn(payload: Payload, proxy: Path, workdir: Path, logs: Path, setup: GlexecSetup,
           env: Mapping[str, str], target: str | None, wfd: int,
           timeout: float | None) -> tuple[int, bool]:  # fmt: skip
    """Start glexec, wait (stopping it at ``timeout``); return (exit status, stopped)."""
    stdin = subprocess.DEVNULL
    if payload.stdin is not None:
        (logs / "stdin").write_text(payload.stdin)
    with open(logs / "stdout", "wb") as out, open(logs / "stderr", "wb") as err:
        stdin_file = open(logs / "stdin", "rb") if payload.stdin is not None else None
        try:
            proc = subprocess.Popen(glexec_argv(setup, payload, workdir, wfd),
                                    env=glexec_env(env, proxy, target),
                                    stdin=stdin_file or stdin, stdout=out, stderr=err,
                                    pass_fds=(wfd,), cwd=logs)  # fmt: skip
        finally:
            if stdin_file is not None:
                stdin_file.close()
    try:
        try:
            return proc.wait(timeout), False
        except subprocess.TimeoutExpired:
            stop(proc, setup.grace)
            return proc.wait(), True
    except BaseException:  # the pilot is being terminated (even mid-stop): stop the payload
        stop(proc, setup.grace)
        raise


def _drain(fd: int) -> str:
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace")


def collect(workdir: Path) -> dict[str, str]:
    """The regular files at the top of the work directory (links never followed), as text."""
    files: dict[str, str] = {}
    try:
        entries = sorted(os.scandir(workdir), key=lambda e: e.name)
    except OSError:
        return files
    for entry in entries[:MAX_FILES]:
        if not entry.is_file(follow_symlinks=False):
            continue
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError as exc:
            files[entry.name] = f"(unreadable: {exc.strerror})"
            continue
        with os.fdopen(fd, "rb") as fh:
            files[entry.name] = fh.read(MAX_OUTPUT).decode("utf-8", "replace")
    return files


def remove_tree(top: Path) -> list[str]:
    """Remove ``top`` bottom-up without following links; what could not be removed."""
    left: list[str] = []
    if not os.path.lexists(top):
        return left
    for root, dirs, names in os.walk(top, topdown=False):
        for name in names + [d for d in dirs if os.path.islink(os.path.join(root, d))]:
            _remove(os.path.join(root, name), os.unlink, left)
        for name in dirs:
            if not os.path.islink(os.path.join(root, name)):
                _remove(os.path.join(root, name), os.rmdir, left)
    _remove(str(top), os.rmdir, left)
    return left


def _remove(path: str, how: Callable[[str], None], left: list[str]) -> None:
    try:
        how(path)
    except FileNotFoundError:
        pass
    except OSError as exc:
        left.append(f"{one_line(path)} ({exc.strerror})")
