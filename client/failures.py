"""What the failover client reports: one record per attempt, one exception class per failure.

A caller (glexec, a CE, ``scas-query``) needs to tell three things apart: its own mistake
(`ClientConfigError`: bad arguments, an unreadable certificate), a grid-wide outage
(`AllEndpointsFailed`: every replica was tried or the deadline passed) and an answer (a
Permit or Deny, which is a result, never an exception). Every message is one line naming
what failed, so it can go straight to a log or to stderr.

Standard library only: this module is imported by everything else in the failover client.
Records are named tuples, not dataclasses: glexec imports this per payload, and dataclasses
(inspect, ast, dis, tokenize) cost it 19 ms.
"""

from __future__ import annotations

from safetext import one_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NamedTuple

    class _AttemptFields(NamedTuple):
        endpoint: str
        outcome: str
        seconds: float
        detail: str = ""
else:
    from collections import namedtuple

    _AttemptFields = namedtuple(
        "_AttemptFields", "endpoint outcome seconds detail", defaults=("",)
    )

#: outcome classes of one attempt; "http-NNN" (any status but 200) completes the set
ANSWERS = ("permit", "deny", "notapplicable")
OUTCOMES = (
    *ANSWERS,
    "indeterminate",  # the replica has a fault of its own: try the next one
    "refused",  # TCP connection refused (nothing listening)
    "timeout",  # connect, TLS handshake or reply not finished in time
    "tls",  # handshake failed: unknown CA, wrong host name, bad client credential
    "dns",  # the host name does not resolve
    "closed",  # the peer closed or reset the connection
    "network",  # any other socket error (unreachable, no route...)
    "garbage",  # a 200 reply that is not a SAML2-XACML2 response
    "fault",  # a SOAP Fault instead of a decision
    "skipped",  # not tried: the overall deadline had passed
)


class Attempt(_AttemptFields):
    """One endpoint tried: its outcome class, the wall time spent and a one-line detail."""

    __slots__ = ()

    def describe(self) -> str:
        """``URL: outcome (detail) after 0.123 s``: the line ``scas-query`` prints."""
        detail = f" ({self.detail})" if self.detail else ""
        if self.outcome == "skipped":
            return f"{self.endpoint}: not tried{detail}"
        return f"{self.endpoint}: {self.outcome}{detail} after {self.seconds:.3f} s"

    def as_dict(self) -> dict[str, object]:
        return {
            "endpoint": self.endpoint,
            "outcome": self.outcome,
            "seconds": round(self.seconds, 6),
            "detail": self.detail,
        }


class ClientError(Exception):
    """Base class of the failover client's errors; the message is one printable line."""

    def __init__(self, message: str) -> None:
        self.message = one_line(message, 2000)
        super().__init__(self.message)


class ClientConfigError(ClientError):
    """The caller's mistake: a bad URL, strategy or timeout, an unreadable cert or CA dir.

    Raised before anything is sent, so retrying cannot help; fix the arguments.
    """


class AllEndpointsFailed(ClientError):
    """No endpoint gave an answer (Permit, Deny or NotApplicable) before the deadline.

    `attempts` holds one `Attempt` per configured endpoint, in the order they were tried;
    those the deadline left no time for have outcome "skipped". The message names each.
    """

    def __init__(self, attempts: Sequence[Attempt], deadline: float) -> None:
        self.attempts = tuple(attempts)
        self.deadline = deadline
        n = len(self.attempts)
        what = "endpoint" if n == 1 else f"all {n} endpoints"
        lines = "; ".join(a.describe() for a in self.attempts)
        super().__init__(f"no SCAS answer: {what} failed within {deadline:g} s: {lines}")


class AttemptError(Exception):
    """One attempt's failure inside the transport, with its outcome class (see OUTCOMES).

    Internal to the loop: callers see it only folded into an `Attempt`.
    """

    def __init__(self, outcome: str, detail: str) -> None:
        self.outcome = outcome
        self.detail = one_line(detail, 300)
        super().__init__(f"{outcome}: {self.detail}")
