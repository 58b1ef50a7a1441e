"""What a glexec run means for the payload, from its exit code and its JSON status record.

The reference table (README "glexec: Exit codes"):

| glexec exit | outcome | what the pilot does |
|---|---|---|
| 201 | ``failed`` | a payload problem (its proxy, command or variables): report, no retry |
| 202 | ``retry`` | site trouble (SCAS unreachable, config): put the payload back, retry later |
| 203 | ``refused`` | not authorized (banned, no mapping, no ticket): report, never retry |
| 204, 126, other | ``done`` | the payload ran: its own code comes from the status record |

The status record removes the ambiguity of 204 (the payload exited 201-204) and 126: phase
``payload`` carries the payload's real code and signal. Without a record the exit code alone
decides, and a 204 is reported as such.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from safetext import one_line

DONE, FAILED, REFUSED, RETRY = "done", "failed", "refused", "retry"
BY_CODE = {201: FAILED, 202: RETRY, 203: REFUSED}


@dataclass(frozen=True)
class Outcome:
    """One payload's fate: the queue outcome and what glexec and the payload said."""

    outcome: str
    reason: str
    glexec_exit: int | None = None
    exit: int | None = None  # the payload's own exit code (outcome done)
    signal: int = 0
    phase: str = ""

    def fields(self) -> dict[str, Any]:
        return {"outcome": self.outcome, "reason": self.reason, "glexec_exit": self.glexec_exit,
                "exit": self.exit, "signal": self.signal, "phase": self.phase}  # fmt: skip


def parse_status(text: str) -> dict[str, Any] | None:
    """The status record (one JSON line), or None if there is none or it is malformed."""
    lines = [ln for ln in text.splitlines() if ln.strip()]
    if not lines:
        return None
    try:
        doc = json.loads(lines[-1])
    except ValueError:
        return None
    if not isinstance(doc, dict) or not isinstance(doc.get("exit"), int):
        return None
    return doc


def from_glexec(code: int, record: dict[str, Any] | None) -> Outcome:
    """Classify one finished glexec call (``code`` < 0: glexec itself died of signal -code)."""
    if code < 0:
        return Outcome(RETRY, f"glexec killed by signal {-code}", code, signal=-code)
    if record is None:
        if code in BY_CODE:
            return Outcome(BY_CODE[code], f"glexec exited {code} (no status record)", code)
        note = " (the payload exited 201-204; no status record)" if code == 204 else ""
        return Outcome(DONE, f"payload exited {code}{note}", code, exit=code)
    phase = str(record.get("phase", ""))
    reason = one_line(record.get("reason", ""), 600)
    raw_signal = record.get("signal")
    signal = raw_signal if isinstance(raw_signal, int) else 0
    status: int = record["exit"]  # parse_status checked it is an int
    if phase == "payload":
        return Outcome(DONE, reason, code, exit=status, signal=signal, phase=phase)
    kind = BY_CODE.get(status) or BY_CODE.get(code) or FAILED
    return Outcome(kind, reason, code, signal=signal, phase=phase)
