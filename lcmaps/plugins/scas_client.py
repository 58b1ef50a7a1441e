"""lcmaps_scas_client.mod (also lcmaps_gums_client.mod): ask a SCAS service for the account.

The mapping is made centrally; this plugin turns SCAS's answer into the credential data: the
``uidgid`` obligation gives the uid and primary gid, ``secondary-gids`` the rest. It takes the
original's arguments (``-endpoint`` repeatable, ``--endpoint-strategy``, ``-resourcetype``,
``-actiontype``, ``-capath``, ``-cert``, ``-key``) plus timeouts, and uses the failover client
(:mod:`client.failover`): a Deny fails the plugin; no endpoint answering is a fault
(:class:`~lcmaps.plugin_api.PluginUnavailable`), never a deny, so the caller can retry.
The client library is a leaf package (it imports nothing of ours), so this arrow stays down.
"""

from __future__ import annotations

import socket
import threading
from collections.abc import Sequence
from typing import Any

from lcmaps.plugin_api import Plugin, PluginInitError, PluginUnavailable, RunContext
from sitefiles.plugins import ArgWalker

__all__ = ["ScasClient"]

NAME = "lcmaps_scas_client"
RESOURCES = ("wn", "ce", "se")
ACTIONS = ("execute-now", "queue", "access")


def _seconds(value: str, opt: str) -> float:
    try:
        n = float(value)
    except ValueError:
        raise PluginInitError(f"{NAME}: {opt} needs a number of seconds, got '{value}'") from None
    if not 0 < n <= 3600:
        raise PluginInitError(f"{NAME}: {opt} must be between 0 and 3600 seconds, got {n:g}")
    return n


class ScasClient(Plugin):
    name = "scas_client"
    reads_credential = True
    has_verify = False  # SCAS answers "run", not "verify this account"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.endpoints: list[str] = []
        self.options: dict[str, Any] = {}
        self.resource, self.action = "wn", "execute-now"
        args = ArgWalker(argv, NAME)
        for opt in args:
            if opt in ("-endpoint", "--endpoint", "--endpoints"):
                self.endpoints.append(args.value("a URL"))
            elif opt == "--endpoint-strategy":
                self.options["strategy"] = args.value("a strategy")
            elif opt in ("-resourcetype", "--resourcetype"):
                self.resource = self._choice(args.value("ce, wn or se"), RESOURCES, opt)
            elif opt in ("-actiontype", "--actiontype"):
                self.action = self._choice(args.value("an action"), ACTIONS, opt)
            elif opt in ("-capath", "--capath"):
                self.options["certdir"] = args.value("a directory")
            elif opt in ("-cert", "--cert"):
                self.options["cert"] = args.value("a file name")
            elif opt in ("-key", "--key"):
                self.options["key"] = args.value("a file name")
            elif opt in ("-timeout", "--timeout"):
                self.options["read_timeout"] = _seconds(args.value("seconds"), opt)
            elif opt in ("-connect-timeout", "--connect-timeout"):
                self.options["connect_timeout"] = _seconds(args.value("seconds"), opt)
            elif opt in ("-deadline", "--deadline"):
                self.options["deadline"] = _seconds(args.value("seconds"), opt)
            else:
                args.unknown()
        if not self.endpoints:
            raise PluginInitError(f"{NAME}: no -endpoint given")
        self._client = self._build()
        self._lock = threading.Lock()  # one query at a time over the kept connections

    @staticmethod
    def _choice(value: str, allowed: tuple[str, ...], opt: str) -> str:
        if value not in allowed:
            raise PluginInitError(f"{NAME}: {opt} takes {', '.join(allowed)}, got '{value}'")
        return value

    def _build(self) -> Any:
        from client.failover import FailoverClient
        from client.failures import ClientConfigError

        try:
            return FailoverClient(self.endpoints, **self.options)
        except ClientConfigError as exc:
            raise PluginInitError(f"{NAME}: {exc}") from None

    def run(self, ctx: RunContext) -> bool:
        from client.failures import AllEndpointsFailed
        from client.query import build_query

        credential = ctx.request.credential
        if credential is None:
            return ctx.fail(f"{NAME}: SCAS needs the user's certificate chain (use --pem)")
        query = build_query(credential.pem_chain(), fqans=ctx.fqans, resource_type=self.resource,
                            action=self.action, host=socket.getfqdn().lower())
        try:
            with self._lock:
                result = self._client.ask(query)
        except AllEndpointsFailed as exc:
            raise PluginUnavailable(f"{NAME}: {exc}") from None
        decision = result.decision
        if not result.permitted:
            why = decision.status_message or decision.decision
            return ctx.fail(f"{NAME}: {decision.decision} at {result.endpoint}: {why}")
        if decision.uid is None or decision.gid is None:
            return ctx.fail(f"{NAME}: Permit at {result.endpoint} without a uidgid obligation")
        ctx.data.add_uid(decision.uid)
        ctx.data.add_pgid(decision.gid)
        for gid in decision.sgids:
            ctx.data.add_sgid(gid)
        return True
