"""``stress/run``: load the real scas-server with locust and report figures, in one command.

1. build the stress site (:mod:`stress.population`) and its pool accounts;
2. reset the gridmapdir and map half of the users once, so the run has
   both repeat mappings and first-time ones;
3. start ``scas-server`` and the bare yardstick (:mod:`stress.bare_server`)
   on loopback with the same TLS and workers;
4. for each connection mode, run locust headless against the bare endpoint
   and then against scas-server, for ``--duration`` seconds each (or, in soak
   mode, ``--soak N`` requests against scas-server only) while sampling the
   server's memory and descriptors every 5 s;
5. audit the gridmapdir against every Permit; print the figures, the goals
   met or missed, and write CSVs and a PNG plot into ``WORK/results``.

Exit status: 0 when every request was answered as expected and the audit is
clean, 1 otherwise, 2 for a usage or set-up problem.
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Any

from stress import lease_audit, population, report

HERE = os.path.dirname(os.path.abspath(__file__))
BIN = os.path.dirname(sys.executable)
GOALS = {"keepalive": 1200.0, "handshake": 250.0}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _wait_listening(port: int, proc: subprocess.Popen[bytes], log: str) -> None:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            with open(log, errors="replace") as fh:
                raise SystemExit(f"stress: server exited {proc.returncode}:\n{fh.read()[-2000:]}")
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                time.sleep(0.5)
                return
        time.sleep(0.2)
    raise SystemExit(f"stress: nothing listening on port {port} after 60 s (see {log})")


def _start(cmd: list[str], log: str, cwd: str) -> subprocess.Popen[bytes]:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    with open(log, "ab") as out:
        return subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, cwd=cwd, env=env,
                                start_new_session=True)


def _stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def reset_leases(manifest: dict[str, Any]) -> int:
    """Remove every lease, then map the ``prelease`` users once through the real pipeline."""
    from scas_server.config import load_config
    from scas_server.decision import build_pipeline
    from scas_server.peer import Peer

    gridmapdir = manifest["gridmapdir"]
    accounts = population.all_accounts(manifest["pool_sizes"])
    for name in os.listdir(gridmapdir):
        if name not in accounts:
            os.unlink(os.path.join(gridmapdir, name))
    pipeline = build_pipeline(load_config(os.path.join(manifest["work"], "scas.yaml")))
    peer = Peer("tls", subject=population.CE_DN)
    wanted = {u["dn"] for u in manifest["population"] if u["prelease"]}
    done = 0
    for item in manifest["requests"]:
        if item["kind"] == "ce" and item["dn"] in wanted:
            outcome = pipeline.decide(item["body"].encode(), peer)
            if outcome.record.decision != "Permit":
                raise SystemExit(f"stress: pre-mapping {item['dn']} failed: "
                                 f"{outcome.record.reason}")
            done += 1
    return done


def run_locust(manifest_path: str, port: int, mode: str, args: argparse.Namespace,
               prefix: str, *, bare: bool, max_requests: int | None = None,
               duration: int | None = None, warmup: bool = False) -> None:
    env = dict(os.environ, SCAS_STRESS_MANIFEST=manifest_path,
               SCAS_STRESS_OBSERVED=prefix + "_observed.json")
    env["SCAS_STRESS_BARE"] = "1" if bare else "0"
    env["SCAS_STRESS_ONLY_REPEAT"] = "1" if warmup else "0"
    if max_requests:
        env["SCAS_STRESS_MAX_REQUESTS"] = str(max_requests)
    cmd = [os.path.join(BIN, "locust"), "-f", os.path.join(HERE, "locustfile.py"),
           "--headless", "--only-summary", "-u", str(args.clients), "-r", str(args.clients),
           "--host", f"https://localhost:{port}", "--csv", prefix, "--csv-full-history",
           "--loglevel", "WARNING", "--exit-code-on-error", "0",
           "HandshakePep" if mode == "handshake" else "KeepAlivePep"]
    if not max_requests:
        cmd[cmd.index("--headless"):cmd.index("--headless")] = [
            "-t", f"{duration or args.duration}s"]
    with open(prefix + "_locust.log", "wb") as out:
        subprocess.run(cmd, env=env, stdout=out, stderr=subprocess.STDOUT, check=True,
                       cwd=HERE)


def _machine() -> str:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as fh:
            cpu = next(line.split(":", 1)[1].strip() for line in fh if "model name" in line)
    except (OSError, StopIteration):
        pass
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 2**30
    return (f"{os.cpu_count()} CPUs ({cpu}), {mem:.0f} GiB, Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}")


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="stress/run", description=__doc__.splitlines()[0])
    p.add_argument("--work", default=os.path.join(tempfile.gettempdir(), "scas-stress"),
                   help="work directory (PKI, site, results); default %(default)s")
    p.add_argument("--users", type=int, default=600, help="distinct grid users (default 600)")
    p.add_argument("--clients", type=int, default=20, help="concurrent PEPs (default 20)")
    p.add_argument("--duration", type=int, default=30, help="seconds per run (default 30)")
    p.add_argument("--mode", choices=("keepalive", "handshake", "both"), default="both")
    p.add_argument("--warmup", type=int, default=10,
                   help="seconds of load from the pre-mapped (repeat) users before measuring, "
                        "so their credentials are cached as in a running service; the "
                        "first-time users still arrive cold (default 10, 0 = none)")
    p.add_argument("--soak", type=int, metavar="N",
                   help="soak: N keep-alive requests against scas-server only")
    p.add_argument("--no-bare", action="store_true", help="skip the bare endpoint")
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--worker-class", choices=("gevent", "gthread", "sync"), default="gevent")
    p.add_argument("--keep-accounts", action="store_true",
                   help="leave the stp* pool accounts for the next run (faster)")
    p.add_argument("--remove-accounts", action="store_true",
                   help="only remove the stp* pool accounts and groups, then exit")
    return p


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if os.geteuid() != 0:
        print("stress/run: must run as root: it creates the pool accounts (stp*) that LCMAPS "
              "maps to", file=sys.stderr)
        return 2
    if args.remove_accounts:
        print(f"removed {population.remove_accounts()} stress accounts")
        return 0
    # a TERM (timeout, Ctrl-C in a pipeline) must still stop the servers and remove accounts
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        return _run(args)
    finally:
        if not args.keep_accounts:
            population.remove_accounts()


def _run(args: argparse.Namespace) -> int:
    work = os.path.abspath(args.work)
    results = os.path.join(work, "results")
    shutil.rmtree(results, ignore_errors=True)
    os.makedirs(results)
    scas_port, bare_port = _free_port(), _free_port()
    t0 = time.monotonic()
    manifest = population.build(work, args.users, listen=f"127.0.0.1:{scas_port}",
                                workers=args.workers, worker_class=args.worker_class,
                                threads=args.threads)
    made = population.ensure_accounts(manifest["pool_sizes"])
    pre = reset_leases(manifest)
    print(f"site: {args.users} users, {made} pool accounts made, {pre} users pre-mapped "
          f"({time.monotonic() - t0:.0f} s) in {work}")
    manifest_path = os.path.join(work, "manifest.json")
    sample = os.path.join(work, "sample.xml")
    with open(sample, "w") as fh:
        fh.write(manifest["requests"][-1]["body"])
    audit_path = os.path.join(work, "audit.log")
    audit_offset = os.path.getsize(audit_path) if os.path.exists(audit_path) else 0
    leases_before = len(os.listdir(manifest["gridmapdir"])) - sum(
        manifest["pool_sizes"].values())

    server = _start([os.path.join(BIN, "scas-server"), "--config", "scas.yaml"],
                    os.path.join(results, "scas-server.log"), work)
    bare = None if args.no_bare or args.soak else _start(
        [sys.executable, os.path.join(HERE, "bare_server.py"), "--config", "scas.yaml",
         "--listen", f"127.0.0.1:{bare_port}", "--sample", sample],
        os.path.join(results, "bare.log"), work)
    sampler = report.Sampler(server.pid, os.path.join(results, "server_resources.csv"))
    figures: list[report.RunFigures] = []
    plotted: list[tuple[str, str]] = []
    observed: list[str] = []
    try:
        _wait_listening(scas_port, server, os.path.join(results, "scas-server.log"))
        if bare is not None:
            _wait_listening(bare_port, bare, os.path.join(results, "bare.log"))
        sampler.start()
        if args.warmup:
            prefix = os.path.join(results, "warmup_scas")
            print(f"warming up: {args.warmup} s of repeat users against scas-server", flush=True)
            run_locust(manifest_path, scas_port, "keepalive", args, prefix, bare=False,
                       duration=args.warmup, warmup=True)
            observed.append(prefix + "_observed.json")
            warm = report.read_locust(prefix, "scas warm-up")
            if warm.failures:
                figures.append(warm)
        modes = ["keepalive"] if args.soak else (
            ["keepalive", "handshake"] if args.mode == "both" else [args.mode])
        for mode in modes:
            targets = [("scas", scas_port, False)]
            if bare is not None:
                targets.insert(0, ("bare", bare_port, True))
            for name, port, is_bare in targets:
                prefix = os.path.join(results, f"{mode}_{name}")
                print(f"running locust: {name} endpoint, {mode}, {args.clients} clients, "
                      + (f"{args.soak} requests" if args.soak else f"{args.duration} s"),
                      flush=True)
                run_locust(manifest_path, port, mode, args, prefix, bare=is_bare,
                           max_requests=args.soak)
                figures.append(report.read_locust(prefix, f"{name} {mode}"))
                plotted.append((f"{name} {mode}", prefix))
                if not is_bare:
                    observed.append(prefix + "_observed.json")
    finally:
        sampler.stop()
        _stop(server)
        if bare is not None:
            _stop(bare)
    audit = lease_audit.run_audit(manifest, audit_offset, observed, leases_before)
    report.plot(plotted, sampler.samples, os.path.join(results, "plot.png"))
    return _summarise(args, figures, audit, sampler, results)


def _summarise(args: argparse.Namespace, figures: list[report.RunFigures],
               audit: lease_audit.AuditReport, sampler: report.Sampler, results: str) -> int:
    print(f"\nmachine: {_machine()}")
    threads = f" x {args.threads} threads" if args.worker_class == "gthread" else ""
    print(f"server: {args.workers} {args.worker_class} workers{threads}; "
          f"{args.users} users, {args.clients} clients")
    for fig in figures:
        print(fig.row())
        for reason in fig.failure_reasons[:5]:
            print(f"    error: {reason}")
    by_label = {f.label: f for f in figures}
    for mode, goal in GOALS.items():
        scas, bare = by_label.get(f"scas {mode}"), by_label.get(f"bare {mode}")
        if scas is None:
            continue
        verdict = "met" if scas.per_second >= goal else "MISSED"
        line = f"goal {mode}: {scas.per_second:.0f}/s vs >= {goal:.0f}/s {verdict}"
        if bare is not None and bare.per_second:
            ratio = scas.per_second / bare.per_second
            line += f"; {ratio:.2f} x bare ({'met' if ratio >= 0.5 else 'MISSED'} >= 0.5)"
        if mode == "keepalive" and args.clients == 20:
            line += f"; p99 {scas.p99:.0f} ms ({'met' if scas.p99 <= 30 else 'MISSED'} <= 30)"
        print(line)
    print(f"server resources: {sampler.growth()}")
    print(f"lease audit: {audit.accounts} pool accounts, {audit.leases} leases "
          f"({audit.first_leases} first-time during the run), {audit.permits} Permits and "
          f"{audit.denies} Denies checked: "
          + ("consistent" if audit.ok else f"{len(audit.problems)} PROBLEMS"))
    for problem in audit.problems[:20]:
        print(f"    {problem}")
    print(f"results: {results} (CSV per run, server_resources.csv, plot.png)")
    errors = sum(f.failures for f in figures)
    return 0 if errors == 0 and audit.ok else 1


if __name__ == "__main__":
    sys.exit(main())
