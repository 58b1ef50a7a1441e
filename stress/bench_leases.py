"""Lease throughput of leases.gridmapdir.GridmapDir.

Prints mappings/s for (1) a lease already held (the common case: lstat the
lease, find its pool entry through the inode cache, re-check it, utime) and
(2) a first lease (scan in readdir order for the first free entry, link),
for gridmapdirs of 100, 10,000 and 100,000 entries, half of them leased.
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


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dir", default=tempfile.gettempdir())
    ap.add_argument("--seconds", type=float, default=1.5)
    ap.add_argument("--sizes", default="100,10000,100000")
    args = ap.parse_args()
    print(f"gridmapdir base: {args.dir} ({fs_type(args.dir)}), half of each pool leased")
    print(f"{'entries':>8} {'held: maps/s':>13} {'us/map':>7} {'first lease: maps/s':>20} "
          f"{'us/map':>8}  (cold first reuse ms)")
    base_cost = None
    for size in (int(s) for s in args.sizes.split(",")):
        d, held = build(args.dir, size)
        try:
            gmd = GridmapDir(d)
            t0 = time.perf_counter()
            gmd.acquire("opool", held[0])  # cold: one directory scan fills the cache
            cold_ms = (time.perf_counter() - t0) * 1000
            held_rate, _ = rate(lambda dn, g=gmd: g.acquire("opool", dn), held * 20, args.seconds)
            fresh = [f"/DC=org/DC=bench/CN=New {i}" for i in range(size)]

            def first(dn: str, g: GridmapDir = gmd) -> None:
                try:
                    g.acquire("opool", dn)
                except PoolExhausted:
                    pass

            first_rate, _ = rate(first, fresh, args.seconds)
            cost = 1e6 / held_rate
            base_cost = base_cost or cost
            print(f"{size:>8} {held_rate:>13,.0f} {cost:>7.1f} {first_rate:>20,.0f} "
                  f"{1e6 / first_rate:>8.0f}  ({cold_ms:.1f})   "
                  f"reuse cost x{cost / base_cost:.2f}")
        finally:
            shutil.rmtree(d)


if __name__ == "__main__":
    main()
