"""``wms``: submit a JDL job to a CE, follow it, fetch its output, cancel it.

    wms submit JOB.jdl --ce https://ce.example.org:8643   # prints the job ID (a URL)
    wms status ID            wms output ID [--dir D]
    wms cancel ID            wms list --ce URL

The user's proxy (``X509_USER_PROXY``) is the TLS identity; the job's credential reaches the
CE by delegation (the CE's key never leaves it, the user's never leaves here). ``--ce``
defaults to ``$WMS_CE``. ``--json`` everywhere.

Exit status: 0 ok; 1 refused (not authorized, not your job, not in a state for that);
2 error: bad input (JDL, sandbox, usage), the CE or SCAS unreachable, Slurm failing.
Input-sandbox paths are relative to the JDL file's directory; every problem with the JDL or
the sandbox is reported before anything is sent.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import sys
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

from safetext import one_line

__all__ = ["main"]

OK, REFUSED, ERROR = 0, 1, 2
PROG = "wms"


class CliError(Exception):
    """One line for stderr, and the exit code."""

    def __init__(self, message: str, code: int = ERROR) -> None:
        self.message, self.code = one_line(message, 800), code
        super().__init__(self.message)


def _client(base: str) -> Any:
    from wms.transport import CeClient, TransportError

    proxy = client_proxy()
    if not os.path.exists(proxy):
        raise CliError(f"no proxy: {proxy} does not exist (set X509_USER_PROXY)")
    try:
        return CeClient(base, proxy)
    except TransportError as exc:
        raise CliError(str(exc)) from None


def _split_id(job_id: str) -> tuple[str, str]:
    base, sep, token = job_id.rstrip("/").rpartition("/jobs/")
    if not sep or not base.startswith("https://") or not token.isalnum():
        raise CliError(f"{job_id!r}: not a job ID (https://CE/jobs/ID)")
    return base, token


def _call(client: Any, method: str, path: str, body: bytes | None = None,
          headers: dict[str, str] | None = None) -> Any:  # fmt: skip
    from wms.transport import TransportError

    try:
        reply = client.request(method, path, body, headers)
    except TransportError as exc:
        raise CliError(f"cannot reach the CE: {exc}") from None
    if reply.status < 300:
        return reply
    try:
        doc = reply.json()
    except TransportError as exc:
        raise CliError(str(exc)) from None
    message = str(doc.get("error") or f"HTTP {reply.status}")
    if reply.status == 503:
        raise CliError(f"{message} (retry later)")
    raise CliError(message, ERROR if reply.status in (400, 413) else REFUSED)


def _show(args: argparse.Namespace, doc: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(doc, sort_keys=True))
    else:
        print("\n".join(lines))


def _when(t: float | None) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%d %H:%M:%SZ") if t else "-"


def _job_lines(doc: dict[str, Any]) -> list[str]:
    lines = [f"{doc['id']}  {doc['status']}"]
    if doc.get("slurm_id"):
        lines.append(f"  Slurm job {doc['slurm_id']} as {doc.get('account')} "
                     f"(uid {doc.get('uid')})")  # fmt: skip
    lines.append(f"  submitted {_when(doc.get('submitted'))}, updated "
                 f"{_when(doc.get('updated'))}")  # fmt: skip
    for entry in doc.get("history", []):
        detail = f" ({entry['detail']})" if entry.get("detail") else ""
        lines.append(f"  {_when(entry['at'])}  {entry['state']}{detail}")
    return lines


# -- submit ------------------------------------------------------------------------------


def _read_jdl(path: str) -> Any:
    from wms.jdl import JdlError, parse_job

    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"{path}: {getattr(exc, 'strerror', None) or exc}") from None
    try:
        return text, parse_job(text, path)
    except JdlError as exc:
        raise CliError(str(exc)) from None


def _sandbox_tar(jdl_path: str, names: Sequence[str], limit: int) -> bytes:
    from wms.sandbox import SandboxError, collect_input, write_tar

    base = os.path.dirname(os.path.abspath(jdl_path))
    out = io.BytesIO()
    try:
        with collect_input(base, names, limit) as files:
            write_tar(out, files)
    except SandboxError as exc:
        raise CliError(f"{jdl_path}: {exc}") from None
    return out.getvalue()


def cmd_submit(args: argparse.Namespace) -> int:
    from wms.delegation import DelegationError, sign_request
    from wms.sandbox import DEFAULT_LIMIT
    from wms.transport import multipart

    text, job = _read_jdl(args.jdl)
    _sandbox_tar(args.jdl, job.input_sandbox, 1 << 62)  # paths first: nothing sent yet
    ce = args.ce or os.environ.get("WMS_CE")
    if not ce:
        raise CliError("no CE: give --ce URL (or set WMS_CE)")
    client = _client(ce)
    limits = _call(client, "GET", "/health").json()
    tar = _sandbox_tar(args.jdl, job.input_sandbox,
                       int(limits.get("max_input_sandbox") or DEFAULT_LIMIT))  # fmt: skip
    offer = _call(client, "POST", "/delegations").json()
    with open(client_proxy(), "rb") as fh:
        proxy_pem = fh.read()
    try:
        chain = sign_request(offer["request"].encode(), proxy_pem, now=datetime.now(UTC))
    except DelegationError as exc:
        raise CliError(f"delegation: {exc}") from None
    body, ctype = multipart(
        {"jdl": text, "jdl_name": os.path.basename(args.jdl), "delegation": offer["id"],
         "chain": chain.decode()}, {"sandbox": tar})  # fmt: skip
    doc = _call(client, "POST", "/jobs", body, {"Content-Type": ctype}).json()
    _show(args, doc, [doc["id"], f"  {doc['status']}: Slurm job {doc.get('slurm_id')} as "
                                 f"{doc.get('account')}"])  # fmt: skip
    return OK


def client_proxy() -> str:
    return os.environ.get("X509_USER_PROXY") or f"/tmp/x509up_u{os.getuid()}"


# -- the others ----------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    base, token = _split_id(args.id)
    query = "?history=1" if args.verbose else ""
    doc = _call(_client(base), "GET", f"/jobs/{token}{query}").json()
    _show(args, doc, _job_lines(doc))
    return OK


def cmd_list(args: argparse.Namespace) -> int:
    ce = args.ce or os.environ.get("WMS_CE")
    if not ce:
        raise CliError("no CE: give --ce URL (or set WMS_CE)")
    doc = _call(_client(ce), "GET", "/jobs").json()
    lines = [f"{j['id']}  {j['status']}" for j in doc.get("jobs", [])] or ["no jobs"]
    _show(args, doc, lines)
    return OK


def cmd_cancel(args: argparse.Namespace) -> int:
    base, token = _split_id(args.id)
    doc = _call(_client(base), "POST", f"/jobs/{token}/cancel").json()
    _show(args, doc, [f"{doc['id']}  {doc['status']}"])
    return OK


def cmd_output(args: argparse.Namespace) -> int:
    from wms.sandbox import SandboxError, extract_output

    base, token = _split_id(args.id)
    client = _client(base)
    dest = os.path.abspath(args.dir or os.path.join(os.getcwd(), f"wms-{token}"))
    reply = _call(client, "GET", f"/jobs/{token}/output")
    try:
        missing = json.loads(reply.headers.get("x-wms-missing", "[]"))
        written = extract_output(reply.body, dest)
    except (SandboxError, ValueError) as exc:
        raise CliError(f"output of {args.id}: {exc}") from None
    except OSError as exc:
        raise CliError(f"{dest}: {exc.strerror}") from None
    doc = _call(client, "POST", f"/jobs/{token}/purge").json()
    doc.update(directory=dest, files=written, missing=missing)
    lines = [f"{doc['id']}  {doc['status']}", f"  output in {dest}: {' '.join(written)}"]
    lines += [f"  not retrieved: {m}" for m in missing]
    _show(args, doc, lines)
    return OK


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=PROG, description=__doc__.split("\n\n")[0])
    sub = parser.add_subparsers(dest="command", required=True)
    specs = (
        ("submit", cmd_submit, "submit a JDL job"), ("status", cmd_status, "job state"),
        ("output", cmd_output, "fetch the output sandbox (the job becomes Cleared)"),
        ("cancel", cmd_cancel, "cancel a job"), ("list", cmd_list, "your jobs on a CE"),
    )  # fmt: skip
    for name, func, help_text in specs:
        p = sub.add_parser(name, help=help_text)
        if name == "submit":
            p.add_argument("jdl", help="the JDL file")
        elif name != "list":
            p.add_argument("id", help="the job ID printed by submit")
        if name in ("submit", "list"):
            p.add_argument("--ce", help="CE URL https://host:port (default $WMS_CE)")
        if name == "output":
            p.add_argument("--dir", help="where to put the files (default ./wms-<ID>)")
        if name == "status":
            p.add_argument("-v", "--verbose", action="store_true", help="state history")
        p.add_argument("--json", action="store_true", help="machine-readable output")
        p.set_defaults(func=func)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = _parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        return int(exc.code or 0) and ERROR
    started = time.monotonic()
    try:
        code: int = args.func(args)
        return code
    except CliError as exc:
        if getattr(args, "json", False):
            print(json.dumps({"error": exc.message, "exit": exc.code}))
        print(f"{PROG}: {exc.message}", file=sys.stderr)
        return exc.code
    except KeyboardInterrupt:
        print(f"{PROG}: interrupted after {time.monotonic() - started:.1f} s", file=sys.stderr)
        return ERROR
