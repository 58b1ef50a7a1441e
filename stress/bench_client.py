"""What the failover client costs: its import time and one round trip to a live scas-server.

Prints, with no pass/fail:

1. Import time, each in a fresh interpreter, median of `--imports` runs, minus the
   ``python -c pass`` yardstick: ``import client``, ``import client.failover`` (what a
   caller imports up front) and everything one query loads (transport: ssl, http.client;
   the protocol: lxml).
2. One query's round trip against a real ``scas-server`` on loopback (mutual TLS, started
   as tests/server_harness.py does, 2 gevent workers, dummy LCMAPS plugins): median and
   p99 over `--reused` queries on the kept-alive connection, over `--fresh` queries each on
   a new connection (full TLS handshake, context cached), each on a new connection that
   resumes the TLS session, and each from a new context (the credential read again).
3. A whole ``scas-query`` process per query (what a one-shot caller pays), median of 10.

    python stress/bench_client.py [--reused 200] [--fresh 50] [--imports 10]
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from collections.abc import Callable

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tests")]

IMPORTS = {
    "python -c pass (yardstick)": "pass",
    "import client": "import client",
    "import client.failover": "import client.failover",
    "+ transport, query, protocol": (
        "import client.failover, client.transport, client.query, client.xacml_decision"
    ),
}


def _median_run(code: str, runs: int) -> float:
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_imports(runs: int) -> None:
    print(f"import time (fresh interpreter, median of {runs}):")
    base = 0.0
    for label, code in IMPORTS.items():
        t = _median_run(code, runs)
        if code == "pass":
            base = t
            print(f"  {label:34s} {t * 1000:7.1f} ms")
        else:
            print(f"  {label:34s} {t * 1000:7.1f} ms  (+{(t - base) * 1000:.1f} ms)")


def _stats(label: str, samples: list[float]) -> None:
    ms = sorted(s * 1000 for s in samples)
    p99 = statistics.quantiles(ms, n=100, method="inclusive")[98] if len(ms) > 1 else ms[0]
    print(
        f"  {label:44s} n={len(ms):4d}  median {statistics.median(ms):6.2f} ms"
        f"  p99 {p99:6.2f} ms  max {ms[-1]:6.2f} ms"
    )


def _timed(n: int, before: Callable[[], None], ask: Callable[[], object]) -> list[float]:
    samples = []
    for _ in range(n):
        before()
        start = time.perf_counter()
        ask()
        samples.append(time.perf_counter() - start)
    return samples


def bench_round_trips(reused: int, fresh: int) -> None:
    from server_harness import Server, Site

    from client import transport
    from client.failover import FailoverClient
    from client.query import build_query, read_chain

    work = tempfile.mkdtemp(prefix="bench-client-")
    site = Site(work)
    server = Server(site, site.write_config())
    try:
        url = f"https://localhost:{server.port}"
        client = FailoverClient(
            [url], cert=site.pep.cert_path, key=site.pep.key_path, certdir=site.pki.certdir,
            memory=False,
        )  # fmt: skip
        query = build_query(read_chain(site.user.cert_path))

        def ask() -> None:
            assert client.ask(query).permitted

        for _ in range(10):  # warm up both workers and the server's caches
            transport.close_all()
            ask()
        print(f"round trip against scas-server on loopback ({url}, 2 workers):")
        _stats("kept-alive connection", _timed(reused, lambda: None, ask))
        _stats(
            "new connection, full handshake",
            _timed(fresh, lambda: transport.close_all(keep_contexts=True), ask),
        )
        _stats(
            "new connection, TLS session resumed",
            _timed(fresh, lambda: transport.close_all(keep_sessions=True), ask),
        )
        _stats(
            "new context + connection (credential re-read)",
            _timed(fresh, transport.close_all, ask),
        )
        transport.close_all()
        exe = os.path.join(sysconfig.get_path("scripts"), "scas-query")
        command = [
            exe, "--endpoint", url, "--proxy", site.user.cert_path, "--cert", site.pep.cert_path,
            "--key", site.pep.key_path, "--certdir", site.pki.certdir, "--resource-type", "wn",
            "--action", "execute-now", "--no-state",
        ]  # fmt: skip

        def one_shot() -> None:
            subprocess.run(command, check=True, capture_output=True)

        _stats("whole scas-query process", _timed(10, lambda: None, one_shot))
    finally:
        transport.close_all()
        server.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--reused", type=int, default=200)
    parser.add_argument("--fresh", type=int, default=50)
    parser.add_argument("--imports", type=int, default=10)
    args = parser.parse_args()
    print(f"python {sys.version.split()[0]}, {os.cpu_count()} CPUs")
    bench_imports(args.imports)
    bench_round_trips(args.reused, args.fresh)


if __name__ == "__main__":
    main()
