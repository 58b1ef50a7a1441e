"""The job states of the EDG/gLite WMS, and how they follow from what Slurm reports.

| state | here it means |
|---|---|
| Submitted | the CE accepted the request and recorded it (owner DN, JDL, delegated proxy) |
| Waiting | SCAS permitted; the sandbox is being staged through glexec |
| Ready | ``sbatch`` accepted the job; slurmctld has not yet looked at it (pending, no reason) |
| Scheduled | waiting in the Slurm queue (pending: priority, resources, dependency, ...) |
| Running | running (or completing, suspended: still on the node) |
| Done | ended; ``Success`` for exit 0, ``Exit Code N`` otherwise |
| Aborted | did not run to its end for a reason outside the job's code (with the reason) |
| Cancelled | cancelled by its owner (or an administrator) |
| Cleared | the output sandbox was retrieved and the job directory removed |

No I/O here: the CE feeds in the ``scontrol -o show job`` fields, the job wrapper's exit
record, or nothing (the job is unknown to Slurm), and stores what comes out.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

__all__ = ["FINAL", "STATES", "Status", "from_slurm", "vanished"]

SUBMITTED, WAITING, READY, SCHEDULED, RUNNING = (
    "Submitted", "Waiting", "Ready", "Scheduled", "Running")  # fmt: skip
DONE, ABORTED, CANCELLED, CLEARED = "Done", "Aborted", "Cancelled", "Cleared"
STATES = (SUBMITTED, WAITING, READY, SCHEDULED, RUNNING, DONE, ABORTED, CANCELLED, CLEARED)
FINAL = frozenset({DONE, ABORTED, CANCELLED, CLEARED})

_RUNNING = {"RUNNING", "COMPLETING", "SUSPENDED", "STOPPED", "RESIZING", "SIGNALING",
            "STAGE_OUT", "CONFIGURING"}  # fmt: skip
_PENDING = {"PENDING", "REQUEUED", "REQUEUE_HOLD", "REQUEUE_FED", "RESV_DEL_HOLD",
            "SPECIAL_EXIT"}  # fmt: skip
_ABORTED = {
    "NODE_FAIL": "the node failed", "BOOT_FAIL": "the node failed to boot",
    "TIMEOUT": "the wall-clock limit was reached", "DEADLINE": "the deadline passed",
    "OUT_OF_MEMORY": "out of memory", "PREEMPTED": "preempted",
}  # fmt: skip


@dataclass(frozen=True)
class Status:
    """A state with its detail: Done's ``Success``/``Exit Code N``, Aborted's reason."""

    state: str
    detail: str = ""
    exit_code: int | None = None

    def text(self) -> str:
        return f"{self.state} ({self.detail})" if self.detail else self.state

    @property
    def final(self) -> bool:
        return self.state in FINAL


def done(code: int) -> Status:
    return Status(DONE, "Success" if code == 0 else f"Exit Code {code}", code)


def _exit(fields: Mapping[str, str]) -> tuple[int | None, int | None]:
    code, _, sig = fields.get("ExitCode", "").partition(":")
    return (int(code) if code.isdigit() else None, int(sig) if sig.isdigit() else None)


def from_slurm(fields: Mapping[str, str], wrapper_exit: int | None = None) -> Status:
    """The state for one ``scontrol -o show job`` record (or a jobcomp line).

    ``wrapper_exit`` is the job wrapper's record of the executable's exit status, when it
    wrote one: it wins over Slurm's batch-script code for a job that completed.
    """
    state = (fields.get("JobState") or "UNKNOWN").split()[0]
    reason = fields.get("Reason", "None")
    code, sig = _exit(fields)
    if state in _PENDING:
        if state == "PENDING" and reason in ("None", "", "(null)"):
            return Status(READY)
        return Status(SCHEDULED, reason if reason not in ("None", "(null)") else "")
    if state in _RUNNING:
        return Status(RUNNING)
    if state == "CANCELLED":
        return Status(CANCELLED)
    if state in ("COMPLETED", "FAILED"):
        if wrapper_exit is not None:
            return done(wrapper_exit)
        if sig:
            return Status(ABORTED, f"killed by signal {sig}")
        if code is not None:
            return done(code)
        return Status(ABORTED, f"Slurm reports {state} without an exit code")
    if state in _ABORTED:
        return Status(ABORTED, _ABORTED[state])
    return Status(ABORTED, f"unknown Slurm state {state}")


def vanished(wrapper_exit: int | None) -> Status:
    """Slurm no longer knows the job (purged after MinJobAge, no accounting): the wrapper's
    exit record says how it ended; without one the job never finished its executable."""
    if wrapper_exit is not None:
        return done(wrapper_exit)
    return Status(ABORTED, "the job left Slurm without an exit record")
