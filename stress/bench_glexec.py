"""glexec end to end, timed: ``glexec /bin/true`` as the pilot against a live SCAS (mutual TLS,
v2 tickets) and the real setuid helper, next to ``sudo -u POOL /bin/true`` (``runuser -u``
when sudo is not installed) and the C LCMAPS one-shot oracle (``lcmaps_oracle --no-lcas``
with a one-line localaccount lcmaps.db), N times each.

Needs root (accounts, a setuid-root helper): the setup is tests/test_glexec_e2e.py's
`e2e_site`. Prints median and p99 wall time per tool (glexec against the central SCAS over
mutual TLS, and against a node-local SCAS on a Unix socket), the ratios glexec/oracle and
glexec/sudo, and the goals: median <= 2.5x the C one-shot, p99 <= 150 ms.

    sudo .venv/bin/python stress/bench_glexec.py [-n 200]
"""

from __future__ import annotations

import argparse
import math
import shutil
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from test_glexec_e2e import E2E, POOL1, e2e_site  # noqa: E402

GOAL_MEDIAN_X = 2.5
GOAL_P99_MS = 150.0


def p99(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(0.99 * len(ordered)) - 1)]


def timed(n: int, once: Callable[[], int]) -> list[float]:
    once()  # warm-up, not counted
    out = []
    for _ in range(n):
        start = time.perf_counter()
        code = once()
        out.append(time.perf_counter() - start)
        if code != 0:
            raise SystemExit(f"a timed run exited {code}")
    return out


def oracle_setup(e2e: E2E) -> tuple[list[str], str]:
    """(command, "") for the C one-shot, or ([], why not)."""
    from compat.oracle import build_oracle, missing_reason

    why = missing_reason()
    if why:
        return [], why
    oracle = build_oracle(e2e.base)
    cfg = e2e.base / "oracle-etc"
    cfg.mkdir()
    dn = "/DC=org/DC=example/O=Users/CN=Carol Client"
    (cfg / "grid-mapfile").write_text(f'"{dn}" {POOL1}\n')
    (cfg / "lcmaps.db").write_text(
        "path = /usr/lib/lcmaps\n\n"
        f'local = "lcmaps_localaccount.mod" "-gridmapfile {cfg}/grid-mapfile"\n'
        'good = "lcmaps_dummy_good.mod"\n\n'
        "standard:\nlocal -> good\n"
    )
    cmd = [str(oracle.binary), "--no-lcas", "--dn", dn, "--config-dir", str(cfg)]
    probe = subprocess.run(cmd, capture_output=True, text=True)
    if probe.returncode != 0:
        return [], f"oracle exited {probe.returncode}: {probe.stdout[-300:]} {probe.stderr[-300:]}"
    return cmd, ""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=200, help="runs per tool (default 200)")
    args = ap.parse_args()
    with e2e_site(unix=True) as made:
        if isinstance(made, str):
            print(f"cannot set up: {made}", file=sys.stderr)
            return 2
        e2e = made
        env = e2e.env()
        kw = e2e.popen_args(["/bin/true"], env)
        check = subprocess.run(**kw, capture_output=True, text=True)
        if check.returncode != 0:
            print(f"glexec /bin/true exited {check.returncode}: {check.stderr}", file=sys.stderr)
            return 1

        def glexec() -> int:
            return subprocess.run(**kw, stdout=subprocess.DEVNULL).returncode

        # the node-local mode: SCAS on a Unix socket on the worker node, no TLS
        unix_conf = e2e.write_conf(e2e.base / "front-unix.conf", scas_endpoints=None,
                                   scas_socket=str(e2e.unix_sock))  # fmt: skip
        unix_env = e2e.env(conf=unix_conf)
        del unix_env["X509_USER_PROXY"]
        unix_kw = e2e.popen_args(["/bin/true"], unix_env)

        def glexec_unix() -> int:
            return subprocess.run(**unix_kw, stdout=subprocess.DEVNULL).returncode

        if shutil.which("sudo"):
            switch, switch_cmd = "sudo", ["sudo", "-n", "-u", POOL1, "/bin/true"]
        else:
            switch, switch_cmd = "runuser", ["runuser", "-u", POOL1, "--", "/bin/true"]

        def sudo() -> int:
            return subprocess.run(switch_cmd).returncode

        oracle_cmd, oracle_why = oracle_setup(e2e)

        def oracle() -> int:
            return subprocess.run(oracle_cmd, stdout=subprocess.DEVNULL,
                                  stderr=subprocess.DEVNULL).returncode  # fmt: skip

        results: dict[str, list[float]] = {}
        results["glexec"] = timed(args.n, glexec)
        results["glexec-unix"] = timed(args.n, glexec_unix)
        results[switch] = timed(args.n, sudo)
        if oracle_cmd:
            results["oracle"] = timed(args.n, oracle)
        else:
            print(f"C oracle skipped: {oracle_why}")

    print(f"N = {args.n} per tool; wall time per call, ms (glexec: front + SCAS over mutual "
          "TLS + setuid helper)")  # fmt: skip
    med = {k: statistics.median(v) * 1000 for k, v in results.items()}
    tail = {k: p99(v) * 1000 for k, v in results.items()}
    for name in results:
        print(f"  {name:11s} median {med[name]:8.2f}   p99 {tail[name]:8.2f}")
    if "oracle" in med:
        ratio = med["glexec"] / med["oracle"]
        ok = "met" if ratio <= GOAL_MEDIAN_X else "missed"
        print(f"  glexec/oracle (median) {ratio:6.2f}x   goal <= {GOAL_MEDIAN_X}x: {ok}")
        print(f"  glexec-unix/oracle (median) {med['glexec-unix'] / med['oracle']:6.2f}x "
              "(node-local SCAS on a Unix socket: no TLS)")
    print(f"  glexec/{switch} (median) {med['glexec'] / med[switch]:6.2f}x")
    ok = "met" if tail["glexec"] <= GOAL_P99_MS else "missed"
    print(f"  glexec p99 {tail['glexec']:.1f} ms   goal <= {GOAL_P99_MS:.0f} ms: {ok}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
