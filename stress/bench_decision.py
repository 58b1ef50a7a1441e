"""In-process cost of one decision beside the cryptographic floor, measured in one run.

    python -m stress.bench_decision [--queries 200] [--repeats 5] [--cpu N] [--json]

Production's common case is **cold**: every payload brings a newly delegated VOMS
proxy, so no verification cache can answer. This builds the Pipeline the server
builds (:func:`scas_server.decision.build_pipeline` on a YAML site: LCAS userban,
LCMAPS ``verify_proxy -> voms_localgroup -> voms_poolaccount``), takes the user's
lease once, then times :meth:`Pipeline.decide` on

* **cold** queries: a fresh VOMS proxy (new proxy certificate, new AC) each time,
  the user's lease already held;
* **warm** queries: the same request again;
* **credential only**: :class:`~credentials.credential_cache.CredentialCache` on fresh
  proxies (cold) and on one proxy again (warm), the share :mod:`credentials` owns.

The **floor** is measured in the same run: the median RSA-2048 PKCS#1 v1.5/SHA-256
verify time times the signatures the chain needs (CA->user, user->proxy per level,
VOMS->AC: 3 for a one-level VOMS proxy, 4 for two levels).

Pinning: the process is pinned to one core (``os.sched_setaffinity``, default the
last allowed CPU) so the floor and the decisions are timed on the same core with no
migration; other processes on that core still add noise, which is why every figure
is a median, each repeat is compared with its own floor, and the spread of the repeat
medians and the load average are printed. Pool accounts must exist for ``getpwnam``:
as root two ``bdpool`` accounts are created for the run and removed after; as another
user they must exist already, else the run stops with exit 2. Exit 1: a query was not
answered Permit (the benchmark would measure a refusal).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import pwd
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

from safetext import one_line as safe

POOL = "bdpool"
ACCOUNTS = (f"{POOL}001", f"{POOL}002")
DN = "/DC=org/DC=example/O=Users/CN=Bench User"
FQANS = ("/dteam/Role=NULL/Capability=NULL",)
#: the credentials caches re-read files changed within the last 2 s on every query
RACY_WAIT = 2.5


class BenchError(Exception):
    """The run cannot measure what it should; ``code`` is the exit status."""

    def __init__(self, reason: str, code: int) -> None:
        super().__init__(reason)
        self.code = code


def pin(cpu: int | None) -> int | None:
    """Pin this process to one CPU (the last allowed one by default); None where unsupported."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    allowed = sorted(os.sched_getaffinity(0))
    chosen = allowed[-1] if cpu is None else cpu
    os.sched_setaffinity(0, {chosen})
    return chosen


@contextmanager
def pool_accounts() -> Iterator[None]:
    """The pool accounts, made for the run when missing (root only) and removed after."""
    made = []
    try:
        for name in ACCOUNTS:
            try:
                pwd.getpwnam(name)
            except KeyError:
                if os.geteuid() != 0:
                    raise BenchError(f"account {name} is missing: run as root or create it "
                                     "(useradd -M -s /usr/sbin/nologin)", 2) from None
                subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
                made.append(name)
        yield
    finally:
        for name in made:
            subprocess.run(["userdel", name], check=False, capture_output=True)


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def build_site(work: str) -> tuple[Any, Any, Any]:
    """(pki, user, pipeline) for a one-user VOMS pool-account site under ``work``."""
    from scas_server.config import load_config
    from scas_server.decision import build_pipeline

    pki, user = write_site(work)
    return pki, user, build_pipeline(load_config(os.path.join(work, "scas.yaml")))


def write_site(work: str, **settings: Any) -> tuple[Any, Any]:
    """(pki, user): the one-user VOMS pool-account site's files and ``work/scas.yaml``.

    ``settings`` are added to the YAML (e.g. ``listen`` and ``tls`` for a served site).
    """
    import yaml

    from testkit.pki import TestPKI

    pki = TestPKI(os.path.join(work, "pki"), reuse_keys=True)
    user = pki.user("bench", DN)
    gridmapdir = os.path.join(work, "gridmapdir")
    os.makedirs(gridmapdir, exist_ok=True)
    for name in ACCOUNTS:
        open(os.path.join(gridmapdir, name), "a").close()
    group = pwd.getpwnam(ACCOUNTS[0]).pw_gid
    import grp

    _write(os.path.join(work, "grid-mapfile"), f'"/dteam/*" .{POOL}\n')
    _write(os.path.join(work, "groupmapfile"), f'"/dteam/*" {grp.getgrgid(group).gr_name}\n')
    _write(os.path.join(work, "ban_users.db"), "# nobody banned\n")
    _write(os.path.join(work, "lcas.db"),
           f'pluginname="lcas_userban.mod",pluginargs="{work}/ban_users.db"\n')
    _write(os.path.join(work, "lcmaps.db"), f"""\
verifyproxy = "lcmaps_verify_proxy.mod" "-certdir {pki.certdir}"
vomslocalgroup = "lcmaps_voms_localgroup.mod" "-groupmapfile {work}/groupmapfile" "-mapmin 1"
vomspoolaccount = "lcmaps_voms_poolaccount.mod" "-gridmapfile {work}/grid-mapfile"
                  "-gridmapdir {gridmapdir}" "-override_inconsistency"

gatekeeper:
verifyproxy -> vomslocalgroup
vomslocalgroup -> vomspoolaccount
""")
    config = {
        "listen": f"unix:{work}/scas.sock",
        "trust": {"certdir": pki.certdir, "vomsdir": pki.vomsdir},
        "lcas": {"db": os.path.join(work, "lcas.db")},
        "lcmaps": {"db": os.path.join(work, "lcmaps.db")},
        "policies": [{"resource": "ce", "action": "queue", "lcmaps": ["gatekeeper"]}],
        "audit": {"file": os.path.join(work, "audit.log")},
        "issuer": "scas.bench",
        **settings,
    }
    with open(os.path.join(work, "scas.yaml"), "w") as fh:
        yaml.safe_dump(config, fh)
    return pki, user


def fresh_chains(pki: Any, user: Any, count: int, levels: int = 1) -> list[bytes]:
    """``count`` newly delegated VOMS proxies of ``user``, as cert-chain PEM (no key)."""
    from credentials.credential import load_proxy_file

    out = []
    for _ in range(count):
        path = pki.proxy(user, fqans=FQANS)
        for _level in range(levels - 1):
            path = pki.proxy(user, parent=path)
        out.append(load_proxy_file(path, with_key=False).pem_chain())
        os.unlink(path)
    return out


class Floor:
    """Times one RSA-2048 PKCS#1 v1.5 SHA-256 verification (the floor unit) on demand."""

    def __init__(self) -> None:
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import padding, rsa

        key = rsa.generate_private_key(65537, 2048)
        self.data = os.urandom(1200)  # about a tbsCertificate
        self.sig = key.sign(self.data, padding.PKCS1v15(), hashes.SHA256())
        self.pub = key.public_key()
        self.padding, self.hash = padding.PKCS1v15(), hashes.SHA256()

    def measure(self, rounds: int = 400) -> float:
        """Median seconds per verification over ``rounds`` (batches of 20)."""
        samples = []
        for _ in range(rounds // 20):
            start = time.perf_counter()
            for _ in range(20):
                self.pub.verify(self.sig, self.data, self.padding, self.hash)
            samples.append((time.perf_counter() - start) / 20)
        return statistics.median(samples)


def timed_each(call: Callable[[bytes], object], items: list[bytes]) -> list[float]:
    """Seconds each ``call(item)`` took."""
    out = []
    for item in items:
        start = time.perf_counter()
        call(item)
        out.append(time.perf_counter() - start)
    return out


def summary(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {"median": statistics.median(ordered),
            "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))]}


def run(queries: int, repeats: int, levels: int) -> dict[str, Any]:
    from client import xacml
    from credentials.credential import TrustStore
    from credentials.credential_cache import CredentialCache
    from scas_server.peer import Peer

    peer = Peer("unix", uid=os.getuid())
    with tempfile.TemporaryDirectory(prefix="bench-decision-") as work:
        pki, user, pipeline = build_site(work)

        def body(chain: bytes) -> bytes:
            return xacml.build_request(subject_dn=DN, cert_chain=chain, resource="ce",
                                       action="queue", request_id="BENCH")

        def decide(data: bytes) -> None:
            outcome = pipeline.decide(data, peer)
            if outcome.record.decision != "Permit":
                raise BenchError(f"expected Permit, got {outcome.record.decision}: "
                                 f"{outcome.record.reason}", 1)

        first = body(fresh_chains(pki, user, 1, levels)[0])
        decide(first)  # takes the lease, loads the CA store, CRL and VOMS server chain
        time.sleep(RACY_WAIT)  # let the site's files settle (see chain_cache.RACY_SECONDS)
        decide(first)
        trust = TrustStore(pki.certdir, pki.vomsdir)
        floor = Floor()
        rounds: list[dict[str, Any]] = []
        for _ in range(repeats):
            chains = fresh_chains(pki, user, 2 * queries, levels)
            bodies = [body(c) for c in chains[:queries]]
            creds = CredentialCache(trust)
            unit = floor.measure()
            rounds.append({
                "cold": timed_each(decide, bodies),
                "warm": timed_each(decide, [first] * queries),
                "credential": timed_each(creds.verify, chains[queries:]),
                "credential_warm": timed_each(creds.verify, [chains[-1]] * queries),
            })
            rounds[-1]["unit"] = statistics.median([unit, floor.measure()])
    return summarise(rounds, levels, queries)


def summarise(rounds: list[dict[str, Any]], levels: int, queries: int) -> dict[str, Any]:
    """Medians over every sample; ratios to the floor per repeat (each repeat's own floor)."""
    needed = 2 + levels  # CA->user, one per proxy level, VOMS->AC
    units = [r["unit"] for r in rounds]
    unit = statistics.median(units)
    result: dict[str, Any] = {
        "rsa2048_verify_us": unit * 1e6, "verifications": needed, "floor_us": unit * needed * 1e6,
        "floor_repeat_us": [u * needed * 1e6 for u in units], "repeats": len(rounds),
        "queries": queries, "levels": levels,
    }
    for kind in ("cold", "warm", "credential", "credential_warm"):
        every = [s for r in rounds for s in r[kind]]
        medians = [statistics.median(r[kind]) for r in rounds]
        ratios = [statistics.median(r[kind]) / (r["unit"] * needed) for r in rounds]
        stats = summary(every)
        result[kind] = {
            "median_us": stats["median"] * 1e6,
            "p90_us": stats["p90"] * 1e6,
            "repeat_medians_us": [m * 1e6 for m in medians],
            "noise_pct": 100 * (max(medians) - min(medians)) / statistics.median(medians),
            "x_floor": statistics.median(ratios),
            "x_floor_range": [min(ratios), max(ratios)],
        }
    return result


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def render(result: dict[str, Any], cpu: int | None) -> str:
    load = "/".join(f"{x:.1f}" for x in result["load"])
    lines = [
        f"machine: {cpu_model()}, {os.cpu_count()} CPUs, Python {platform.python_version()}",
        f"pinned to CPU {cpu if cpu is not None else '(not supported)'} with "
        f"os.sched_setaffinity (floor and decisions on the same core); load average "
        f"before/after {load}",
        f"floor: RSA-2048 verify {result['rsa2048_verify_us']:.1f} us x "
        f"{result['verifications']} verifications = {result['floor_us']:.0f} us",
        f"{'in-process':<24}{'median':>10}{'p90':>10}{'x floor':>9}{'noise':>8}",
    ]
    names = {"cold": "cold decision", "warm": "warm decision",
             "credential": "cold credential only", "credential_warm": "warm credential only"}
    for kind, label in names.items():
        r = result[kind]
        low, high = r["x_floor_range"]
        lines.append(f"{label:<24}{r['median_us'] / 1000:>8.3f}ms{r['p90_us'] / 1000:>8.3f}ms"
                     f"{r['x_floor']:>8.1f}x{r['noise_pct']:>7.1f}%   ({low:.1f}-{high:.1f}x)")
    floors = ", ".join(f"{f:.0f}" for f in result["floor_repeat_us"])
    lines.append(f"({result['queries']} queries x {result['repeats']} repeats, "
                 f"{result['levels']}-level VOMS proxy. x floor: median over the repeats of "
                 "each repeat's median / its own floor, range in brackets; noise: spread of "
                 f"the repeat medians over their median; floor per repeat (us): {floors})")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench_decision", description=__doc__.splitlines()[0])
    parser.add_argument("--queries", type=int, default=200, help="queries per repeat")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--levels", type=int, default=1, choices=(1, 2),
                        help="proxy levels below the end-entity")
    parser.add_argument("--cpu", type=int, default=None, help="CPU to pin to (default: last)")
    parser.add_argument("--json", action="store_true", help="print the figures as JSON")
    args = parser.parse_args(argv)
    if args.queries < 1 or args.repeats < 2:
        parser.error("need at least 1 query and 2 repeats")
    try:
        cpu = pin(args.cpu)
    except OSError as exc:
        print(f"bench_decision: cannot pin to CPU {args.cpu}: {exc.strerror}", file=sys.stderr)
        return 2
    before = os.getloadavg()[0]
    try:
        with pool_accounts():
            result = run(args.queries, args.repeats, args.levels)
    except BenchError as exc:
        print(f"bench_decision: {safe(str(exc))}", file=sys.stderr)
        return exc.code
    result["cpu"] = cpu
    result["load"] = [before, os.getloadavg()[0]]
    print(json.dumps(result, indent=1) if args.json else render(result, cpu))
    return 0


if __name__ == "__main__":
    sys.exit(main())
