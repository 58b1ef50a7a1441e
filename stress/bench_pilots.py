"""The 2009 SA3 SCAS stress harness, redone: N concurrent pilots looping ``glexec /usr/bin/id``.

Each pilot is a loop (a thread here, launching real processes) that runs the installed
``glexec`` console script as the unprivileged pilot account, with the pilot's own proxy
(``/dteam/Role=pilot``) as its TLS identity and a real payload proxy (Carol's or Alice's,
alternating) as ``GLEXEC_CLIENT_CERT``, against a live ``scas-server`` whose lcmaps.db leases
pool accounts from a gridmapdir, and the real setuid helper. The site is
tests/test_pilot_site.py's (root: throw-away accounts, a setuid-root helper).

Prints the glexec response time in the seed's zones ([0,2) s, [2,10) s, >= 10 s), p50/p99,
errors per million requests and the request rate, then audits the leases: every DN holds
exactly one pool account, no account is held twice, every Permit in the audit log names
the account its DN's lease links to, and every run printed the uid of that account.

    sudo .venv/bin/python stress/bench_pilots.py [--pilots 4] [--duration 60] [--requests N]

Seed to beat (Dec 2008, SA3): 98.16% / 1.80% / 0.04% in the three zones and 1 error in
3,306,508 requests at about 10 Hz. Bounded: stops after --duration seconds or --requests.
"""

from __future__ import annotations

import argparse
import math
import os
import pwd
import shutil
import statistics
import subprocess
import sys
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests"), str(REPO)]

from test_glexec_e2e import CONSOLE_SCRIPT  # noqa: E402
from test_pilot_site import (  # noqa: E402
    ALICE_DN,
    CAROL_DN,
    MEMBER_FQAN,
    PILOT,
    POOL,
    PilotSite,
    pilot_site,
)

ZONES = ((0.0, 2.0, "[0,2) s"), (2.0, 10.0, "[2,10) s"), (10.0, math.inf, ">= 10 s"))
SEED = {"[0,2) s": 98.16, "[2,10) s": 1.80, ">= 10 s": 0.04}


def payload_proxies(ps: PilotSite) -> dict[str, Path]:
    """Carol's and Alice's VOMS proxies, as the pilot's own 0600 files."""
    pki = ps.site.pki
    users = {CAROL_DN: ps.site.user, ALICE_DN: pki.user("alice-stress", ALICE_DN)}
    out = {}
    uid, gid = ps.ids[PILOT], ps.ids[f"{PILOT}:gid"]
    for i, (dn, user) in enumerate(users.items()):
        dst = ps.pilot_dir / f"stress-payload-{i}.pem"
        shutil.copyfile(pki.proxy(user, fqans=[MEMBER_FQAN], vo="dteam"), dst)
        os.chown(dst, uid, gid)
        os.chmod(dst, 0o600)
        out[dn] = dst
    return out


def pilot_env(ps: PilotSite, payload: Path) -> dict[str, str]:
    return {
        "PATH": "/usr/bin:/bin", "HOME": str(ps.pilot_dir),
        "XDG_RUNTIME_DIR": str(ps.pilot_dir / "run"),
        "X509_USER_PROXY": str(ps.proxies["role"]), "X509_CERT_DIR": ps.site.pki.certdir,
        "GLEXEC_CLIENT_CERT": str(payload), "GLEXEC_CONFIG": str(ps.base / "front.conf"),
    }  # fmt: skip


class Tally:
    """Every call's (seconds, exit code, uid printed, DN asked for), shared by the pilots."""

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.calls: list[tuple[float, int, str, str]] = []

    def add(self, seconds: float, code: int, uid: str, dn: str) -> None:
        with self.lock:
            self.calls.append((seconds, code, uid, dn))


def pilot_loop(ps: PilotSite, proxies: dict[str, Path], tally: Tally, index: int,
               stop_at: float, budget: list[int]) -> None:  # fmt: skip
    dns = list(proxies)
    n = index
    while time.monotonic() < stop_at:
        with tally.lock:
            if budget[0] <= 0:
                return
            budget[0] -= 1
        dn = dns[n % len(dns)]
        n += 1
        start = time.perf_counter()
        proc = subprocess.run(
            [str(ps.python), str(CONSOLE_SCRIPT), "/usr/bin/id", "-u"],
            env=pilot_env(ps, proxies[dn]), user=PILOT, group=PILOT, extra_groups=[],
            cwd="/", capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        tally.add(time.perf_counter() - start, proc.returncode, proc.stdout.strip(), dn)


def lease_audit(ps: PilotSite, tally: Tally) -> list[str]:
    """Problems found in the gridmapdir, the audit log and the uids the payloads printed."""
    from leases.names import encode_lease

    gmd = Path(ps.site.directory) / "gridmapdir"
    accounts = {os.stat(gmd / name).st_ino: name for name in POOL}
    problems: list[str] = []
    held: dict[str, str] = {}
    for entry in os.listdir(gmd):
        if not entry.startswith("%"):
            continue
        st = os.stat(gmd / entry)
        account = accounts.get(st.st_ino)
        if account is None:
            problems.append(f"lease {entry} links to no pool account")
        elif account in held.values():
            problems.append(f"{account} is held twice")
        else:
            held[entry] = account
    for dn in {c[3] for c in tally.calls}:
        if encode_lease(dn) not in held:
            problems.append(f"{dn} holds no lease")
    by_dn = {dn: held.get(encode_lease(dn)) for dn in {c[3] for c in tally.calls}}
    uid_of = {a: str(pwd.getpwnam(a).pw_uid) for a in POOL}
    for _seconds, code, uid, dn in tally.calls:
        if code == 0 and by_dn.get(dn) and uid != uid_of[by_dn[dn] or ""]:
            problems.append(f"a run for {dn} printed uid {uid}, not {by_dn[dn]}'s")
    permits = [a for a in ps.audit() if a.get("decision") == "Permit"]
    for line in permits:
        want = by_dn.get(str(line.get("dn")))
        if want is not None and line.get("account") != want:
            problems.append(f"audit: {line.get('request_id')} mapped {line.get('dn')} to "
                            f"{line.get('account')}, its lease is {want}")  # fmt: skip
    if len(permits) < sum(1 for c in tally.calls if c[1] == 0):
        problems.append(f"{len(permits)} Permit lines for more successful runs")
    return problems[:20]


def report(tally: Tally, wall: float, pilots: int) -> None:
    times = sorted(c[0] for c in tally.calls)
    n = len(times)
    errors = sum(1 for c in tally.calls if c[1] != 0)
    print(f"{pilots} pilots, {n} requests in {wall:.1f} s ({n / wall:.1f} Hz)")
    for low, high, name in ZONES:
        share = 100.0 * sum(1 for t in times if low <= t < high) / max(n, 1)
        print(f"  {name:9s} {share:7.2f} %   (seed {SEED[name]:.2f} %)")
    p99 = times[max(0, math.ceil(0.99 * n) - 1)] if n else float("nan")
    print(f"  p50 {statistics.median(times) * 1000:.1f} ms   p99 {p99 * 1000:.1f} ms")
    print(f"  errors: {errors} ({errors / max(n, 1) * 1e6:.0f} per million; seed 0.3 per million)")
    codes: dict[int, int] = {}
    for c in tally.calls:
        codes[c[1]] = codes.get(c[1], 0) + 1
    print(f"  exit codes: {dict(sorted(codes.items()))}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--pilots", type=int, default=4, help="concurrent pilots (default 4)")
    ap.add_argument("--duration", type=float, default=60.0, help="seconds (default 60)")
    ap.add_argument("--requests", type=int, default=1_000_000, help="at most this many")
    args = ap.parse_args()
    with pilot_site() as made:
        if isinstance(made, str):
            print(f"cannot set up: {made}", file=sys.stderr)
            return 2
        ps = made
        proxies = payload_proxies(ps)
        tally = Tally()
        budget = [args.requests]
        start = time.monotonic()
        threads = [threading.Thread(target=pilot_loop,
                                    args=(ps, proxies, tally, i, start + args.duration, budget))
                   for i in range(args.pilots)]  # fmt: skip
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        report(tally, time.monotonic() - start, args.pilots)
        problems = lease_audit(ps, tally)
        print("lease audit: " + ("consistent" if not problems else "; ".join(problems)))
        return 0 if not problems else 1


if __name__ == "__main__":
    sys.exit(main())
