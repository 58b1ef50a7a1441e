"""``pilot``: the reference multi-user pilot (a reference for pilot-framework developers).

Runs as a batch job under the pilot account, with the VO's pilot credential
(``/<vo>/Role=pilot``) in ``X509_USER_PROXY``. In a loop it claims a payload from the VO's
task queue, fetches the owner's proxy from MyProxy, runs the payload through glexec as the
owner's mapped account, reports the outcome and destroys the proxy; it stops when the queue
is empty or its wall-clock budget is spent.

Exit codes: 0 the queue is empty or the budget spent; 1 the pilot stopped because of a problem
of its own (MyProxy refuses its credential, the queue is gone, glexec is missing); 2 usage or
a bad start (no proxy, no queue URL); 128+N it was stopped by signal N (after cleaning up).
"""

from __future__ import annotations

import argparse
import os
import shlex
import socket
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from credentials.credential import load_proxy_file, read_voms_unverified
from credentials.errors import CredentialError
from pilot.loop import Reporter, Settings, run_worker
from pilot.outcome import RETRY
from pilot.proxy import Tools
from pilot.queue import QueueClient, QueueError
from pilot.run import GlexecSetup, remove_tree
from pilot.supervise import supervise
from safetext import one_line

USAGE, PROBLEM = 2, 1


class StartError(Exception):
    """The pilot cannot start: a bad option or environment (exit 2)."""


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="pilot", description=__doc__.split("\n\n")[1].replace("``", ""),
        epilog="environment: X509_USER_PROXY (the pilot's own proxy, required), "
               "X509_CERT_DIR, X509_VOMS_DIR; GLEXEC_CONFIG and the rest pass to glexec",
    )  # fmt: skip
    p.add_argument("--queue", required=True, metavar="URL", help="the task queue, http://HOST:PORT")
    p.add_argument("--budget", type=float, default=3600.0, metavar="S",
                   help="wall-clock seconds: no payload runs past it (default %(default)s)")
    p.add_argument("--work-dir", metavar="DIR", help="the pilot makes its private directory "
                   "here, and removes it at the end (default: $TMPDIR or /tmp)")
    p.add_argument("--glexec", default="glexec", metavar="CMD", help="glexec command line")
    p.add_argument("--target-proxy-dir", default="/tmp", metavar="DIR",
                   help="sticky directory for the payload's proxy copy; 'none': no copy")
    p.add_argument("--myproxy-logon", default="myproxy-logon", metavar="CMD")
    p.add_argument("--voms-proxy-init", default="voms-proxy-init", metavar="CMD")
    p.add_argument("--vomses", metavar="FILE",
                   help="VOMS servers, to add attributes a retrieved proxy lacks")
    p.add_argument("--retry-delay", type=float, default=60.0, metavar="S",
                   help="a payload put back (glexec 202) waits this long (default %(default)s)")
    p.add_argument("--grace", type=float, default=3.0, metavar="S",
                   help="SIGTERM to SIGKILL when stopping a payload (default %(default)s)")
    p.add_argument("--proxy-hours", type=int, default=12, metavar="H",
                   help="lifetime asked of MyProxy (default %(default)s)")
    p.add_argument("--pilot-id", metavar="ID", help="name given to the queue")
    p.add_argument("--json", action="store_true", help="one JSON object per line")
    return p


def _command(text: str, option: str) -> list[str]:
    argv = shlex.split(text)
    if not argv:
        raise StartError(f"{option}: empty command")
    return argv


def pilot_proxy(environ: os._Environ[str] | dict[str, str]) -> tuple[str, str]:
    """The pilot's own proxy and a warning ("" if none): it must load and be valid now."""
    path = environ.get("X509_USER_PROXY", "")
    if not path:
        raise StartError("X509_USER_PROXY is not set: the pilot needs its own proxy")
    try:
        cred = load_proxy_file(path)
    except CredentialError as exc:
        raise StartError(str(exc)) from None
    if cred.time_left() <= 0:
        raise StartError(f"{path}: the pilot's proxy has expired")
    fqans = [f for ac in read_voms_unverified(cred) for f in ac.fqans]
    warn = "" if any("/Role=pilot" in f for f in fqans) else (
        f"{path}: no /<vo>/Role=pilot attribute; MyProxy and SCAS will likely refuse")
    return os.path.abspath(path), warn


def setup(args: argparse.Namespace, environ: os._Environ[str] | dict[str, str]
          ) -> tuple[Settings, QueueClient, str]:  # fmt: skip
    """Settings, the queue client and a start-up warning, or StartError."""
    proxy, warn = pilot_proxy(environ)
    if args.budget <= 0 or args.grace < 0 or args.retry_delay < 0 or args.proxy_hours < 1:
        raise StartError("--budget and --proxy-hours must be positive, --grace and "
                         "--retry-delay not negative")  # fmt: skip
    target = None if args.target_proxy_dir == "none" else args.target_proxy_dir
    if target is not None and not (os.path.isabs(target) and os.path.isdir(target)):
        raise StartError(f"--target-proxy-dir {target}: not an absolute directory")
    parent = args.work_dir or environ.get("TMPDIR") or "/tmp"
    job = environ.get("SLURM_JOB_ID", "-")
    pid = args.pilot_id or f"{socket.gethostname()}:{job}:{os.getpid()}"
    try:
        queue = QueueClient(args.queue, pid)
        work = Path(tempfile.mkdtemp(prefix="pilot-", dir=parent))
    except (QueueError, OSError) as exc:
        raise StartError(str(exc)) from None
    tools = Tools(
        myproxy_logon=_command(args.myproxy_logon, "--myproxy-logon"),
        voms_proxy_init=_command(args.voms_proxy_init, "--voms-proxy-init"),
        certdir=environ.get("X509_CERT_DIR") or "/etc/grid-security/certificates",
        vomsdir=environ.get("X509_VOMS_DIR") or None, vomses=args.vomses,
    )  # fmt: skip
    glexec = GlexecSetup(_command(args.glexec, "--glexec"), target, args.grace)
    settings = Settings(work, proxy, tools, glexec, args.budget, args.retry_delay,
                        args.proxy_hours, dict(environ))  # fmt: skip
    return settings, queue, warn


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings, queue, warn = setup(args, os.environ)
    except StartError as exc:
        print(f"pilot: {one_line(exc)}", file=sys.stderr)
        return USAGE
    if warn:
        print(f"pilot: warning: {one_line(warn)}", file=sys.stderr)
    rep = Reporter(sys.stdout, args.json)
    start = time.monotonic()

    def lost(status: int, current: dict[str, str] | None, removed: list[str]) -> None:
        how = f"killed by signal {-status}" if status < 0 else f"ended with {status}"
        doc = {"event": "lost", "status": status, "removed": removed,
               "payload": current.get("id") if current else None}  # fmt: skip
        if current:
            reason = f"pilot loop {how} while running it"
            try:
                queue.report(current["id"], current["claim"], RETRY, reason=reason,
                             retry_after=settings.retry_delay)  # fmt: skip
            except (QueueError, KeyError) as exc:
                doc["report_error"] = one_line(exc)
        rep.event(doc, f"pilot: the loop {how}; removed {len(removed)} proxy file(s); "
                       f"payload {doc['payload']} put back")

    def waiting(left: dict[int, int]) -> None:
        rep.event({"event": "waiting", "processes": left},
                  f"pilot: waiting for {len(left)} process(es) the payloads left running")

    try:
        code = supervise(lambda: run_worker(settings, queue, rep), work=settings.work,
                         grace=settings.glexec.grace, wait_until=start + args.budget,
                         on_lost=lost, on_wait=waiting)  # fmt: skip
    finally:
        left = remove_tree(settings.work)
        if left:
            rep.event({"event": "leftovers", "paths": left},
                      f"pilot: could not remove: {'; '.join(left)}")
    return code if code >= 0 else PROBLEM
