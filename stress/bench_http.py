"""Pinned HTTP benchmark: scas-server against the bare endpoint, four modes, in one run.

    python -m stress.bench_http [--duration 8] [--repeats 2] [--clients 4]
                                [--server-key rsa|ec] [--json]

One gunicorn worker of each server (scas-server and the bare flask endpoint of
:mod:`stress.bare_server`, same YAML, same TLS and worker settings) is pinned to one
core; the load generator runs on the other. The generator is the stdlib
(``http.client`` over ``ssl``) in ``--clients`` processes, each sending back to back:
about a tenth of locust's CPU per request, so the server's core, not the generator's,
is the bottleneck. The generator's and the server's CPU use are printed per run, to
show which side was busy.

Modes, each measured against the bare endpoint and then scas-server, in turn:

* **keep-alive, repeat**: one TLS connection per client, the same user proxy each time
  (the caches answer);
* **keep-alive, fresh**: a newly made VOMS proxy (new proxy certificate, new AC) per
  request, as production sees when every payload brings its own delegation;
* **handshake, repeat / fresh**: a new TLS connection per request, no session
  resumption, ``Connection: close``, as the stock C client does.

Every reply must be a Permit for the request's ID; a wrong one counts as an error and
the exit status is 1. The ratio scas/bare is the figure to read: both are measured on
the same core minutes apart. ``--repeats`` alternates the pairs and prints the spread.
The site is :func:`stress.bench_decision.write_site` (one user, a held lease) served over
mutual TLS; as root its two pool accounts are made for the run and removed after.
"""

from __future__ import annotations

import argparse
import http.client
import json
import multiprocessing
import os
import re
import signal
import socket
import ssl
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from typing import Any

from safetext import one_line as safe
from stress import bench_decision as site

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MODES = ("keepalive-repeat", "keepalive-fresh", "handshake-repeat", "handshake-fresh")
GOALS = {"keepalive-repeat": 0.6, "keepalive-fresh": 0.4,
         "handshake-repeat": 0.85, "handshake-fresh": 0.7}  # fmt: skip
CE_DN = "/DC=org/DC=example/O=Hosts/CN=ce.bench.example.org"
RID = b"_bench000000000000000000000000000"  # same length as every ID sent
HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": '""'}
_PERMIT = re.compile(rb"Decision>Permit</")


@dataclass
class RunFigures:
    """One endpoint in one mode: what the clients saw and what each core spent."""

    mode: str
    endpoint: str
    requests: int = 0
    most_by_one: int = 0  # the most requests one client sent (fresh bodies used per client)
    errors: int = 0
    first_error: str = ""
    seconds: float = 0.0
    latencies_ms: list[float] = field(default_factory=list)
    client_cpu: float = 0.0  # share of the generator's core
    server_cpu: float = 0.0  # share of the server's core

    @property
    def rate(self) -> float:
        return self.requests / self.seconds if self.seconds else 0.0

    def percentile(self, q: float) -> float:
        ordered = sorted(self.latencies_ms)
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] if ordered else 0.0


@dataclass(frozen=True)
class Target:
    port: int
    cafile: str
    cert: str
    key: str


def _context(target: Target) -> ssl.SSLContext:
    ctx = ssl.create_default_context(cafile=target.cafile)
    ctx.load_cert_chain(target.cert, target.key)
    return ctx


def _client(target: Target, bodies: list[bytes], close_each: bool, deadline: float,
            cpu: int, out: Any) -> None:  # fmt: skip
    """One generator process: send back to back until ``deadline``; report on ``out``."""
    os.sched_setaffinity(0, {cpu})
    ctx = _context(target)
    headers = dict(HEADERS, Connection="close") if close_each else HEADERS
    conn: http.client.HTTPSConnection | None = None
    done = errors = 0
    first = ""
    lat: list[float] = []
    cpu0 = time.process_time()
    while time.monotonic() < deadline and done < len(bodies):
        rid = b"_b%031x" % (os.getpid() << 32 | done)
        body = bodies[done].replace(RID, rid)
        start = time.perf_counter()
        try:
            if conn is None:
                conn = http.client.HTTPSConnection("localhost", target.port, context=ctx)
            conn.request("POST", "/", body, headers)
            reply = conn.getresponse()
            data = reply.read()
            ok = reply.status == 200 and rid in data and _PERMIT.search(data) is not None
            why = "" if ok else f"HTTP {reply.status}: {data[:200]!r}"
        except (OSError, http.client.HTTPException) as exc:
            ok, why = False, f"{type(exc).__name__}: {exc}"
            conn = None
        lat.append((time.perf_counter() - start) * 1000)
        done += 1
        if not ok:
            errors += 1
            first = first or why
        if close_each and conn is not None:
            conn.close()
            conn = None
    out.send({"requests": done, "errors": errors, "first_error": first, "lat": lat,
              "cpu": time.process_time() - cpu0, "exhausted": done >= len(bodies)})  # fmt: skip


def _process_cpu(pids: list[int]) -> float:
    """CPU seconds used so far by ``pids`` (utime + stime from /proc)."""
    total = 0
    for pid in pids:
        with open(f"/proc/{pid}/stat") as fh:
            fields = fh.read().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@contextmanager
def profiled(pids: list[int], out: str | None, seconds: float) -> Iterator[None]:
    """py-spy samples the server's worker (the last pid) into ``out``, collapsed stacks."""
    if out is None:
        yield
        return
    spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    proc = subprocess.Popen([spy, "record", "--pid", str(pids[-1]), "--format", "raw",
                             "--rate", "250", "--duration", str(max(1, int(seconds))),
                             "--nonblocking", "-o", out],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        yield
    finally:
        try:
            proc.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def measure(target: Target, bodies: list[bytes], mode: str, endpoint: str, seconds: float,
            clients: int, cpu: int, server_pids: list[int],
            must_last: bool = True) -> RunFigures:  # fmt: skip
    """Run ``clients`` generator processes for ``seconds``; each gets its share of bodies.

    ``must_last``: a client that sends all its bodies before the time is up is an error.
    """
    fork = multiprocessing.get_context("fork")
    deadline = time.monotonic() + seconds
    pipes, procs = [], []
    for i in range(clients):
        mine, theirs = fork.Pipe(duplex=False)
        proc = fork.Process(target=_client, args=(target, bodies[i::clients],
                                                  mode.startswith("handshake"), deadline, cpu,
                                                  theirs))  # fmt: skip
        proc.start()
        pipes.append(mine)
        procs.append(proc)
    start, server0 = time.monotonic(), _process_cpu(server_pids)
    reports = [p.recv() for p in pipes]
    elapsed = time.monotonic() - start
    server_used = _process_cpu(server_pids) - server0
    for proc in procs:
        proc.join()
    fig = RunFigures(mode, endpoint, seconds=elapsed)
    for rep in reports:
        fig.requests += rep["requests"]
        fig.most_by_one = max(fig.most_by_one, rep["requests"])
        fig.errors += rep["errors"]
        fig.first_error = fig.first_error or rep["first_error"]
        fig.latencies_ms += rep["lat"]
        fig.client_cpu += rep["cpu"] / elapsed
        if rep["exhausted"] and must_last:
            fig.first_error = fig.first_error or "ran out of fresh proxies: raise --fresh"
            fig.errors += 1
    fig.server_cpu = server_used / elapsed
    return fig


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def served(cmd: list[str], port: int, cpu: int, log: str) -> Iterator[list[int]]:
    """Start ``cmd`` pinned to ``cpu``; yield its worker pids once it answers; stop it."""
    with open(log, "ab") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=fh, start_new_session=True, cwd=REPO,
                                preexec_fn=lambda: os.sched_setaffinity(0, {cpu}))  # fmt: skip
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise site.BenchError(f"{cmd[0]} exited {proc.returncode}; see {log}", 2)
            with socket.socket() as s:
                if s.connect_ex(("127.0.0.1", port)) == 0:
                    break
            if time.monotonic() > deadline:
                raise site.BenchError(f"nothing listening on {port} after 60 s; see {log}", 2)
            time.sleep(0.2)
        time.sleep(1.0)  # the worker boots after the master binds
        yield [proc.pid, *_children(proc.pid)]
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def _children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as fh:
        return [int(x) for x in fh.read().split()]


def build(work: str, server_key: str, fresh: int, port: int,
          client_key: str = "ec") -> tuple[dict[str, Any], list[bytes]]:  # fmt: skip
    """The served site under ``work``, one repeat body and ``fresh`` cold bodies."""
    import yaml

    from client import xacml

    pki, user = site.write_site(work)
    host = pki.host("localhost", "/DC=org/DC=example/O=Hosts/CN=localhost", key_type=server_key)
    ce = pki.host("ce.bench.example.org", CE_DN, key_type=client_key)
    path = os.path.join(work, "scas.yaml")
    with open(path) as fh:
        config = yaml.safe_load(fh)
    config.update({
        "workers": 1, "log_level": "warning", "pep_allow": [CE_DN],
        "listen": f"127.0.0.1:{port}",
        "tls": {"cert": host.cert_path, "key": host.key_path, "ca_dir": pki.certdir},
    })  # fmt: skip
    with open(path, "w") as fh:
        yaml.safe_dump(config, fh)

    def body(chain: bytes) -> bytes:
        return xacml.build_request(subject_dn=site.DN, cert_chain=chain, resource="ce",
                                   action="queue", request_id=RID.decode(), pep_dn=CE_DN)

    chains = _fresh_in_parallel(pki, user, fresh + 1)
    info = {"config": path, "cafile": os.path.join(pki.dir, "ca.pem"),
            "ce": (ce.cert_path, ce.key_path)}  # fmt: skip
    return info, [body(c) for c in chains]


_MAKER: list[Any] = []  # (pki, user), inherited by the forked makers: keys do not pickle


def _make(count: int) -> list[bytes]:
    pki, user = _MAKER
    return site.fresh_chains(pki, user, count)


def _fresh_in_parallel(pki: Any, user: Any, count: int) -> list[bytes]:
    """Fresh VOMS proxies made on every core (about 7 ms each on one)."""
    cores = len(os.sched_getaffinity(0))
    _MAKER[:] = [pki, user]
    fork = multiprocessing.get_context("fork")
    with fork.Pool(cores) as pool:
        parts = pool.map(_make, [-(-count // cores)] * cores)
    return [c for part in parts for c in part][:count]


def run(args: argparse.Namespace) -> dict[str, Any]:
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise site.BenchError("needs two CPUs: one for the servers, one for the load", 2)
    gen_cpu, srv_cpu = allowed[0], allowed[-1]
    with tempfile.TemporaryDirectory(prefix="bench-http-") as work:
        print("making the site and the fresh VOMS proxies ...", file=sys.stderr,
              flush=True)  # fmt: skip
        sport, bport = _free_port(), _free_port()
        wanted = args.fresh if any(m.endswith("fresh") for m in args.modes) else args.clients
        info, bodies = build(work, args.server_key, wanted, sport, args.client_key)
        repeat, fresh = bodies[:1], bodies[1:]
        sample = os.path.join(work, "sample.xml")
        with open(sample, "wb") as fh:
            fh.write(repeat[0])
        scas_cmd = [os.path.join(os.path.dirname(sys.executable), "scas-server"),
                    "--config", info["config"]]  # fmt: skip
        bare_cmd = [sys.executable, "-m", "stress.bare_server", "--config", info["config"],
                    "--listen", f"127.0.0.1:{bport}", "--sample", sample]  # fmt: skip
        log = os.path.join(work, "servers.log")
        targets = {name: Target(port, info["cafile"], *info["ce"])
                   for name, port in (("scas", sport), ("bare", bport))}  # fmt: skip
        with served(scas_cmd, sport, srv_cpu, log) as scas_pids, \
                served(bare_cmd, bport, srv_cpu, log) as bare_pids:  # fmt: skip
            pids = {"scas": scas_pids, "bare": bare_pids}
            warm = measure(targets["scas"], repeat * 200, "warm-up", "scas", 10, 1, gen_cpu,
                           scas_pids, must_last=False)  # fmt: skip
            if warm.errors:  # the first query takes the lease
                raise site.BenchError(f"warm-up refused: {warm.first_error}", 1)
            time.sleep(site.RACY_WAIT)
            runs: list[RunFigures] = []
            for rep in range(args.repeats):
                for mode in args.modes:
                    for endpoint in ("bare", "scas"):
                        pool = fresh if mode.endswith("fresh") else repeat * 1_000_000
                        if pool is fresh and endpoint == "bare":  # no cache there: reuse
                            pool = fresh * (1 + int(5000 * args.duration) // len(fresh))
                        print(f"repeat {rep + 1}/{args.repeats}: {mode} {endpoint} ...",
                              file=sys.stderr, flush=True)  # fmt: skip
                        out = None
                        if args.profile and endpoint == "scas":
                            out = os.path.join(args.profile, f"{mode}-{rep + 1}.txt")
                        with profiled(pids[endpoint], out, args.duration):
                            fig = measure(targets[endpoint], pool, mode, endpoint,
                                          args.duration, args.clients, gen_cpu,
                                          pids[endpoint])  # fmt: skip
                        if pool is fresh and endpoint == "scas":  # never send one twice
                            fresh = fresh[fig.most_by_one * args.clients:]
                        runs.append(fig)
    return {"runs": runs, "gen_cpu": gen_cpu, "srv_cpu": srv_cpu}


def summarise(result: dict[str, Any]) -> dict[str, Any]:
    """Per mode: rates, ratio per repeat (pairs measured minutes apart), its spread."""
    runs: list[RunFigures] = result["runs"]
    modes: dict[str, Any] = {}
    for mode in dict.fromkeys(r.mode for r in runs):
        bare = [r for r in runs if r.mode == mode and r.endpoint == "bare"]
        scas = [r for r in runs if r.mode == mode and r.endpoint == "scas"]
        ratios = [s.rate / b.rate if b.rate else 0.0 for b, s in zip(bare, scas, strict=True)]
        every = [x for r in scas for x in r.latencies_ms]
        ordered = sorted(every) or [0.0]
        modes[mode] = {
            "bare_per_s": statistics.median(r.rate for r in bare),
            "scas_per_s": statistics.median(r.rate for r in scas),
            "ratio": statistics.median(ratios), "ratio_range": [min(ratios), max(ratios)],
            "goal": GOALS[mode], "met": statistics.median(ratios) >= GOALS[mode],
            "scas_p50_ms": ordered[len(ordered) // 2],
            "scas_p99_ms": ordered[min(len(ordered) - 1, int(0.99 * len(ordered)))],
            "generator_cpu": max(r.client_cpu for r in bare + scas),
            "server_cpu_bare": statistics.median(r.server_cpu for r in bare),
            "server_cpu_scas": statistics.median(r.server_cpu for r in scas),
            "errors": sum(r.errors for r in bare + scas),
            "first_error": next((r.first_error for r in bare + scas if r.first_error), ""),
        }  # fmt: skip
    return modes


def render(modes: dict[str, Any], args: argparse.Namespace, result: dict[str, Any]) -> str:
    load = "/".join(f"{x:.1f}" for x in result["load"])
    lines = [
        f"machine: {site.cpu_model()}, {os.cpu_count()} CPUs; servers (1 worker each, "
        f"{args.server_key} key) on CPU {result['srv_cpu']}, {args.clients} stdlib clients "
        f"({args.client_key} key) on CPU "
        f"{result['gen_cpu']}; {args.duration:g} s per run, {args.repeats} repeats; "
        f"load average before/after {load}",
        f"{'mode':<18}{'bare/s':>8}{'scas/s':>8}{'ratio':>7}{'range':>12}{'goal':>6}"
        f"{'scas p50':>10}{'p99':>8}{'gen CPU':>9}{'srv CPU b/s':>13}{'errors':>8}",
    ]
    for mode, m in modes.items():
        low, high = m["ratio_range"]
        mark = "met" if m["met"] else "MISSED"
        lines.append(
            f"{mode:<18}{m['bare_per_s']:>8.0f}{m['scas_per_s']:>8.0f}{m['ratio']:>7.2f}"
            f"{f'{low:.2f}-{high:.2f}':>12}{m['goal']:>6.2f}{m['scas_p50_ms']:>8.1f}ms"
            f"{m['scas_p99_ms']:>6.1f}ms{100 * m['generator_cpu']:>8.0f}%"
            f"{100 * m['server_cpu_bare']:>7.0f}/{100 * m['server_cpu_scas']:.0f}%"
            f"{m['errors']:>8} {mark}")
    lines.append("(ratio: median over repeats of scas/bare, each pair minutes apart on the same "
                 "core; range: the repeats' spread; gen CPU: the busiest run's generator core "
                 "use, near 100% would mean the generator, not the server, set the pace; srv "
                 "CPU: the server core's use, bare/scas, near 100% means the server was the "
                 "bottleneck)")
    errs = [f"{mode}: {safe(m['first_error'])}" for mode, m in modes.items() if m["errors"]]
    return "\n".join(lines + errs)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_http", description=__doc__.splitlines()[0])
    parser.add_argument("--duration", type=float, default=8.0, help="seconds per run")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--clients", type=int, default=4, help="generator processes")
    parser.add_argument("--server-key", choices=("rsa", "ec"), default="rsa",
                        help="the servers' TLS key: RSA-2048 or ECDSA P-256")
    parser.add_argument("--client-key", choices=("rsa", "ec"), default="ec",
                        help="the PEP's TLS key (default ec: a handshake then costs the "
                             "generator little, so the server sets the pace)")
    parser.add_argument("--modes", type=lambda t: t.split(","), default=list(MODES),
                        help=f"comma-separated subset of {','.join(MODES)}")
    parser.add_argument("--fresh", type=int, default=6000,
                        help="fresh VOMS proxies to make (each is sent to scas-server once)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    parser.add_argument("--profile", metavar="DIR",
                        help="sample scas-server's worker with py-spy during each of its runs "
                             "into DIR/MODE-REPEAT.txt (collapsed stacks; the sampling costs "
                             "the server a few per cent, so do not quote those runs' rates)")
    args = parser.parse_args(argv)
    if not args.modes or set(args.modes) - set(MODES):
        parser.error(f"--modes: choose from {','.join(MODES)}")
    if args.duration <= 0 or args.repeats < 1 or args.clients < 1 or args.fresh < args.clients:
        parser.error("need a positive duration, a repeat, a client and a fresh proxy each")
    if args.profile:
        try:
            os.makedirs(args.profile, exist_ok=True)
        except OSError as exc:
            parser.error(f"--profile: cannot make {args.profile}: {exc.strerror}")
    before = os.getloadavg()[0]
    try:
        with site.pool_accounts():
            result = run(args)
    except site.BenchError as exc:
        print(f"bench_http: {safe(str(exc))}", file=sys.stderr)
        return exc.code
    result["load"] = [before, os.getloadavg()[0]]
    modes = summarise(result)
    if args.json:
        out = {"modes": modes, "runs": [dict(asdict(r), latencies_ms=None, rate=r.rate)
                                        for r in result["runs"]],
               "gen_cpu": result["gen_cpu"], "srv_cpu": result["srv_cpu"], "load": result["load"],
               "server_key": args.server_key, "client_key": args.client_key,
               "clients": args.clients}  # fmt: skip
        print(json.dumps(out, indent=1))
    else:
        print(render(modes, args, result))
    return 1 if any(m["errors"] for m in modes.values()) else 0


if __name__ == "__main__":
    sys.exit(main())
