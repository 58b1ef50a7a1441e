"""One-shot commands against the C one-shot: ``lcmaps-run`` (and ``lcas-run`` + ``lcmaps-run``)
beside ``lcmaps_oracle`` (real Debian liblcmaps/liblcas), same lcmaps.db and proxy, one run.

The site: a VOMS proxy made by ``voms-proxy-fake`` (the oracle's make_creds.sh), mapped by a
two-policy lcmaps.db (``voms``: voms_localgroup -> voms_localaccount -> dummy_good;
``standard``: localaccount -> dummy_good) onto ``nobody`` with group ``users`` by the FQAN
(``nogroup`` by the DN alone, so a dropped AC shows); no accounts are created. The LCAS pair
is an allow list: ``oracle_lcas_dnlist.mod -allow F`` for C (run in the same process as its
LCMAPS), ``lcas_userallow.mod F`` for Python (a second process, as the legacy callers run
them). Both sides must give the same answer or the bench stops.

A plain proxy (no AC) gives a second pair: C's VOMS library then has nothing to do, so this
ratio shows Python's fixed start-up cost. Breakdown rows say where the Python time goes: the
same mapping by ``--dn --fqan`` (no credential code), the interpreter alone (``python -c
pass``), and importing the credential code (``import credentials.credential``); these two
end with ``os._exit`` as the commands do.

Runs are interleaved (one of each per round) so drift hits all alike, and the bench is pinned
to one core (``--cpu``; children inherit the affinity) so the figures do not depend on which
core the scheduler picks. Python children get a private bytecode cache (an installed package
has its .pyc; a sandbox's PYTHONDONTWRITEBYTECODE would recompile every module every run), and
the Python commands run from a throw-away venv laid out as a regular install (see
:func:`installed_venv`); one row runs the dev venv's editable console script for comparison.
``--tree DIR`` runs the Python side from another checkout, ``--before DIR`` adds the same rows
from a second one (say, the previous commit), measured in the same rounds.
Prints median, p90 and the p10-p90 spread (noise) per tool, the Python/C ratios of the medians
with the p10-p90 range of the per-round ratios. Goal: ``lcmaps-run`` <= 3x the C one-shot.

    python stress/bench_oneshot.py [-n 50] [--cpu 1] [--tree DIR] [--before DIR] [--keep DIR]
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import shutil
import statistics
import subprocess
import sys
import sysconfig
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(REPO / "tests" / "compat")]

GOAL_X = 3.0
DN = "/DC=org/DC=example/O=Users/CN=Bench User"
FQAN = "/dteam/Role=NULL/Capability=NULL"
BIN = Path(sys.executable).parent


def pct(samples: list[float], q: float) -> float:
    ordered = sorted(samples)
    return ordered[max(0, math.ceil(q * len(ordered)) - 1)]


def lcmaps_db(cfg: Path, plugin_path: bool) -> str:
    head = "path = /usr/lib/lcmaps\n\n" if plugin_path else ""
    return head + (
        f'vomsgroup = "lcmaps_voms_localgroup.mod" "-groupmapfile {cfg}/groupmapfile"\n'
        f'vomsacct = "lcmaps_voms_localaccount.mod" "-gridmapfile {cfg}/voms-mapfile '
        '-use_voms_gid"\n'
        f'local = "lcmaps_localaccount.mod" "-gridmapfile {cfg}/grid-mapfile"\n'
        'good = "lcmaps_dummy_good.mod"\n\n'
        "voms:\nvomsgroup -> vomsacct\nvomsacct -> good\n\n"
        "standard:\nlocal -> good\n"
    )


def setup(base: Path) -> dict[str, list[str]]:
    """Build the oracle and the site: the C commands, and the Python commands' arguments."""
    from oracle import build_oracle, missing_reason

    why = missing_reason()
    if why:
        raise SystemExit(f"C oracle unavailable: {why}")
    oracle = build_oracle(base)
    creds = base / "creds"
    mc = str(oracle.make_creds)
    for step in (["init"], ["user", "bench", DN], ["voms", "bench", "voms", "dteam", FQAN]):
        subprocess.run([mc, str(creds), *step], check=True, capture_output=True)
    proxy = str(creds / "bench" / "voms.pem")
    cfg, c_lcas = base / "site", base / "c-lcas"
    cfg.mkdir(exist_ok=True)
    c_lcas.mkdir(exist_ok=True)
    (cfg / "grid-mapfile").write_text(f'"{DN}" nobody\n')
    (cfg / "voms-mapfile").write_text(f'"{FQAN}" nobody\n')
    (cfg / "groupmapfile").write_text(f'"{FQAN}" users\n')  # DN-only gives nogroup
    (cfg / "allowed").write_text(f'"{DN}"\n')
    (cfg / "lcmaps.db").write_text(lcmaps_db(cfg, plugin_path=True))
    (cfg / "py-lcmaps.db").write_text(lcmaps_db(cfg, plugin_path=False))
    (cfg / "py-lcas.db").write_text(f'pluginname=lcas_userallow.mod,pluginargs="{cfg}/allowed"\n')
    shutil.copyfile(cfg / "lcmaps.db", c_lcas / "lcmaps.db")
    (c_lcas / "lcas.db").write_text(
        f'pluginname={oracle.lcas_dnlist},pluginargs="-allow {cfg}/allowed"\n')
    os.environ.update(X509_CERT_DIR=str(creds / "certificates"),
                      X509_VOMS_DIR=str(creds / "vomsdir"))
    c = [str(oracle.binary), "--pem", proxy]
    plain = str(creds / "bench" / "proxy.pem")
    return {
        "C lcmaps": [*c, "--no-lcas", "--config-dir", str(cfg)],
        "C lcmaps, plain proxy": [str(oracle.binary), "--pem", plain, "--no-lcas",
                                  "--config-dir", str(cfg)],
        "C lcas+lcmaps": [*c, "--config-dir", str(c_lcas)],
        "C lcmaps --dn": [str(oracle.binary), "--no-lcas", "--config-dir", str(cfg), *BY_DN],
        "py": ["--db", str(cfg / "py-lcmaps.db"), "--pem", proxy],
        "py plain": ["--db", str(cfg / "py-lcmaps.db"), "--pem", plain],
        "py lcas": ["--db", str(cfg / "py-lcas.db"), "--pem", proxy],
    }


BY_DN = ["--dn", DN, "--fqan", FQAN]


def python_side(site: dict[str, list[str]], bindir: Path, label: str = ""
                ) -> dict[str, list[str]]:
    """The Python commands of one installed-like venv (``label`` tells two trees apart)."""
    pem_args, db = site["py"], site["py"][:2]
    out = {
        f"lcmaps-run{label}": [str(bindir / "lcmaps-run"), *pem_args],
        f"lcas-run{label}": [str(bindir / "lcas-run"), *site["py lcas"]],
    }
    if not label:
        python = str(bindir / "python")
        out.update({
            "lcmaps-run, editable venv": [str(BIN / "lcmaps-run"), *pem_args],
            "lcmaps-run, plain proxy": [str(bindir / "lcmaps-run"), *site["py plain"]],
            "lcmaps-run --dn": [str(bindir / "lcmaps-run"), *db, *BY_DN],
            # both end like the commands do, with os._exit: no teardown counted
            "python -c pass": [python, "-c", "import os; os._exit(0)"],
            "import credentials": [python, "-c", "import os, credentials.credential; "
                                   "os._exit(0)"],
        })
    return out


SCRIPT = "#!{python}\nimport sys\nfrom {package}.cli import main\nsys.exit(main())\n"


def installed_venv(venv: Path, tree: str) -> Path:
    """A venv that sees the package as a regular (wheel) install does: the tree and the dev
    venv's site-packages on sys.path through plain .pth lines, console scripts in bin/.

    The dev venv's editable install runs a meta-path finder from a .pth file on every start
    (about 25 ms here) that a site's installed package does not have."""
    if not (venv / "bin" / "python").exists():
        subprocess.run([os.path.realpath(sys.executable), "-m", "venv", "--without-pip",
                        str(venv)], check=True)
    site = Path(sysconfig.get_paths(vars={"base": str(venv)})["purelib"])
    (site / "scas_stack_bench.pth").write_text(f"{tree}\n{sysconfig.get_paths()['purelib']}\n")
    for package, name in (("lcmaps", "lcmaps-run"), ("lcas", "lcas-run")):
        script = venv / "bin" / name
        script.write_text(SCRIPT.format(python=venv / "bin" / "python", package=package))
        script.chmod(0o755)
    return venv / "bin"


def commands(base: Path, tree: str, before: str | None) -> dict[str, list[str]]:
    """Every timed command: C, Python from ``tree``, and Python from ``before`` if given."""
    os.environ.pop("PYTHONDONTWRITEBYTECODE", None)  # inherited by every command
    os.environ.pop("PYTHONPATH", None)
    os.environ["PYTHONPYCACHEPREFIX"] = str(base / "pycache")
    site = setup(base)
    cmds = {k: v for k, v in site.items() if k.startswith("C ")}
    cmds.update(python_side(site, installed_venv(base / "venv", tree)))
    if before:
        cmds.update(python_side(site, installed_venv(base / "venv-before", before), BEFORE))
    return cmds


BEFORE = " (before)"


@dataclass
class Sample:
    """One call: wall time and the child's CPU time (user + system), seconds."""

    wall: float
    cpu: float


def run_once(cmd: list[str]) -> tuple[Sample, str]:
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    p = subprocess.run(cmd, capture_output=True, text=True)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    if p.returncode != 0:
        raise SystemExit(f"{cmd[0]} exited {p.returncode}: {p.stdout[-300:]} {p.stderr[-300:]}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return Sample(wall, cpu), p.stdout


def check_agree(cmds: dict[str, list[str]]) -> str:
    """Both sides map to the same account (else the comparison means nothing)."""
    _, c_out = run_once(cmds["C lcmaps"])
    c = json.loads(c_out.strip().splitlines()[-1])
    keys = ("decision", "uid", "pgids", "sgids")
    for name in (k for k in cmds if k.startswith("lcmaps-run") and "--dn" not in k
                 and "plain" not in k):
        py = json.loads(run_once(cmds[name])[1])
        if [c[k] for k in keys] != [py[k] for k in keys]:
            raise SystemExit(f"C and {name} disagree: {c} vs {py}")
    run_once(cmds["C lcas+lcmaps"])
    for name in (k for k in cmds if k.startswith("lcas-run")):
        run_once(cmds[name])
    return f"{c['username']} uid {c['uid']} pgids {c['pgids']}"


PAIR = "lcas-run + lcmaps-run"  # the two Python processes a C one-shot does in one


def measure(cmds: dict[str, list[str]], n: int) -> dict[str, list[Sample]]:
    labels = ["", BEFORE] if f"lcmaps-run{BEFORE}" in cmds else [""]
    out: dict[str, list[Sample]] = {k: [] for k in cmds if not k.startswith("lcas-run")}
    out.update({PAIR + label: [] for label in labels})
    for _ in range(n):
        for name in out:
            if name.startswith(PAIR):
                label = name[len(PAIR):]
                a = run_once(cmds[f"lcas-run{label}"])[0]
                b = run_once(cmds[f"lcmaps-run{label}"])[0]
                out[name].append(Sample(a.wall + b.wall, a.cpu + b.cpu))
            else:
                out[name].append(run_once(cmds[name])[0])
    return out


def machine() -> str:
    model = "unknown CPU"
    with open("/proc/cpuinfo") as fh:
        for line in fh:
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    load = " ".join(f"{x:.2f}" for x in os.getloadavg())
    return (f"{model}, {os.cpu_count()} cores, Python {sys.version.split()[0]}, "
            f"load average {load}")


RATIOS: tuple[tuple[str, str], ...] = (
    ("lcmaps-run", "C lcmaps"), (PAIR, "C lcas+lcmaps"),
    ("lcmaps-run, plain proxy", "C lcmaps, plain proxy"), ("lcmaps-run --dn", "C lcmaps --dn"))


def report(res: dict[str, list[Sample]], n: int, cpu: int | None) -> bool:
    where = f"pinned to CPU {cpu}" if cpu is not None else "not pinned"
    print(f"N = {n} interleaved rounds, {where}; per call (fork+exec included), ms")
    head = ("tool", "wall med", "p90", "noise", "cpu med", "noise")
    print("  {:27s} {:>8s} {:>8s} {:>6s} {:>8s} {:>6s}".format(*head))
    for name, samples in res.items():
        wall, used = [x.wall for x in samples], [x.cpu for x in samples]
        print(f"  {name:27s} {statistics.median(wall) * 1e3:8.1f} {pct(wall, 0.9) * 1e3:8.1f}"
              f" {spread(wall):5.0f}% {statistics.median(used) * 1e3:8.1f} {spread(used):5.0f}%")
    print("  (noise: p10-p90 range over the median)")
    met = True
    ratios = RATIOS
    if f"lcmaps-run{BEFORE}" in res:
        ratios += ((f"lcmaps-run{BEFORE}", "C lcmaps"), (PAIR + BEFORE, "C lcas+lcmaps"))
    for py, c in ratios:
        parts = []
        for kind in ("wall", "cpu"):
            a = [getattr(x, kind) for x in res[py]]
            b = [getattr(x, kind) for x in res[c]]
            per = [x / y for x, y in zip(a, b, strict=True) if y > 0]
            ratio = statistics.median(a) / statistics.median(b)
            parts.append(f"{kind} {ratio:5.2f}x (rounds {pct(per, 0.1):.1f}-{pct(per, 0.9):.1f}x)")
            if py == "lcmaps-run" and kind == "wall":
                met = ratio <= GOAL_X
        line = f"  {py} / {c}: " + ", ".join(parts)
        if py == "lcmaps-run":
            line += f"; goal <= {GOAL_X:g}x wall: {'met' if met else 'missed'}"
        print(line)
    return met


def spread(samples: list[float]) -> float:
    med = statistics.median(samples)
    return (pct(samples, 0.9) - pct(samples, 0.1)) / med * 100 if med > 0 else 0.0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("-n", type=int, default=50, help="interleaved rounds (default 50)")
    ap.add_argument("--cpu", type=int, default=(os.cpu_count() or 1) - 1,
                    help="core to pin to (default the last); -1 to not pin")
    ap.add_argument("--keep", help="build the site in DIR and keep it")
    ap.add_argument("--tree", default=str(REPO),
                    help="run the Python side from this checkout (default: this one)")
    ap.add_argument("--before", metavar="TREE",
                    help="also run the Python side from this checkout, in the same rounds")
    args = ap.parse_args()
    cpu = args.cpu if args.cpu >= 0 else None
    if cpu is not None:
        os.sched_setaffinity(0, {cpu})  # inherited by every command run below
    base = Path(args.keep) if args.keep else Path(tempfile.mkdtemp(prefix="bench-oneshot-"))
    base.mkdir(parents=True, exist_ok=True)
    try:
        cmds = commands(base, os.path.abspath(args.tree), args.before and
                        os.path.abspath(args.before))
        print(f"{machine()}; Python side from {args.tree}"
              + (f", before: {args.before}" if args.before else ""))
        print(f"both map the VOMS proxy to {check_agree(cmds)}")
        for cmd in cmds.values():  # warm the page and bytecode caches; not counted
            run_once(cmd)
        ok = report(measure(cmds, args.n), args.n, cpu)
        print(f"load average after: {' '.join(f'{x:.2f}' for x in os.getloadavg())}")
    finally:
        if not args.keep:
            shutil.rmtree(base, ignore_errors=True)
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
