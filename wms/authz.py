"""The CE's question to SCAS: may this delegated proxy queue here (``ce``/``queue``)?

Through the client library (failover, deadlines, endpoint memory); the CE's host
certificate is its TLS identity. A Deny or NotApplicable is :class:`Refused` with the reason
class SCAS sent (``banned``, ``not authorized``, ``no account available``); no answer from
any endpoint is :class:`Unavailable` (the user may retry). Neither leaves anything behind.
"""

from __future__ import annotations

import os
import socket
import time
from dataclasses import dataclass

from client.endpoint_memory import EndpointMemory
from client.failover import FailoverClient
from client.failures import AllEndpointsFailed, ClientError
from client.query import build_query
from safetext import one_line
from wms.config import CeConfig

__all__ = ["Authorizer", "Mapping", "Refused", "Unavailable"]


class Refused(Exception):
    """The request is refused for a reason the user can act on (exit 1 at the client)."""

    def __init__(self, reason: str, status: int = 403) -> None:
        self.reason, self.status = one_line(reason, 400), status
        super().__init__(self.reason)


class Unavailable(Exception):
    """A service the CE needs did not answer: retry later (exit 2 at the client)."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason, 600)
        super().__init__(self.reason)


@dataclass(frozen=True)
class Mapping:
    username: str | None
    uid: int | None
    gid: int | None
    endpoint: str
    seconds: float


class Authorizer:
    """One FailoverClient for the CE process (kept connections, thread-safe)."""

    def __init__(self, cfg: CeConfig, host: str | None = None) -> None:
        memory = EndpointMemory(os.path.join(cfg.state_dir, "scas-endpoints.json"))
        self.client = FailoverClient(
            list(cfg.scas_endpoints), cert=cfg.scas_cert, key=cfg.scas_key,
            certdir=cfg.ca_dir, strategy=cfg.scas_strategy,
            connect_timeout=min(5.0, cfg.scas_timeout), read_timeout=cfg.scas_timeout,
            deadline=cfg.scas_deadline, memory=memory,
        )  # fmt: skip
        self.host = host or socket.getfqdn()

    def ask(self, chain_pem: bytes, fqans: tuple[str, ...] = ()) -> Mapping:
        """The mapping on Permit; Refused or Unavailable otherwise."""
        started = time.perf_counter()
        query = build_query(chain_pem, fqans=fqans, resource_type="ce", action="queue",
                            host=self.host)  # fmt: skip
        try:
            result = self.client.ask(query)
        except AllEndpointsFailed as exc:
            raise Unavailable(f"SCAS did not answer: {exc.message}") from None
        except ClientError as exc:
            raise Unavailable(f"SCAS client: {exc.message}") from None
        d = result.decision
        if d.decision != "Permit":
            why = d.status_message or d.decision.lower()
            raise Refused(f"not authorized to queue at this CE: {why} "
                          f"(SCAS {d.decision} from {result.endpoint})")  # fmt: skip
        return Mapping(d.username, d.uid, d.gid, result.endpoint,
                       time.perf_counter() - started)  # fmt: skip
