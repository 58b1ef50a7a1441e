"""The lease protocol under forced interleavings (docs/leases.md).

A seam in :class:`~leases.gridmapdir.GridmapDir` (``hook(step, entry)``, called at each step
of a first lease) lets a test stop one request exactly between two system calls while
others run. The issue's interleaving is replayed twice: against a writer that uses C
LCMAPS's order (link the lease name first, then check the link count), where it hands one
account to two DNs, and against ours, where it cannot.
"""

from __future__ import annotations

import os
import queue
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

import pytest

from leases.claims import CLAIM_PREFIX
from leases.gridmapdir import STEPS, GridmapDir, LeaseRace, PoolExhausted, encode_lease

DN1 = "/DC=org/DC=example/CN=Dn One"
DN2 = "/DC=org/DC=example/CN=Dn Two"
DN3 = "/DC=org/DC=example/CN=Dn Three"


def make_pool(tmp_path: Path, size: int) -> Path:
    d = tmp_path / "gridmapdir"
    d.mkdir(parents=True)
    for i in range(1, size + 1):
        (d / f"opool{i:03d}").touch()
    return d


def holders(d: Path) -> dict[str, list[str]]:
    """Pool entry -> the lease names linked to it (more than one is a double lease)."""
    by_ino: dict[int, list[str]] = {}
    for name in os.listdir(d):
        by_ino.setdefault(os.lstat(d / name).st_ino, []).append(name)
    out: dict[str, list[str]] = {}
    for names in by_ino.values():
        entries = [n for n in names if not n.startswith(("%", "."))]
        if entries:
            out[entries[0]] = sorted(n for n in names if n.startswith("%"))
    return out


def lease_of(d: Path, dn: str) -> str | None:
    """The account the DN's lease points to now, or None."""
    for entry, leases in holders(d).items():
        if encode_lease(dn) in leases:
            return entry
    return None


class Actor:
    """A request on its own thread that stops at the steps a test names, then resumes."""

    def __init__(self, work: Callable[[Callable[[str, str], None]], str | None]) -> None:
        self._work = work
        self._stops: set[str] = set()
        self._at: queue.Queue[str] = queue.Queue()
        self._go = threading.Semaphore(0)
        self.result: str | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def hook(self, step: str, entry: str) -> None:
        if step in self._stops:
            self._stops.discard(step)
            self._at.put(step)
            assert self._go.acquire(timeout=20), "actor never resumed"

    def _run(self) -> None:
        try:
            self.result = self._work(self.hook)
        except BaseException as exc:  # reported by finish()
            self.error = exc
        self._at.put("done")

    def _wait(self, step: str) -> None:
        got = self._at.get(timeout=20)
        assert got == step, f"expected to stop at {step}, got {got}"

    def start(self, until: str) -> Actor:
        self._stops.add(until)
        self._thread.start()
        self._wait(until)
        return self

    def run(self) -> str | None:
        """Run to the end without stopping (the request that slips in between)."""
        self._thread.start()
        self._wait("done")
        self._thread.join(timeout=20)
        if self.error is not None:
            raise self.error
        return self.result

    def resume(self, until: str) -> None:
        self._stops.add(until)
        self._go.release()
        self._wait(until)

    def finish(self) -> str | None:
        self._go.release()
        self._wait("done")
        self._thread.join(timeout=20)
        if self.error is not None:
            raise self.error
        return self.result


def c_order_acquire(d: Path, dn: str, hook: Callable[[str, str], None]) -> str | None:
    """C LCMAPS's first lease (reference notes section 8): link the lease name, then check
    the count, backing out above 2. Here only to show what the claim protocol prevents."""
    lease = d / encode_lease(dn)
    try:
        st = os.lstat(lease)
        if st.st_nlink == 2:
            return next(n for n in os.listdir(d)
                        if n != lease.name and os.lstat(d / n).st_ino == st.st_ino)
    except FileNotFoundError:
        pass
    for ent in sorted(os.listdir(d)):
        if ent.startswith((".", "%")) or os.lstat(d / ent).st_nlink != 1:
            continue
        hook("free", ent)
        os.link(d / ent, lease)
        hook("linked", ent)
        if os.lstat(lease).st_nlink == 2:
            return ent
        os.unlink(lease)
        hook("backed-out", ent)
        return c_order_acquire(d, dn, hook)
    return None


def ours(d: Path, dn: str) -> Callable[[Callable[[str, str], None]], str | None]:
    return lambda hook: GridmapDir(d, hook=hook).acquire("opool", dn).account


def theirs(d: Path, dn: str) -> Callable[[Callable[[str, str], None]], str | None]:
    return lambda hook: c_order_acquire(d, dn, hook)


def test_issue_interleaving_breaks_the_c_order(tmp_path: Path) -> None:
    """P (DN1) links X; R (DN1) reuses X at count 2; Q (DN2), who saw X free, links it;
    P sees 3 and backs out; Q sees 2 and keeps X: DN1's R and DN2's Q both run as X."""
    d = make_pool(tmp_path, 3)
    q = Actor(theirs(d, DN2)).start(until="free")
    p = Actor(theirs(d, DN1)).start(until="linked")
    r = Actor(theirs(d, DN1))
    assert r.run() == "opool001"  # reuses P's lease, visible before P has won it
    q.resume(until="linked")
    p.resume(until="backed-out")
    assert q.finish() == "opool001"
    assert p.finish() == "opool002"
    assert r.result == q.result  # one account told to two DNs: the bug


def test_issue_interleaving_is_safe_with_claims(tmp_path: Path) -> None:
    """The same schedule against the claim protocol: R cannot see P's lease before P has
    won it, so every request is told the account its lease points to."""
    d = make_pool(tmp_path, 3)
    q = Actor(ours(d, DN2)).start(until="free")
    p = Actor(ours(d, DN1)).start(until="claimed")
    r = Actor(ours(d, DN1))
    r.run()
    q.resume(until="claimed")
    p_account, q_account = p.finish(), q.finish()
    assert p_account == r.result == lease_of(d, DN1)
    assert q_account == lease_of(d, DN2)
    assert p_account != q_account
    assert all(len(v) <= 1 for v in holders(d).values())
    assert not [n for n in os.listdir(d) if n.startswith(CLAIM_PREFIX)]


@pytest.mark.parametrize("first", ["P", "Q"])
@pytest.mark.parametrize("pause", ["claimed", "verified"])
def test_two_claimants_one_entry(tmp_path: Path, first: str, pause: str) -> None:
    """Two DNs claim the same free entry, stopped at each step, either one resumed first:
    at most one wins it, the other takes the next entry; nobody is told a shared one."""
    d = make_pool(tmp_path, 2)
    q = Actor(ours(d, DN2)).start(until="free")
    p = Actor(ours(d, DN1)).start(until=pause)
    q.resume(until="claimed")
    order = [p, q] if first == "P" else [q, p]
    results = {id(a): a.finish() for a in order}
    assert {results[id(p)], results[id(q)]} == {"opool001", "opool002"}
    assert lease_of(d, DN1) == results[id(p)] and lease_of(d, DN2) == results[id(q)]


def test_same_dn_twice_gets_one_account(tmp_path: Path) -> None:
    """Two requests for one DN claim two entries; the second to publish finds the lease,
    drops its claim and is told the first one's account. The spare entry stays free."""
    d = make_pool(tmp_path, 3)
    a = Actor(ours(d, DN1)).start(until="verified")
    b = Actor(ours(d, DN1)).start(until="verified")
    first = b.finish()
    assert a.finish() == first == lease_of(d, DN1)
    assert sum(1 for v in holders(d).values() if v) == 1


def test_pool_exactly_full_is_not_reported_exhausted_while_a_claim_backs_out(
    tmp_path: Path,
) -> None:
    """Two DNs, two accounts. While DN2's claim on the last entry is pending, DN3 (a third
    user) must not be told 'exhausted' if that claim will back out; here it is DN2 that
    wins, so DN3 is then truly refused."""
    d = make_pool(tmp_path, 2)
    GridmapDir(d).acquire("opool", DN1)
    q = Actor(ours(d, DN2)).start(until="claimed")
    outcome: list[object] = []

    def third() -> None:
        try:
            outcome.append(GridmapDir(d, race_retries=3).acquire("opool", DN3).account)
        except (PoolExhausted, LeaseRace) as exc:
            outcome.append(type(exc))

    t = threading.Thread(target=third)
    t.start()
    t.join(timeout=2)
    assert outcome == [LeaseRace]  # in flux: unavailable (retry), never a false "exhausted"
    assert q.finish() == lease_of(d, DN2) != lease_of(d, DN1)
    with pytest.raises(PoolExhausted):
        GridmapDir(d).acquire("opool", DN3)


WORKER = r"""
import json, os, random, sys, time, threading
from leases.gridmapdir import GridmapDir, LeaseRace
path, seed, n_threads = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
dns = json.loads(sys.argv[4])
rng = random.Random(seed)
def jitter(step, entry):
    if rng.random() < 0.5:
        time.sleep(rng.random() * 0.002)
out, lock = [], threading.Lock()
def run(k):
    store = GridmapDir(path, hook=jitter)
    order = dns[:]
    random.Random(seed * 100 + k).shuffle(order)
    for dn in order:
        for _ in range(50):
            try:
                account = store.acquire("opool", dn).account
                break
            except LeaseRace:
                continue
        else:
            account = "RACE"
        with lock:
            out.append([dn, account])
threads = [threading.Thread(target=run, args=(k,)) for k in range(n_threads)]
[t.start() for t in threads]; [t.join() for t in threads]
print(json.dumps(out))
"""


@pytest.mark.slow
def test_random_delays_threads_and_processes(tmp_path: Path) -> None:
    """Three processes x four threads ask for the same DNs in random orders, with random
    sleeps at every step (standing in for preemption); the pool is exactly as large as the
    users. Every round: no account with two leases, and everyone told the lease's account."""
    import json

    for rnd in range(6):
        d = make_pool(tmp_path / str(rnd), 24)
        dns = [f"/DC=org/DC=example/CN=User {i}" for i in range(24)]
        procs = [
            subprocess.Popen([sys.executable, "-c", WORKER, str(d), str(rnd * 10 + k), "4",
                              json.dumps(dns)], stdout=subprocess.PIPE,
                             stderr=subprocess.PIPE, text=True)
            for k in range(3)
        ]
        told: list[tuple[str, str]] = []
        for p in procs:
            out, err = p.communicate(timeout=120)
            assert p.returncode == 0 and not err, err[-2000:]
            told += [tuple(r) for r in json.loads(out)]
        assert len(told) == 3 * 4 * 24
        owners = holders(d)
        assert all(len(v) <= 1 for v in owners.values()), owners
        final = {dn: lease_of(d, dn) for dn in dns}
        assert len(set(final.values())) == 24 and None not in final.values()
        assert [t for t in told if final[t[0]] != t[1]] == []


KILLER = r"""
import os, signal, sys
from leases.gridmapdir import GridmapDir
path, step = sys.argv[1], sys.argv[2]
def die(s, entry):
    if s == step:
        os.kill(os.getpid(), signal.SIGKILL)
GridmapDir(path, hook=die).acquire("opool", sys.argv[3])
"""


@pytest.mark.parametrize("step", STEPS)
def test_sigkill_at_each_step_blocks_nothing_for_good(tmp_path: Path, step: str) -> None:
    """A request killed at any step leaves either nothing, a complete lease, or a claim
    that the next scan removes (its maker is gone): the one account is usable again."""
    d = make_pool(tmp_path, 1)
    proc = subprocess.run([sys.executable, "-c", KILLER, str(d), step, DN1],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    claims = [n for n in os.listdir(d) if n.startswith(CLAIM_PREFIX)]
    assert len(claims) == (1 if step in ("claimed", "verified") else 0)
    if step == "published":
        assert lease_of(d, DN1) == "opool001"
        assert GridmapDir(d).acquire("opool", DN1).account == "opool001"
    else:
        assert lease_of(d, DN1) is None
        assert GridmapDir(d).acquire("opool", DN2).account == "opool001"
    assert not [n for n in os.listdir(d) if n.startswith(CLAIM_PREFIX)]
    assert all(len(v) <= 1 for v in holders(d).values())


def test_stale_claim_from_another_host_expires(tmp_path: Path) -> None:
    """A claim whose maker runs elsewhere is kept until it is older than the timeout, then
    swept; a younger one makes an otherwise full pool answer 'try again', not 'exhausted'."""
    d = make_pool(tmp_path, 1)
    os.link(d / "opool001", d / f"{CLAIM_PREFIX}{0:x}.1.abcdef.otherhost")  # ancient
    assert GridmapDir(d).acquire("opool", DN1).account == "opool001"
    d2 = make_pool(tmp_path / "two", 1)
    young = f"{CLAIM_PREFIX}{time.time_ns():x}.1.abcdef.otherhost"
    os.link(d2 / "opool001", d2 / young)  # made just now, elsewhere: live for a minute
    with pytest.raises(LeaseRace):
        GridmapDir(d2, race_retries=1).acquire("opool", DN1)
    assert GridmapDir(d2, claim_timeout=-1).sweep_claims() == [young]
    assert GridmapDir(d2).acquire("opool", DN1).account == "opool001"
