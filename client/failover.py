"""Ask SCAS replicas in turn until one answers: strategies, time limits, endpoint memory.

In:  endpoint URLs, a client credential and CA directory, a `Query`.
Out: a `Result` (the decision, the endpoint that answered, every attempt with its outcome
     and duration), or `AllEndpointsFailed` naming each endpoint's failure.

The rules (DESIGN.md section 7), and why:

- **A Deny is an answer.** So are Permit and NotApplicable: the loop stops. Another replica
  applies the same policy, so asking on would only shop for a different verdict.
- **Everything else moves on**: refused, timeout, TLS failure, any HTTP status but 200
  (403 and 5xx too), an unparsable reply, and Indeterminate, which the server sends for
  every fault of its own (lease store unusable, plugin crash, audit log full).
- **Order**: "round-robin" asks in the configured order (a primary and its fallbacks);
  "round-robin-random-start" (the default) asks in the configured order from a random
  start, which spreads the load of many hosts; "random" asks in a random order. An
  endpoint that failed in the last minute (`EndpointMemory`, shared across processes) is
  asked last.
- **Time**: each attempt gets `connect_timeout` (TCP + TLS handshake, default 5 s) and
  `read_timeout` (the complete reply, default 30 s), both cut to what is left of the overall
  `deadline` (default 60 s), so the failure comes within the deadline. The defaults suit a
  busy site: the original client's 170 ms socket / 1 s overall timeouts failed pilots
  whenever a server paused (OSG raised them to 30 s / 125 s); a handshake on a loaded
  server can take seconds, and a decision that queues behind a slow lease store tens of
  seconds. 5 s still spots a dead host quickly; 60 s stays well below batch-system and
  gatekeeper timeouts. Between attempts the loop sleeps 50-100 ms (jittered) so that
  clients that failed together do not retry in step.

`import client.failover` is cheap: the transport (socket, and ssl for an https endpoint)
loads on first use, and nothing on glexec's path imports lxml, dataclasses, typing,
http.client or urllib (tests/test_client_lean.py): glexec runs once per payload.
"""

from __future__ import annotations

import os
import time

from client.endpoint_memory import EndpointMemory
from client.failures import AllEndpointsFailed, Attempt, AttemptError, ClientConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import random
    from collections.abc import Callable, Sequence
    from typing import NamedTuple

    from client.query import Query
    from client.transport import Endpoint, TlsCredentials
    from client.xacml_decision import Decision

    class _ResultFields(NamedTuple):
        decision: Decision
        endpoint: str
        attempts: tuple[Attempt, ...]
else:
    from collections import namedtuple

    _ResultFields = namedtuple("_ResultFields", "decision endpoint attempts")

STRATEGIES = ("round-robin", "round-robin-random-start", "random")
DEFAULT_STRATEGY = "round-robin-random-start"
CONNECT_TIMEOUT = 5.0
READ_TIMEOUT = 30.0
DEADLINE = 60.0
BACKOFF = (0.05, 0.1)
DEFAULT_CERTDIR = "/etc/grid-security/certificates"
_OBLIGATION_PREFIX = "http://authz-interop.org/xacml/obligation/"


def default_certdir() -> str:
    """``$X509_CERT_DIR``, else /etc/grid-security/certificates."""
    return os.environ.get("X509_CERT_DIR") or DEFAULT_CERTDIR


def order_endpoints(endpoints: Sequence[str], strategy: str, rng: random.Random) -> list[str]:
    """The order one query tries `endpoints` in, before the endpoint memory is applied."""
    items = list(endpoints)
    if strategy == "round-robin":
        return items
    if strategy == "round-robin-random-start":
        start = rng.randrange(len(items)) if items else 0
        return items[start:] + items[:start]
    if strategy == "random":
        rng.shuffle(items)
        return items
    raise ClientConfigError(f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})")


def short_obligation(obligation_id: str) -> str:
    """``uidgid`` for the authz-interop uidgid obligation; other ids unchanged."""
    return obligation_id.removeprefix(_OBLIGATION_PREFIX)


class Result(_ResultFields):
    """An answer: the decision, who gave it, and every attempt up to it (this one last)."""

    __slots__ = ()

    @property
    def permitted(self) -> bool:
        return self.decision.decision == "Permit"

    @property
    def failed_attempts(self) -> tuple[Attempt, ...]:
        return self.attempts[:-1]

    def as_dict(self) -> dict[str, object]:
        """The JSON shape ``scas-query --json`` prints."""
        d = self.decision
        return {
            "decision": d.decision,
            "status_code": d.status_code,
            "status_message": d.status_message,
            "uid": d.uid,
            "gid": d.gid,
            "sgids": list(d.sgids),
            "username": d.username,
            "ticket": d.ticket,
            "obligations": [short_obligation(o) for o in d.obligations],
            "endpoint": self.endpoint,
            "attempts": [a.as_dict() for a in self.attempts],
            "error": None,
        }


class FailoverClient:
    """Ask a list of SCAS endpoints with one of the strategies; reusable, thread-safe.

    `cert`/`key` are the TLS client credential (a host cert and key, or a proxy file as
    `cert` with `key` None); `certdir` the hashed CA directory (default
    `default_certdir()`). `memory`: True for the default state file, False for none, or an
    `EndpointMemory`. `rng` and `sleep` are injectable for tests.
    Raises ClientConfigError for a bad endpoint, strategy or time limit.
    """

    def __init__(
        self,
        endpoints: Sequence[str],
        *,
        cert: str | None = None,
        key: str | None = None,
        certdir: str | None = None,
        strategy: str = DEFAULT_STRATEGY,
        connect_timeout: float = CONNECT_TIMEOUT,
        read_timeout: float = READ_TIMEOUT,
        deadline: float = DEADLINE,
        backoff: tuple[float, float] = BACKOFF,
        memory: EndpointMemory | bool = True,
        rng: random.Random | None = None,
        sleep: Callable[[float], None] = time.sleep,
    ) -> None:
        from client import transport

        if isinstance(endpoints, str):
            endpoints = [endpoints]
        self.endpoints: dict[str, Endpoint] = {}
        for url in endpoints:
            ep = transport.parse_endpoint(url)
            if ep.url in self.endpoints:
                raise ClientConfigError(f"endpoint {ep.url} is listed twice")
            self.endpoints[ep.url] = ep
        if not self.endpoints:
            raise ClientConfigError("no SCAS endpoint given")
        if strategy not in STRATEGIES:
            raise ClientConfigError(
                f"unknown strategy {strategy!r} (one of {', '.join(STRATEGIES)})"
            )
        for name, value in (
            ("connect timeout", connect_timeout),
            ("read timeout", read_timeout),
            ("deadline", deadline),
        ):
            if not value > 0:  # also refuses NaN
                raise ClientConfigError(f"{name} must be a positive number of seconds")
        if not 0 <= backoff[0] <= backoff[1]:
            raise ClientConfigError("back-off must be (low, high) with 0 <= low <= high")
        self.tls: TlsCredentials | None = None
        if cert is not None:
            self.tls = transport.TlsCredentials(cert, key, certdir or default_certdir())
        elif key is not None:
            raise ClientConfigError("a key without a certificate")
        elif any(ep.scheme == "https" for ep in self.endpoints.values()):
            raise ClientConfigError("https endpoints need a client certificate (or proxy)")
        self.strategy = strategy
        self.connect_timeout = connect_timeout
        self.read_timeout = read_timeout
        self.deadline = deadline
        self.backoff = backoff
        if memory is True:
            self.memory: EndpointMemory | None = EndpointMemory()
        else:
            self.memory = memory or None
        self._rng = rng
        self._sleep = sleep

    @property
    def rng(self) -> random.Random:
        """The injected generator, else a fresh one made when a choice is first needed."""
        if self._rng is None:
            import random

            self._rng = random.Random()
        return self._rng

    def plan(self) -> list[str]:
        """The order the next query will try the endpoints in."""
        urls = list(self.endpoints)
        # one endpoint has one order: no random numbers (nor the `random` module) needed
        order = order_endpoints(urls, self.strategy, self.rng) if len(urls) > 1 else urls
        return self.memory.order(order) if self.memory is not None else order

    def ask(self, query: Query) -> Result:
        """Send `query` until an endpoint answers; AllEndpointsFailed within the deadline."""
        from client import transport
        from client.xacml_decision import parse_response
        from client.xacml_errors import SoapFaultReceived, XacmlError

        deadline_at = time.monotonic() + self.deadline
        attempts: list[Attempt] = []
        failed: list[str] = []
        for i, url in enumerate(self.plan()):
            if i:
                left = deadline_at - time.monotonic()
                self._sleep(max(0.0, min(self.rng.uniform(*self.backoff), left)))
            start = time.monotonic()
            if start >= deadline_at:
                attempts.append(Attempt(url, "skipped", 0.0, f"{self.deadline:g} s deadline"))
                continue
            try:
                _, reply = transport.exchange(
                    self.endpoints[url],
                    query.body,
                    tls=self.tls,
                    connect_timeout=self.connect_timeout,
                    read_timeout=self.read_timeout,
                    deadline_at=deadline_at,
                )
                decision = parse_response(reply, expect_in_response_to=query.request_id)
            except AttemptError as exc:
                outcome, detail = exc.outcome, exc.detail
            except SoapFaultReceived as exc:
                outcome, detail = "fault", exc.reason
            except XacmlError as exc:
                outcome, detail = "garbage", f"{type(exc).__name__}: {exc.reason}"
            else:
                outcome = decision.decision.lower()
                detail = decision.status_message or ""
                if decision.decision != "Indeterminate":
                    attempts.append(Attempt(url, outcome, time.monotonic() - start, detail))
                    if self.memory is not None:
                        self.memory.record(failed, answered=[url])
                    return Result(decision, url, tuple(attempts))
                detail = detail or decision.status_code
            attempts.append(Attempt(url, outcome, time.monotonic() - start, detail))
            failed.append(url)
        if self.memory is not None:
            self.memory.record(failed)
        raise AllEndpointsFailed(attempts, self.deadline)


def authorize(
    endpoints: Sequence[str],
    proxy: str,
    *,
    resource_type: str = "wn",
    action: str = "execute-now",
    fqans: Sequence[str] = (),
    host: str | None = None,
    pilot_dn: str | None = None,
    obligations: Sequence[str] | None = None,
    cert: str | None = None,
    key: str | None = None,
    certdir: str | None = None,
    strategy: str = DEFAULT_STRATEGY,
    connect_timeout: float = CONNECT_TIMEOUT,
    read_timeout: float = READ_TIMEOUT,
    deadline: float = DEADLINE,
    memory: EndpointMemory | bool = True,
) -> Result:
    """The whole client in one call: the payload `proxy`'s chain goes into the query.

    The TLS client credential is `cert`/`key` when given (a host certificate, as a CE
    or a root-owned glexec uses), else the proxy itself (as a pilot does).
    """
    from client import xacml_ids as ids
    from client.query import build_query, read_chain

    if key is not None and cert is None:
        raise ClientConfigError("a key without a certificate")
    query = build_query(
        read_chain(proxy),
        fqans=fqans,
        resource_type=resource_type,
        action=action,
        host=host,
        pilot_dn=pilot_dn,
        obligations=ids.MAPPING_OBLIGATIONS if obligations is None else obligations,
    )
    client = FailoverClient(
        endpoints,
        cert=cert or proxy,
        key=key,
        certdir=certdir,
        strategy=strategy,
        connect_timeout=connect_timeout,
        read_timeout=read_timeout,
        deadline=deadline,
        memory=memory,
    )
    return client.ask(query)
