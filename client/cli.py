"""``scas-query``: ask SCAS for a decision from the command line, with failover.

In:  endpoints, the payload proxy, the TLS credential, the resource type and action.
Out: the decision, its obligations and the endpoint that answered on stdout (or one JSON
     object with --json); one line per failed attempt on stderr. Exit 0 Permit, 1 Deny
     (or NotApplicable), 2 anything else: a usage error, an unreadable credential, every
     endpoint failed or answered Indeterminate.

`--proxy` is the payload credential whose chain goes into the query. It is also the TLS
client credential unless `--cert`/`--key` name another (a host certificate, as a CE does).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence

from client import failover
from client.failures import AllEndpointsFailed, Attempt, ClientError

PROG = "scas-query"
EXIT_PERMIT, EXIT_DENY, EXIT_ERROR = 0, 1, 2

EPILOG = """\
Exit status: 0 Permit, 1 Deny (or NotApplicable), 2 error (usage, unreadable credential,
every endpoint failed or answered Indeterminate).

Examples:
  scas-query --endpoint https://scas1:8443 --endpoint https://scas2:8443 \\
      --proxy /tmp/x509up_u1000 --resource-type wn --action execute-now
  scas-query --socket /run/scas/scas.sock --proxy $X509_USER_PROXY \\
      --resource-type wn --action execute-now --ticket --json
"""


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not value > 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be a positive number of seconds: {text!r}")
    return value


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog=PROG,
        description="Ask SCAS replicas for an authorization decision, with failover.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument(
        "--endpoint",
        action="append",
        default=[],
        metavar="URL",
        help="https://HOST[:PORT][/PATH] (port 8443 by default) or unix:/PATH; "
        "repeat for replicas",
    )
    p.add_argument(
        "--socket",
        action="append",
        default=[],
        metavar="PATH",
        help="the node-local Unix socket (same as --endpoint unix:PATH)",
    )
    p.add_argument(
        "--strategy",
        choices=failover.STRATEGIES,
        default=failover.DEFAULT_STRATEGY,
        help="order of the endpoints (default %(default)s)",
    )
    p.add_argument(
        "--timeout",
        type=_seconds,
        default=failover.READ_TIMEOUT,
        metavar="S",
        help="per attempt: seconds for the complete reply (default %(default)g)",
    )
    p.add_argument(
        "--connect-timeout",
        type=_seconds,
        default=failover.CONNECT_TIMEOUT,
        metavar="S",
        help="per attempt: seconds to connect and finish the TLS handshake (default %(default)g)",
    )
    p.add_argument(
        "--deadline",
        type=_seconds,
        default=failover.DEADLINE,
        metavar="S",
        help="overall: all attempts end by then (default %(default)g)",
    )
    p.add_argument(
        "--proxy",
        default=os.environ.get("X509_USER_PROXY"),
        metavar="FILE",
        help="the payload proxy (cert, key, chain) whose chain is sent; also the "
        "TLS client credential without --cert/--key "
        "(default $X509_USER_PROXY)",
    )
    p.add_argument("--cert", metavar="FILE", help="TLS client certificate (e.g. hostcert.pem)")
    p.add_argument("--key", metavar="FILE", help="its key (e.g. hostkey.pem)")
    p.add_argument(
        "--certdir",
        default=None,
        metavar="DIR",
        help="hashed CA directory to verify the server (default $X509_CERT_DIR, "
        "else /etc/grid-security/certificates)",
    )
    p.add_argument(
        "--resource-type",
        required=True,
        metavar="wn|ce|se",
        help="wn (glexec), ce (gatekeeper) or se; or a full URI",
    )
    p.add_argument(
        "--action",
        required=True,
        metavar="execute-now|queue|access",
        help="execute-now, queue or access; or a full URI",
    )
    p.add_argument(
        "--fqan",
        action="append",
        default=[],
        metavar="FQAN",
        help="an FQAN the PEP claims (the first is primary); the server trusts "
        "only the proxy's verified VOMS attributes",
    )
    p.add_argument("--host", metavar="NAME", help="this host's name (default: gethostname)")
    p.add_argument("--pilot-dn", metavar="DN", help="the pilot job's DN")
    p.add_argument(
        "--ticket",
        action="store_true",
        help="also ask for a glexec mapping ticket (Unix socket only)",
    )
    p.add_argument(
        "--caller-uid",
        type=int,
        metavar="UID",
        help="with --ticket: the uid the ticket is for (the server checks it)",
    )
    p.add_argument(
        "--state-file",
        metavar="PATH",
        help="where recent endpoint failures are remembered (default "
        "$XDG_RUNTIME_DIR/scas-client/endpoints.json or ~/.cache/...)",
    )
    p.add_argument("--no-state", action="store_true", help="remember no failures")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _failed_lines(attempts: Sequence[Attempt]) -> None:
    for attempt in attempts:
        print(f"{PROG}: {attempt.describe()}", file=sys.stderr)


def _report(result: failover.Result) -> None:
    d = result.decision
    took = result.attempts[-1].seconds
    reason = f": {d.status_message}" if d.status_message else ""
    print(f"{d.decision} from {result.endpoint} ({took:.3f} s){reason}")
    if d.uid is not None or d.gid is not None:
        sgids = ",".join(str(g) for g in d.sgids) or "-"
        print(f"  uid {d.uid}  gid {d.gid}  secondary gids {sgids}")
    if d.username is not None:
        print(f"  username {d.username}")
    if d.ticket is not None:
        print(f"  ticket {d.ticket}")
    names = ", ".join(failover.short_obligation(o) for o in d.obligations) or "none"
    print(f"  obligations: {names}")


def _error(message: str, as_json: bool, attempts: Sequence[Attempt] = ()) -> int:
    if as_json:
        out = {"decision": None, "endpoint": None, "error": message,
               "attempts": [a.as_dict() for a in attempts]}  # fmt: skip
        print(json.dumps(out, sort_keys=True))
    else:
        print(f"{PROG}: error: {message}", file=sys.stderr)
    return EXIT_ERROR


def main(argv: Sequence[str] | None = None) -> int:
    args = parser().parse_args(argv)
    endpoints = list(args.endpoint) + [f"unix:{path}" for path in args.socket]
    if not endpoints:
        return _error("give at least one --endpoint or --socket", args.json)
    if not args.proxy:
        return _error("give --proxy FILE (or set X509_USER_PROXY)", args.json)
    if (args.cert is None) != (args.key is None):
        return _error("--cert and --key go together", args.json)
    if args.state_file and args.no_state:
        return _error("--state-file and --no-state exclude each other", args.json)
    from client import xacml_ids as ids
    from client.endpoint_memory import EndpointMemory
    from client.query import build_query, read_chain

    memory: EndpointMemory | bool = EndpointMemory(args.state_file) if args.state_file else True
    obligations = ids.MAPPING_OBLIGATIONS + ((ids.OBLIG_TICKET,) if args.ticket else ())
    try:
        query = build_query(
            read_chain(args.proxy),
            fqans=args.fqan,
            resource_type=args.resource_type,
            action=args.action,
            host=args.host,
            pilot_dn=args.pilot_dn,
            obligations=obligations,
            caller_uid=args.caller_uid,
        )
        client = failover.FailoverClient(
            endpoints,
            cert=args.cert or args.proxy,
            key=args.key,
            certdir=args.certdir,
            strategy=args.strategy,
            connect_timeout=args.connect_timeout,
            read_timeout=args.timeout,
            deadline=args.deadline,
            memory=False if args.no_state else memory,
        )
        result = client.ask(query)
    except AllEndpointsFailed as exc:
        if not args.json:
            _failed_lines(exc.attempts)
            n = len(exc.attempts)
            what = "the endpoint" if n == 1 else f"all {n} endpoints"
            return _error(f"no answer: {what} failed (deadline {exc.deadline:g} s)", False)
        return _error(exc.message, True, exc.attempts)
    except ClientError as exc:
        return _error(exc.message, args.json)
    if args.json:
        print(json.dumps(result.as_dict(), sort_keys=True))
    else:
        _failed_lines(result.failed_attempts)
        _report(result)
    return EXIT_PERMIT if result.permitted else EXIT_DENY


if __name__ == "__main__":
    sys.exit(main())
