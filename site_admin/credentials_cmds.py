"""``scas-admin inspect-proxy`` and ``keygen``: credentials and the ticket signing key."""

from __future__ import annotations

import argparse
import json
import os
import sys
from datetime import UTC, datetime

DEFAULT_CERTDIR = "/etc/grid-security/certificates"
DEFAULT_VOMSDIR = "/etc/grid-security/vomsdir"


def _format_left(seconds: float) -> str:
    seconds = int(seconds)
    return f"{seconds // 3600}:{seconds // 60 % 60:02d}:{seconds % 60:02d}"


def cmd_inspect_proxy(args: argparse.Namespace) -> int:
    """Describe a proxy file and verify it against the CA dir and vomsdir."""
    from credentials.credential import (
        ProxyType,
        TrustStore,
        load_proxy_file,
        read_voms_unverified,
        verify_credential,
    )
    from credentials.errors import CredentialError

    now = datetime.now(UTC)
    try:
        cred = load_proxy_file(args.file)
    except CredentialError as exc:
        print(f"scas-admin: {exc.reason}", file=sys.stderr)
        if args.json:
            print(json.dumps({"file": args.file, "valid": False, "reason": exc.reason,
                              "failure": exc.kind}))
        return 1
    reason, kind = None, None
    trust = TrustStore(args.certdir, args.vomsdir)
    try:
        cred = verify_credential(cred, trust, now=now)
        acs, voms_verified = cred.voms, True
    except CredentialError as exc:
        reason, kind = exc.reason, exc.kind
        try:
            acs, voms_verified = read_voms_unverified(cred), False
        except CredentialError:
            acs, voms_verified = (), False
    if cred.proxy_type is ProxyType.NONE:
        ptype = "end-entity certificate (not a proxy)"
    else:
        ptype = f"{cred.proxy_type.value} proxy" + (" (limited)" if cred.limited else "")
    info = {
        "file": args.file,
        "subject": cred.subject,
        "issuer": cred.issuer,
        "identity": cred.identity,
        "type": ptype,
        "proxy_depth": cred.proxy_depth,
        "limited": cred.limited,
        "not_after": cred.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        "time_left": int(cred.time_left(now)),
        "vo": acs[0].vo if acs else None,
        "fqans": [f for ac in acs for f in ac.fqans],
        "voms_verified": voms_verified and bool(acs),
        "voms_server": acs[0].server_subject if acs else None,
        "valid": reason is None,
        "reason": reason,
        "failure": kind,
    }
    if args.json:
        print(json.dumps(info))
    else:
        rows = [
            ("subject", info["subject"]),
            ("issuer", info["issuer"]),
            ("identity", info["identity"]),
            ("type", ptype),
            ("time left", _format_left(cred.time_left(now))),
        ]
        if acs:
            mark = "" if voms_verified else " (UNVERIFIED)"
            rows.append(("VO", f"{info['vo']}{mark}"))
            rows.extend(("FQAN", f) for f in info["fqans"])
            rows.append(("VOMS server", str(info["voms_server"])))
        rows.append(("verdict", "valid" if reason is None else f"INVALID: {reason}"))
        for label, value in rows:
            print(f"{label:<12}: {value}")
    if reason is not None:
        print(f"scas-admin: {args.file}: {reason}", file=sys.stderr)
        return 1
    return 0


def cmd_keygen(args: argparse.Namespace) -> int:
    """Create the Ed25519 key pair that signs glexec mapping tickets (docs/ticket.md)."""
    from scas_server.ticket import cmd_keygen as ticket_keygen

    return ticket_keygen([args.path])


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("inspect-proxy", help="describe and verify a proxy file")
    p.add_argument("file")
    p.add_argument("--certdir", default=os.environ.get("X509_CERT_DIR", DEFAULT_CERTDIR),
                   help="hashed CA directory (default $X509_CERT_DIR or %(default)s)")
    p.add_argument("--vomsdir", default=os.environ.get("X509_VOMS_DIR", DEFAULT_VOMSDIR),
                   help="VOMS trust directory (default $X509_VOMS_DIR or %(default)s)")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_inspect_proxy)
    p = sub.add_parser("keygen", help="make the glexec ticket signing key pair")
    p.add_argument("path", help="directory, or the private key file to create")
    p.set_defaults(func=cmd_keygen)
