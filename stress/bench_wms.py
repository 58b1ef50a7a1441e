"""The submission path under load: N jobs from M users through one CE, on real parts.

The site is testkit/wms_site.py's (live SCAS over mutual TLS, glexec with the setuid helper,
a single-node Slurm cluster, the CE under gunicorn as its service account). Each client
thread is one user with a kept TLS connection, submitting ``/bin/true`` jobs with a small
input sandbox: delegation (the CE makes a key, the client signs a proxy), then the
submission. Reported: submissions/s and jobs/day, the client's latency, and the CE's split
of each submission into authorization (its SCAS query), glexec (front, SCAS ticket, helper),
staging (``tar -x`` as the pool account) and ``sbatch``; then how many jobs reached a final
state within the drain time.

Seed figures per CE (gLite 3.1 WMS): acceptance ran > 15,000 jobs/day with < 0.3% of jobs
left in a non-final state; stress tests showed about 27,000 jobs/day.

    sudo .venv/bin/python stress/bench_wms.py [-n 200] [-m 4] [--key ec-p256|rsa2048]
"""

from __future__ import annotations

import argparse
import io
import math
import shutil
import statistics
import sys
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from testkit.wms_site import WmsSite, missing, wms_site  # noqa: E402
from wms.delegation import sign_request  # noqa: E402
from wms.sandbox import SandboxFile, write_tar  # noqa: E402
from wms.transport import CeClient, multipart  # noqa: E402

JDL = '[ Executable = "run.sh"; InputSandbox = {"run.sh"}; StdOutput = "std.out"; ]'
SEED_ACCEPTANCE, SEED_STRESS = 15_000, 27_000
FINAL = ("Done", "Aborted", "Cancelled", "Cleared")


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)] if ordered else float("nan")


def sandbox_tar() -> bytes:
    out = io.BytesIO()
    script = b"#!/bin/sh\nexec true\n"
    write_tar(out, [SandboxFile("run.sh", len(script), 0o755, data=script)])
    return out.getvalue()


def submit(client: CeClient, proxy: bytes, tar: bytes) -> dict[str, Any]:
    offer = client.request("POST", "/delegations").json()
    chain = sign_request(offer["request"].encode(), proxy, now=datetime.now(UTC))
    body, ctype = multipart({"jdl": JDL, "jdl_name": "bench.jdl", "delegation": offer["id"],
                             "chain": chain.decode()}, {"sandbox": tar})  # fmt: skip
    reply = client.request("POST", "/jobs", body, {"Content-Type": ctype})
    if reply.status != 201:
        raise RuntimeError(f"HTTP {reply.status}: {reply.body[:300]!r}")
    return reply.json()


def run(site: WmsSite, users: list[str], n: int) -> tuple[list[dict[str, Any]], list[float],
                                                           list[str], float]:  # fmt: skip
    tar, lock = sandbox_tar(), threading.Lock()
    results: list[dict[str, Any]] = []
    latencies: list[float] = []
    errors: list[str] = []
    todo = iter(range(n))

    def worker(user: str) -> None:
        client = CeClient(site.ce_url, site.proxies[user], site.pki.certdir)
        proxy = Path(site.proxies[user]).read_bytes()
        try:
            while True:
                with lock:
                    if next(todo, None) is None:
                        return
                start = time.perf_counter()
                try:
                    doc = submit(client, proxy, tar)
                except Exception as exc:  # a failed submission is counted, not fatal
                    with lock:
                        errors.append(f"{user}: {exc}")
                    continue
                with lock:
                    latencies.append(time.perf_counter() - start)
                    results.append(doc)
        finally:
            client.close()

    threads = [threading.Thread(target=worker, args=(u,)) for u in users]
    started = time.perf_counter()
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return results, latencies, errors, time.perf_counter() - started


def drain(site: WmsSite, results: list[dict[str, Any]], seconds: float) -> dict[str, int]:
    """Poll each owner's job list until all are final or the time is up; count by state."""
    owners = {r["owner"] for r in results}
    by_dn = {dn: name for name, dn in site.dns.items()}
    deadline = time.monotonic() + seconds
    counts: dict[str, int] = {}
    wanted = {r["id"] for r in results}
    while True:
        counts = {}
        for dn in owners:
            client = CeClient(site.ce_url, site.proxies[by_dn[dn]], site.pki.certdir)
            try:
                for job in client.request("GET", "/jobs").json()["jobs"]:
                    if job["id"] in wanted:
                        counts[job["state"]] = counts.get(job["state"], 0) + 1
            finally:
                client.close()
        if sum(v for k, v in counts.items() if k not in FINAL) == 0:
            return counts
        if time.monotonic() > deadline:
            return counts
        time.sleep(2)


def report(args: argparse.Namespace, results: list[dict[str, Any]], latencies: list[float],
           errors: list[str], wall: float, counts: dict[str, int]) -> None:  # fmt: skip
    rate = len(results) / wall if wall else 0.0
    print(f"\n{len(results)} of {args.n} submissions accepted from {args.m} users "
          f"({args.key} delegation keys) in {wall:.1f} s: {rate:.2f} submissions/s, "
          f"{rate * 86400:,.0f} jobs/day")  # fmt: skip
    print(f"  seed: {SEED_ACCEPTANCE:,}/day (gLite 3.1 acceptance), {SEED_STRESS:,}/day "
          f"(its stress tests): x{rate * 86400 / SEED_STRESS:.1f} the stress figure")  # fmt: skip
    for e in errors[:5]:
        print(f"  failed: {e}")
    print(f"\n{'per submission':<40}{'median':>10}{'p95':>10}{'max':>10}")
    rows = [("client: delegation + submission", latencies)]
    for key, label in (("authorization", "CE: authorization (SCAS ce/queue)"),
                       ("glexec", "CE: glexec (front, SCAS ticket, helper)"),
                       ("staging", "CE: staging (tar -x as the pool account)"),
                       ("sbatch", "CE: sbatch"), ("total", "CE: whole submission")):  # fmt: skip
        rows.append((label, [float(r["timings"].get(key, 0.0)) for r in results]))
    for label, values in rows:
        if values:
            print(f"{label:<40}{statistics.median(values) * 1000:>8.1f}ms"
                  f"{pct(values, 0.95) * 1000:>8.1f}ms{max(values) * 1000:>8.1f}ms")  # fmt: skip
    final = sum(v for k, v in counts.items() if k in FINAL)
    left = len(results) - final
    share = 100.0 * left / len(results) if results else 0.0
    print(f"\nafter draining {args.drain:.0f} s: {counts}; non-final {left} ({share:.2f}%; "
          f"seed < 0.3%)")  # fmt: skip


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200, help="jobs to submit (default 200)")
    ap.add_argument("-m", type=int, default=4, help="users, one client thread each (default 4)")
    ap.add_argument("--key", default="ec-p256", choices=("ec-p256", "rsa2048"),
                    help="the CE's delegation key type")
    ap.add_argument("--drain", type=float, default=120.0, help="seconds to wait for the jobs")
    args = ap.parse_args()
    why = missing()
    if why:
        print(f"cannot set up: {why}", file=sys.stderr)
        return 2
    base = tempfile.mkdtemp(prefix="wms-bench-", dir="/tmp")
    try:
        with wms_site(base, users=args.m, delegation_key=args.key) as site:
            users = [f"user{i:03d}" for i in range(1, args.m + 1)]
            warm = CeClient(site.ce_url, site.proxies[users[0]], site.pki.certdir)
            submit(warm, Path(site.proxies[users[0]]).read_bytes(), sandbox_tar())
            warm.close()
            results, latencies, errors, wall = run(site, users, args.n)
            counts = drain(site, results, args.drain)
            report(args, results, latencies, errors, wall, counts)
    finally:
        shutil.rmtree(base, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
