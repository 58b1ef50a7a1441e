"""Figures from a run: locust's CSVs, the server's memory and descriptors, a PNG plot.

The 2009 SCAS acceptance harness sampled the server's memory and open file
descriptors every 5 s; :class:`Sampler` does the same for the gunicorn
master and its workers, so growth over a soak shows up as a slope.
"""

from __future__ import annotations

import csv
import os
import threading
import time
from dataclasses import dataclass, field

import psutil


@dataclass
class RunFigures:
    """One locust run against one endpoint."""

    label: str
    requests: int = 0
    failures: int = 0
    per_second: float = 0.0
    p50: float = 0.0
    p95: float = 0.0
    p99: float = 0.0
    failure_reasons: list[str] = field(default_factory=list)

    def row(self) -> str:
        return (f"{self.label:<24} {self.per_second:>9.1f}/s  p50 {self.p50:>5.0f} ms  "
                f"p95 {self.p95:>5.0f} ms  p99 {self.p99:>5.0f} ms  "
                f"{self.requests:>8} requests  {self.failures} errors")


def _number(text: str) -> float:
    try:
        return float(text)
    except ValueError:
        return 0.0


def read_locust(prefix: str, label: str) -> RunFigures:
    """The aggregated row of ``<prefix>_stats.csv`` and the reasons of ``_failures.csv``."""
    figures = RunFigures(label)
    with open(prefix + "_stats.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] == "Aggregated":
                figures.requests = int(row["Request Count"])
                figures.failures = int(row["Failure Count"])
                figures.per_second = _number(row["Requests/s"])
                figures.p50, figures.p95, figures.p99 = (_number(row[k])
                                                         for k in ("50%", "95%", "99%"))
    failures = prefix + "_failures.csv"
    if os.path.exists(failures):
        with open(failures, newline="") as fh:
            figures.failure_reasons = [f"{r['Occurrences']}x {r['Error']}"
                                       for r in csv.DictReader(fh)]
    return figures


class Sampler(threading.Thread):
    """Every ``interval`` s: RSS and open descriptors of a process and its children, to CSV."""

    def __init__(self, pid: int, path: str, interval: float = 5.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.path, self.interval = pid, path, interval
        self.samples: list[tuple[float, float, int, int]] = []
        self._stop_event = threading.Event()

    def sample(self) -> tuple[float, float, int, int] | None:
        try:
            master = psutil.Process(self.pid)
            procs = [master, *master.children(recursive=True)]
            rss = sum(p.memory_info().rss for p in procs) / 2**20
            fds = sum(p.num_fds() for p in procs)
        except psutil.Error:
            return None
        return (time.time(), rss, fds, len(procs) - 1)

    def run(self) -> None:
        with open(self.path, "w", newline="") as fh:
            out = csv.writer(fh)
            out.writerow(["timestamp", "rss_mib", "open_fds", "workers"])
            while True:
                found = self.sample()
                if found:
                    self.samples.append(found)
                    out.writerow([f"{found[0]:.0f}", f"{found[1]:.1f}", found[2], found[3]])
                    fh.flush()
                if self._stop_event.wait(self.interval):
                    return

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=self.interval + 5)

    def growth(self) -> str:
        if len(self.samples) < 2:
            return "fewer than two samples"
        first, last = self.samples[0], self.samples[-1]
        peak = max(s[1] for s in self.samples)
        return (f"RSS {first[1]:.1f} -> {last[1]:.1f} MiB (peak {peak:.1f}), "
                f"open fds {first[2]} -> {last[2]}, {len(self.samples)} samples "
                f"over {last[0] - first[0]:.0f} s")


def _history(prefix: str) -> tuple[list[float], list[float], list[float], list[float]]:
    t, rps, p50, p95 = [], [], [], []
    with open(prefix + "_stats_history.csv", newline="") as fh:
        for row in csv.DictReader(fh):
            if row["Name"] != "Aggregated" or row["50%"] == "N/A":
                continue
            t.append(float(row["Timestamp"]))
            rps.append(_number(row["Requests/s"]))
            p50.append(_number(row["50%"]))
            p95.append(_number(row["95%"]))
    start = t[0] if t else 0.0
    return [x - start for x in t], rps, p50, p95


def plot(runs: list[tuple[str, str]], samples: list[tuple[float, float, int, int]],
         path: str) -> None:
    """Throughput and latency over time per run (and memory/fds when sampled), as PNG."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    rows = 3 if samples else 2
    fig, axes = plt.subplots(rows, 1, figsize=(10, 3.2 * rows), sharex=False)
    for label, prefix in runs:
        t, rps, p50, p95 = _history(prefix)
        axes[0].plot(t, rps, label=label)
        (line,) = axes[1].plot(t, p50, label=f"{label} p50")
        axes[1].plot(t, p95, linestyle="--", color=line.get_color(), label=f"{label} p95")
    axes[0].set_ylabel("requests/s")
    axes[1].set_ylabel("latency (ms)")
    axes[1].set_xlabel("seconds into the run")
    for ax in axes[:2]:
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small", ncol=2)
    if samples:
        start = samples[0][0]
        ax = axes[2]
        ax.plot([s[0] - start for s in samples], [s[1] for s in samples], label="RSS (MiB)")
        ax2 = ax.twinx()
        ax2.plot([s[0] - start for s in samples], [s[2] for s in samples], color="tab:red",
                 label="open fds")
        ax.set_ylabel("server RSS (MiB)")
        ax2.set_ylabel("open fds")
        ax.set_xlabel("seconds since the server's first sample")
        ax.grid(alpha=0.3)
    fig.suptitle("scas-server under locust")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
