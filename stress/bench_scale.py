"""Warm decisions as the site grows: 10 to 100,000 leases, and a 100,000-line passwd.

    python -m stress.bench_scale [--leases 10,1000,100000] [--passwd 0,100000]
                                 [--queries 300] [--repeats 3] [--cpu N] [--json]

For each combination this builds the one-user site of :mod:`stress.bench_decision`, adds
that many other leases to its gridmapdir (each a filler account linked by a lease name, as
a busy site's directory holds them) and, for a non-zero ``--passwd``, points the account
lookups at a copy of /etc/passwd with that many more lines (``lcmaps.accounts.use``; the
system's file is not touched). It primes the lease store as ``scas-server`` does at start-up,
takes the user's lease, and times warm decisions in-process, pinned to one core.

The figure to read is the last column: each configuration's median over the smallest one's,
measured in the same run. Root is needed for the two pool accounts, as in bench_decision.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from typing import Any

from safetext import one_line as safe
from stress import bench_decision as site


def _fill_leases(gridmapdir: str, count: int) -> None:
    """``count`` filler accounts, each held by its own lease name."""
    from leases.gridmapdir import GridmapDir

    gmd = GridmapDir(gridmapdir)
    for i in range(count):
        entry = os.path.join(gridmapdir, f"fill{i:06d}")
        open(entry, "w").close()
        os.link(entry, os.path.join(gridmapdir, gmd._leasefile(f"/DC=org/CN=Filler {i}", None)))


def _big_passwd(work: str, lines: int) -> str:
    path = os.path.join(work, "passwd")
    with open("/etc/passwd") as src, open(path, "w") as out:
        out.write(src.read())
        for i in range(lines):
            out.write(f"filler{i:06d}:x:{300000 + i}:{300000 + i}::/nonexistent:/bin/false\n")
    return path


def measure(leases: int, passwd_lines: int, queries: int, repeats: int) -> dict[str, Any]:
    from client import xacml
    from lcmaps import accounts
    from scas_server.config import load_config
    from scas_server.decision import build_pipeline
    from scas_server.gunicorn_conf import prime_lease_stores
    from scas_server.peer import Peer

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as work:
        pki, user = site.write_site(work)
        _fill_leases(os.path.join(work, "gridmapdir"), leases)
        previous = None
        if passwd_lines:
            previous = accounts.use(accounts.NameService(passwd=_big_passwd(work, passwd_lines)))
        try:
            pipeline = build_pipeline(load_config(os.path.join(work, "scas.yaml")))
            prime_lease_stores(pipeline)
            chain = site.fresh_chains(pki, user, 1)[0]
            body = xacml.build_request(subject_dn=site.DN, cert_chain=chain, resource="ce",
                                       action="queue", request_id="SCALE")  # fmt: skip
            peer = Peer("unix", uid=os.getuid())
            first = pipeline.decide(body, peer)
            if first.record.decision != "Permit":
                raise site.BenchError(f"expected Permit: {first.record.reason}", 1)
            time.sleep(site.RACY_WAIT)  # the site's files and the passwd copy settle
            medians = []
            for _ in range(repeats):
                samples = site.timed_each(lambda b: pipeline.decide(b, peer), [body] * queries)
                medians.append(statistics.median(samples))
        finally:
            if previous is not None:
                accounts.use(previous)
    return {"leases": leases, "passwd_lines": passwd_lines,
            "warm_us": statistics.median(medians) * 1e6,
            "repeat_medians_us": [m * 1e6 for m in medians]}  # fmt: skip


def render(rows: list[dict[str, Any]], cpu: int | None, load: list[float]) -> str:
    base = rows[0]["warm_us"]
    lines = [f"machine: {site.cpu_model()}; pinned to CPU {cpu}; load average before/after "
             f"{load[0]:.1f}/{load[1]:.1f}",
             f"{'leases':>8}{'passwd +lines':>15}{'warm median':>13}{'repeats (us)':>24}"
             f"{'x first row':>13}"]  # fmt: skip
    for r in rows:
        spread = "/".join(f"{m:.0f}" for m in r["repeat_medians_us"])
        lines.append(f"{r['leases']:>8,}{r['passwd_lines']:>15,}{r['warm_us']:>11.0f}us"
                     f"{spread:>24}{r['warm_us'] / base:>12.2f}x")  # fmt: skip
    return "\n".join(lines)


def _ints(text: str) -> list[int]:
    return [int(x) for x in text.split(",") if x.strip()]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_scale", description=__doc__.splitlines()[0])
    parser.add_argument("--leases", type=_ints, default=[10, 1000, 100_000])
    parser.add_argument("--passwd", type=_ints, default=[0, 100_000],
                        help="extra passwd lines per run (0: the system's file)")
    parser.add_argument("--queries", type=int, default=300)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--cpu", type=int, default=None)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    cpu = site.pin(args.cpu)
    before = os.getloadavg()[0]
    rows = []
    try:
        with site.pool_accounts():
            for passwd in args.passwd:
                for leases in args.leases:
                    print(f"measuring {leases} leases, passwd +{passwd} lines ...",
                          file=sys.stderr, flush=True)  # fmt: skip
                    rows.append(measure(leases, passwd, args.queries, args.repeats))
    except site.BenchError as exc:
        print(f"bench_scale: {safe(str(exc))}", file=sys.stderr)
        return exc.code
    load = [before, os.getloadavg()[0]]
    print(json.dumps({"rows": rows, "cpu": cpu, "load": load}, indent=1) if args.json
          else render(rows, cpu, load))  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
