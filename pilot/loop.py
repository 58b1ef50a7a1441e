"""The pilot's loop: claim, fetch the owner's proxy, glexec, report, destroy the proxy.

After a payload is put back (glexec 202, MyProxy or VOMS unreachable) the pilot waits
``--retry-delay`` before the next claim, doubling while it keeps happening (at most 300 s).
It stops when the queue is empty (nothing queued and nothing put back for later), when the
wall-clock budget is spent, or when a problem of the pilot's own makes every payload fail
(MyProxy refuses the pilot, the queue is gone). Each payload's proxy lives only while that
payload is handled: it is removed in a ``finally``, and the SIGTERM handler removes it first
thing, before it stops the payload (the batch system's grace period is short).
"""

from __future__ import annotations

import json
import os
import signal
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from pilot import proxy as proxies
from pilot.outcome import DONE, FAILED, RETRY, Outcome
from pilot.queue import BadPayload, Payload, QueueClient, QueueError
from pilot.run import GlexecSetup, Result, run_payload
from safetext import one_line

INFLIGHT = "inflight.json"  # the payload being handled, for the supervisor after a kill
MAX_BACKOFF = 300.0  # seconds between claims while every payload goes back
STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP, signal.SIGUSR1, signal.SIGXCPU)


class Terminated(BaseException):
    """A stop signal arrived (raised once, from the handler); the pilot cleans up and exits."""

    def __init__(self, signum: int) -> None:
        super().__init__(f"signal {signum}")
        self.signum = signum


@dataclass
class Settings:
    work: Path  # the pilot's private directory (0700)
    pilot_proxy: str
    tools: proxies.Tools
    glexec: GlexecSetup
    budget: float
    retry_delay: float = 60.0
    proxy_hours: int = 12
    env: Mapping[str, str] = field(default_factory=lambda: dict(os.environ))


class Reporter:
    """One line per event on ``out``: JSON with ``--json``, else a short human line."""

    def __init__(self, out: TextIO, as_json: bool) -> None:
        self.out, self.as_json = out, as_json

    def event(self, doc: dict[str, Any], human: str) -> None:
        print(json.dumps(doc) if self.as_json else human, file=self.out, flush=True)


class Pilot:
    def __init__(self, settings: Settings, queue: QueueClient, reporter: Reporter) -> None:
        self.s, self.queue, self.rep = settings, queue, reporter
        self.n = 0
        self.counts: dict[str, int] = {}
        self.proxy: Path | None = None  # the owner's proxy on disk right now
        self.current: Payload | None = None
        self.trouble = 0  # payloads put back in a row (site or service trouble): back off
        self._signalled = False

    # -- signals ---------------------------------------------------------------------------

    def install_handlers(self) -> None:
        for sig in STOP_SIGNALS:
            signal.signal(sig, self._on_signal)

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        first, self._signalled = not self._signalled, True
        if self.proxy is not None:
            proxies.destroy(self.proxy)  # first: the grace period may be short
        if first:  # once: a second signal must not interrupt the cleanup
            raise Terminated(signum)

    # -- the loop --------------------------------------------------------------------------

    def run(self) -> int:
        """0: queue empty or budget spent; 1: stopped by a problem of the pilot's own."""
        start = time.monotonic()
        while True:
            left = self.s.budget - (time.monotonic() - start)
            if self.trouble:  # 202s in a row: do not hammer a site in trouble
                pause = min(self.s.retry_delay * 2 ** (self.trouble - 1), MAX_BACKOFF, left)
                time.sleep(max(pause, 0))
                left = self.s.budget - (time.monotonic() - start)
            if left <= 0:
                return self._end("budget spent", 0)
            try:
                claimed = self.queue.claim(left)
            except BadPayload as exc:
                self._report_bad(str(exc))
                continue
            except QueueError as exc:
                return self._end(f"task queue: {exc}", 1)
            if claimed.payload is None:
                if claimed.deferred == 0:
                    return self._end("queue empty", 0)
                if claimed.retry_after >= left:
                    return self._end("budget spent (payloads wait for later)", 0)
                time.sleep(max(claimed.retry_after, 0.2))
                continue
            stop = self.handle(claimed.payload, deadline=start + self.s.budget)
            if stop:
                return self._end(stop, 1)

    def handle(self, payload: Payload, *, deadline: float) -> str | None:
        """One payload, reported to the queue; a reason to stop the pilot, or None."""
        self.n += 1
        self.current = payload
        self._mark_inflight(payload)
        result, stop = None, None
        try:
            result, stop = self._attempt(payload, deadline)
        finally:
            if self.proxy is not None:
                proxies.destroy(self.proxy)
                self.proxy = None
        self._finish(payload, result)
        return stop

    def _attempt(self, payload: Payload, deadline: float) -> tuple[Result, str | None]:
        path = self.s.work / f"proxy-{self.n}.pem"
        self.proxy = path
        try:
            proxies.retrieve(payload.myproxy, path, tools=self.s.tools,
                             pilot_proxy=self.s.pilot_proxy, hours=self.s.proxy_hours)  # fmt: skip
            checked = proxies.check(path, owner=payload.owner, tools=self.s.tools)
            if payload.vo and not proxies.has_vo(checked.fqans, payload.vo):
                proxies.add_voms(path, payload.vo, tools=self.s.tools, hours=self.s.proxy_hours)
        except proxies.PilotNotAuthorized as exc:
            return Result(Outcome(RETRY, exc.reason)), f"MyProxy refuses this pilot: {exc.reason}"
        except proxies.PayloadProxyProblem as exc:
            return Result(Outcome(FAILED, exc.reason)), None
        except proxies.ProxyUnavailable as exc:
            return Result(Outcome(RETRY, exc.reason)), None
        timeout = max(deadline - time.monotonic(), 1.0)
        try:
            result = run_payload(payload, path, self.s.work, self.n, self.s.glexec,
                                 env=self._glexec_env(), timeout=timeout)  # fmt: skip
        except FileNotFoundError as exc:
            return Result(Outcome(RETRY, f"glexec not found: {exc}")), "glexec is not installed"
        return result, None

    def _glexec_env(self) -> dict[str, str]:
        env = dict(self.s.env)
        env["X509_USER_PROXY"] = self.s.pilot_proxy
        env.setdefault("X509_CERT_DIR", self.s.tools.certdir)
        return env

    def _finish(self, payload: Payload, result: Result | None) -> None:
        """Report to the queue and print; the in-flight mark goes once the queue knows."""
        if result is None:
            return
        o = result.outcome
        self.counts[o.outcome] = self.counts.get(o.outcome, 0) + 1
        self.trouble = self.trouble + 1 if o.outcome == RETRY else 0
        extra: dict[str, Any] = {"stdout": result.stdout, "stderr": result.stderr,
                                 "files": result.files, "leftovers": result.leftovers}  # fmt: skip
        if o.outcome == RETRY:
            extra["retry_after"] = self.s.retry_delay
        try:
            self.queue.report(payload.id, payload.claim, **o.fields(), **extra)
            reported = True
        except QueueError as exc:
            reported, extra["report_error"] = False, str(exc)
        self._clear_inflight()
        self.current = None
        doc = {"event": "payload", "id": payload.id, "owner": payload.owner, **o.fields(),
               "reported": reported, **extra}  # fmt: skip
        said = o.reason if o.glexec_exit is None else f"glexec {o.glexec_exit}: {o.reason}"
        human = (f"pilot: payload {one_line(payload.id)} of {one_line(payload.owner)}: "
                 f"{o.outcome}" + (f", exit {o.exit}" if o.outcome == DONE else "")
                 + f" ({said})")  # fmt: skip
        lines = [f"  | {one_line(ln)}" for ln in result.stdout.splitlines()[:20]]
        if result.leftovers:
            lines.append(f"  left behind: {'; '.join(result.leftovers)}")
        self.rep.event(doc, "\n".join([human, *lines]))

    def _report_bad(self, reason: str) -> None:
        bad = self.queue.bad
        self.queue.bad = None
        if bad is None:
            return
        pid, claim, _ = bad
        try:
            self.queue.report(pid, claim, FAILED, reason=f"malformed payload: {reason}")
        except QueueError:
            pass
        self.rep.event({"event": "payload", "id": pid, "outcome": FAILED, "reason": reason},
                       f"pilot: payload {one_line(pid)}: failed (malformed: {one_line(reason)})")

    def terminated(self, signum: int) -> int:
        """After a stop signal: the payload was stopped; put it back; 128 + signal."""
        if self.current is not None:
            reason = f"pilot terminated by signal {signum}"
            self._finish(self.current, Result(Outcome(RETRY, reason)))
        return self._end(f"terminated by signal {signum}", 128 + signum)

    def _end(self, why: str, code: int) -> int:
        doc = {"event": "end", "reason": why, "payloads": self.n, "outcomes": self.counts,
               "exit": code}  # fmt: skip
        tally = ", ".join(f"{k} {v}" for k, v in self.counts.items())
        self.rep.event(doc, f"pilot: {why}; {self.n} payload(s)" + (f": {tally}" if tally else ""))
        return code

    # -- the in-flight mark (read by the supervisor if this process is killed) -------------

    def _mark_inflight(self, payload: Payload) -> None:
        tmp = self.s.work / (INFLIGHT + ".tmp")
        tmp.write_text(json.dumps({"id": payload.id, "claim": payload.claim,
                                   "owner": payload.owner}))  # fmt: skip
        os.replace(tmp, self.s.work / INFLIGHT)

    def _clear_inflight(self) -> None:
        try:
            os.unlink(self.s.work / INFLIGHT)
        except FileNotFoundError:
            pass


def run_worker(settings: Settings, queue: QueueClient, reporter: Reporter,
               before: Callable[[], None] = lambda: None) -> int:  # fmt: skip
    """The loop with its signal handlers; returns the pilot's exit code."""
    pilot = Pilot(settings, queue, reporter)
    pilot.install_handlers()
    before()
    try:
        return pilot.run()
    except Terminated as t:
        return pilot.terminated(t.signum)
