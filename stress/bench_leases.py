"""Lease throughput of leases.gridmapdir.GridmapDir, and what a new worker pays first.

Prints mappings/s for (1) a lease already held (the common case: lstat the
lease, find its pool entry through the inode cache, re-check it, utime) and
(2) a first lease (the next entry of the in-memory free list, re-checked and
claimed), for gridmapdirs of 100, 10,000 and 100,000 entries, half of them
leased. Then, for a new worker (a new GridmapDir object), the first lookup
of a held lease and the first lease, without and with ``prime()`` (one
directory read, which scas-server does at start-up and on reload).
Each measurement is time-boxed, so the whole run takes well under 2 minutes.

    python stress/bench_leases.py [--dir /dev/shm] [--seconds 1.5]

The default directory is the system temp dir (say which file system you
measured: tmpfs and ext4 give different first-lease figures).
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import tempfile
import time

from leases.gridmapdir import GridmapDir, PoolExhausted


def fs_type(path: str) -> str:
    try:
        out = subprocess.run(
            ["findmnt", "-n", "-o", "FSTYPE", "-T", path],
            capture_output=True,
            text=True,
            check=True,
        )
        return out.stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def build(base: str, size: int) -> tuple[str, list[str]]:
    d = tempfile.mkdtemp(prefix=f"bench{size}-", dir=base)
    for i in range(size):
        open(os.path.join(d, f"opool{i:06d}"), "w").close()
    gmd = GridmapDir(d)
    held = [f"/DC=org/DC=bench/CN=Held {i}" for i in range(size // 2)]
    # Lease half of the pool by direct links (fast set-up, same on-disk state).
    free = os.listdir(d)
    for dn, entry in zip(held, free, strict=False):
        os.link(os.path.join(d, entry), os.path.join(d, gmd._leasefile(dn, None)))
    return d, held


def rate(func: object, items: list[str], seconds: float) -> tuple[float, int]:
    assert callable(func)
    n = 0
    start = time.perf_counter()
    deadline = start + seconds
    while time.perf_counter() < deadline and n < len(items):
        func(items[n])
        n += 1
    elapsed = time.perf_counter() - start
    return (n / elapsed if elapsed else 0.0), n


def _ms(func: object) -> float:
    assert callable(func)
    t0 = time.perf_counter()
    func()
    return (time.perf_counter() - t0) * 1000


def _first(gmd: GridmapDir, dn: str) -> None:
    try:
        gmd.acquire("opool", dn)
    except PoolExhausted:
        pass


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--sizes", default="100,10000,100000")
    args = ap.parse_args()
    print(f"gridmapdir base: {args.dir} ({fs_type(args.dir)}), half of each pool leased")
    print(f"{'':>8} {'steady state':^25} | {'new worker, no prime':^21} | "
          f"{'new worker after prime()':^31}")
    print(f"{'entries':>8} {'held/s':>10} {'first lease/s':>14} | {'reuse ms':>9} "
          f"{'lease ms':>9}   | {'prime ms':>9} {'reuse ms':>9} {'lease ms':>9}")
    for size in (int(s) for s in args.sizes.split(",")):
        d, held = build(args.dir, size)
        try:
            cold = GridmapDir(d)
            cold_reuse = _ms(lambda g=cold, dn=held[0]: g.acquire("opool", dn))
            cold_lease = _ms(lambda g=cold: _first(g, "/DC=org/DC=bench/CN=Cold 0"))
            warm = GridmapDir(d)
            prime_ms = _ms(warm.prime)
            primed_reuse = _ms(lambda g=warm, dn=held[1]: g.acquire("opool", dn))
            primed_lease = _ms(lambda g=warm: _first(g, "/DC=org/DC=bench/CN=Primed 0"))
            held_rate, _ = rate(lambda dn, g=warm: g.acquire("opool", dn), held * 20,
                                args.seconds)  # fmt: skip
            fresh = [f"/DC=org/DC=bench/CN=New {i}" for i in range(size)]
            first_rate, _ = rate(lambda dn, g=warm: _first(g, dn), fresh, args.seconds)
            print(f"{size:>8} {held_rate:>10,.0f} {first_rate:>14,.0f} | {cold_reuse:>9.1f} "
                  f"{cold_lease:>9.1f}   | {prime_ms:>9.1f} {primed_reuse:>9.2f} "
                  f"{primed_lease:>9.2f}")
        finally:
            shutil.rmtree(d)


if __name__ == "__main__":
    main()
