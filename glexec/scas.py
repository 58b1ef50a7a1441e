"""Ask SCAS for the payload's mapping ticket, and turn every outcome into an exit code.

In:  the config (endpoints, order, time limits, CA directory), the checked payload proxy,
     the pilot's own credential (``X509_USER_PROXY``: the TLS identity towards a central
     SCAS; not needed for the node-local socket), this caller's uid and host name.
Out: the ticket string, or a `GlexecError`:

| outcome | exit |
|---|---|
| every endpoint refused, timed out, failed TLS or answered Indeterminate (deadline) | 202 |
| a bad endpoint in the config, an unusable CA directory of the site | 202 |
| the pilot's credential missing or unusable | 201 |
| Deny, NotApplicable | 203 |
| Permit without a ticket (this pilot is not on the server's ticket allow-list) | 203 |

The query (client.query.build_query): resource ``wn``, action ``execute-now``, the payload
proxy's certificates as ``cert-chain`` (its key is never sent), ``caller_uid`` = the real uid,
``dns-host-name`` = ``gethostname()`` lower-cased (the name the helper compares the ticket's
host with), and the ticket obligation advertised in ``pep-oblig-supported``. The client
library is imported here, on first use, never for ``glexec -h``; one query loads socket (and
ssl for an https endpoint) and the standard-library codec, never lxml, http.client,
dataclasses or typing (tests/test_client_lean.py): start-up time is glexec's to keep small.
"""

from __future__ import annotations

import os
import socket
import stat

from glexec.config import Config
from glexec.inputs import Proxy
from glexec.status import CALLER, REFUSED, SYSTEM, GlexecError

DEFAULT_CERTDIR = "/etc/grid-security/certificates"
CONNECT_TIMEOUT = 5.0
MAX_TICKET = 8192


def host_name() -> str:
    """This node's name as the helper sees it (``gethostname()``, lower-cased)."""
    return socket.gethostname().lower()


def certdir(cfg: Config, environ: dict[str, str] | os._Environ[str]) -> tuple[str, str]:
    """(CA directory, where it came from): certdir in glexec.conf, $X509_CERT_DIR, default."""
    if cfg["certdir"]:
        return str(cfg["certdir"]), "certdir in glexec.conf"
    if environ.get("X509_CERT_DIR"):
        return environ["X509_CERT_DIR"], "X509_CERT_DIR"
    return DEFAULT_CERTDIR, "the default"


def _pilot_credential(cfg: Config, environ: dict[str, str] | os._Environ[str]) -> tuple[str, str]:
    """(pilot proxy, CA dir) for TLS, after the checks that tell 201 from 202."""
    pilot = environ.get("X509_USER_PROXY", "")
    if not pilot:
        raise GlexecError(
            CALLER,
            "input",
            "X509_USER_PROXY is not set: the pilot's own proxy "
            "is glexec's TLS identity towards SCAS",
        )
    if not pilot.startswith("/"):
        raise GlexecError(CALLER, "input", f"X509_USER_PROXY {pilot!r}: not an absolute path")
    try:
        os.close(os.open(pilot, os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK))
    except OSError as exc:
        raise GlexecError(CALLER, "input", f"X509_USER_PROXY {pilot}: {exc.strerror}") from None
    cas, origin = certdir(cfg, environ)
    code = CALLER if origin == "X509_CERT_DIR" else SYSTEM
    try:
        st = os.stat(cas)
    except OSError:
        st = None
    if st is None or not stat.S_ISDIR(st.st_mode):
        raise GlexecError(code, "scas", f"CA directory {cas} ({origin}): not a directory")
    if st.st_mode & 0o022:
        # anyone could add a CA there and answer as SCAS (tickets stay unforgeable, but a
        # Deny or a lost lease could be faked): the original refused it too
        raise GlexecError(code, "scas", f"CA directory {cas} ({origin}): group- or "
                          f"world-writable (mode {stat.S_IMODE(st.st_mode):04o})")
    from client.failures import ClientConfigError
    from client.transport import TlsCredentials, tls_context

    try:
        tls_context(TlsCredentials(pilot, None, cas))
    except ClientConfigError as exc:
        raise GlexecError(CALLER, "input", f"X509_USER_PROXY: {exc.message}") from None
    return pilot, cas


def ask(
    cfg: Config,
    proxy: Proxy,
    *,
    uid: int,
    environ: dict[str, str] | os._Environ[str],
    host: str | None = None,
) -> tuple[str, str]:
    """(ticket, endpoint that gave it); GlexecError for every other outcome (table above)."""
    endpoints = cfg.endpoints
    cert = cas = None
    if any(url.startswith("https:") for url in endpoints):
        cert, cas = _pilot_credential(cfg, environ)
    from client import xacml_ids as ids
    from client.failover import FailoverClient
    from client.failures import AllEndpointsFailed, ClientConfigError, ClientError
    from client.query import build_query

    try:
        query = build_query(
            proxy.pem,
            resource_type="wn",
            action="execute-now",
            host=host if host is not None else host_name(),
            obligations=(*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET),
            caller_uid=uid,
        )
    except ClientConfigError as exc:
        raise GlexecError(CALLER, "input", f"{proxy.path}: {exc.message}") from None
    timeout = float(cfg["scas_timeout"])  # type: ignore[arg-type]
    try:
        client = FailoverClient(
            endpoints,
            cert=cert,
            certdir=cas,
            strategy=str(cfg["scas_order"]),
            connect_timeout=min(CONNECT_TIMEOUT, timeout),
            read_timeout=timeout,
            deadline=float(cfg["scas_deadline"]),  # type: ignore[arg-type]
        )
        result = client.ask(query)
    except AllEndpointsFailed as exc:
        raise GlexecError(SYSTEM, "scas", exc.message) from None
    except ClientError as exc:
        raise GlexecError(SYSTEM, "scas", f"SCAS client: {exc.message}") from None
    d, where = result.decision, result.endpoint
    why = f": {d.status_message}" if d.status_message else ""
    if d.decision == "Deny":
        raise GlexecError(REFUSED, "scas", f"SCAS at {where} denied the payload's proxy{why}")
    if d.decision != "Permit":
        raise GlexecError(REFUSED, "scas", f"SCAS at {where} answered {d.decision}{why}")
    if not d.ticket:
        raise GlexecError(
            REFUSED,
            "scas",
            (
                f"SCAS at {where} permitted (user {d.username}, uid {d.uid}) but issued no "
                "ticket: is this pilot on ticket.pep_allow (or has it an FQAN on "
                "ticket.pep_fqans) in the SCAS configuration? The audit line says why"
            ),
        )
    ticket = d.ticket.strip()
    if (
        len(ticket) > MAX_TICKET
        or not ticket.isascii()
        or not ticket.isprintable()
        or (" " in ticket or ticket.count(".") != 1)
    ):
        raise GlexecError(SYSTEM, "scas", f"SCAS at {where} sent a malformed ticket")
    return ticket, where
