"""lcmaps-run: map one credential with an lcmaps.db and print one JSON line.

The output has the keys and meaning of the C oracle's (decision, uid,
username, pgid, pgids, sgids, poolindex, reason) so both can be compared
directly. Exit 0 permit, 1 deny, 2 error (usage, unreadable credential,
malformed lcmaps.db or a plugin that refuses its arguments: then
``file:line: reason`` goes to stderr and nothing runs; or a fault while
mapping: a lease store unusable, an LDAP server down, a plugin crash).

As in C, ``--pem`` does not verify the certificate chain here (that is the
verify_proxy plugin's job, and it uses ``--certdir``), but the VOMS ACs are
verified before any plugin runs and a bad one denies the request. Like C, it
never reads the proxy's private key: mapping needs only the certificates, and
loading an RSA key (with its consistency checks) costs tens of milliseconds.

Start-up time is a feature of a one-shot command: only the modules a run needs
are imported (the plugins lcmaps.db names, the credential code only with
``--pem``), and plugins are found without scanning installed distributions.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import UTC, datetime

from sitefiles.oneshot import finish


class _Formatter(argparse.HelpFormatter):
    """argparse's formatter, sized without importing shutil (and with it bz2, lzma, zlib:
    4 ms of a one-shot's start-up), since argparse builds one for every add_argument."""

    def __init__(self, prog: str) -> None:
        try:
            width = int(os.environ["COLUMNS"])
        except (KeyError, ValueError):
            try:
                width = os.get_terminal_size(sys.__stdout__.fileno()).columns  # type: ignore[union-attr]
            except (AttributeError, ValueError, OSError):
                width = 80
        super().__init__(prog, width=max(width, 20) - 2)


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lcmaps-run", description="Run LCMAPS on one credential.",
                                formatter_class=_Formatter)
    p.add_argument("--db", required=True, help="lcmaps.db to use")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pem", help="proxy or certificate chain file")
    src.add_argument("--dn", help="user DN (with --fqan; no certificate)")
    p.add_argument("--fqan", action="append", default=[], help="FQAN (repeatable, in order)")
    p.add_argument("--policy", action="append", default=[], help="policy to run (repeatable)")
    p.add_argument("--mapcounter", type=int, default=-1)
    p.add_argument("--verify", metavar="UID:PGIDS:SGIDS[:POOLINDEX]",
                   help="verification mode for this account")
    p.add_argument("--certdir", help="CA directory (default $X509_CERT_DIR)")
    p.add_argument("--vomsdir", help="vomsdir (default $X509_VOMS_DIR)")
    p.add_argument("--json", action="store_true", help="JSON output (the default)")
    p.add_argument("--strict-voms", action="store_true",
                   help="deny when a VOMS AC fails verification (C LCMAPS ignores the AC and "
                        "maps by DN; that is the default here too)")
    return p


def _gids(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x != "")


def _emit(obj: dict[str, object]) -> None:
    sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    sys.stdout.flush()


def _error(reason: str) -> int:
    _emit({"decision": "error", "uid": None, "username": None, "pgid": None, "pgids": [],
           "sgids": [], "poolindex": None, "reason": reason})
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit code (from the command line: see :mod:`sitefiles.oneshot`)."""
    return finish(_run, argv)


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.fqan and args.pem:
        print("lcmaps-run: --fqan goes with --dn, not --pem", file=sys.stderr)
        return 2
    if args.verify and not args.pem:
        print("lcmaps-run: --verify needs --pem", file=sys.stderr)
        return 2
    from lcmaps.plugin_api import Mode, RequestedAccount

    requested = None
    if args.verify:
        parts = args.verify.split(":", 3)
        try:
            requested = RequestedAccount(
                uid=int(parts[0]), pgids=_gids(parts[1]), sgids=_gids(parts[2]),
                poolindex=parts[3] if len(parts) > 3 else None,
            )
        except (ValueError, IndexError):
            print(f"lcmaps-run: bad --verify spec {args.verify!r}", file=sys.stderr)
            return 2

    from lcmaps.evaluation import Engine, MappingUnavailable, map_credential
    from lcmaps.policy_db import PolicyDbError, load_policy_db

    try:
        engine = Engine(load_policy_db(args.db))
    except PolicyDbError as exc:
        print(str(exc), file=sys.stderr)
        return _error(str(exc))

    credential = None
    dn, fqans = args.dn, tuple(args.fqan)
    now = datetime.now(UTC)
    if args.pem:
        from credentials import voms
        from credentials.credential import load_proxy_file
        from credentials.errors import CredentialError

        certdir = args.certdir or os.environ.get("LCMAPS_X509_CERT_DIR") or os.environ.get(
            "X509_CERT_DIR", "/etc/grid-security/certificates")
        vomsdir = args.vomsdir or os.environ.get("LCMAPS_X509_VOMS_DIR") or os.environ.get(
            "X509_VOMS_DIR", "/etc/grid-security/vomsdir")
        try:
            credential = load_proxy_file(args.pem, with_key=False)
        except CredentialError as exc:
            return _error(f"cannot read credential: {exc.reason}")
        dn = credential.identity
        try:
            acs = voms.verified_attributes(
                credential.chain, credential.identity_index, vomsdir, certdir, now=now
            )
        except CredentialError as exc:
            if args.strict_voms:
                _emit({"decision": "deny", "uid": None, "username": None, "pgid": None,
                       "pgids": [], "sgids": [], "poolindex": None,
                       "reason": f"VOMS attributes rejected: {exc.reason}"})
                return 1
            # As C LCMAPS 1.6.6: the bad AC is ignored and the DN alone is mapped.
            print(f"lcmaps-run: warning: VOMS attributes ignored: {exc.reason}", file=sys.stderr)
            acs = ()
        fqans = tuple(f for ac in acs for f in ac.fqans)
        from dataclasses import replace

        credential = replace(credential, voms=acs)
        os.environ.setdefault("X509_CERT_DIR", certdir)
    try:
        result = map_credential(
            engine, dn, fqans, credential=credential, policies=args.policy or None,
            mapcounter=args.mapcounter, mode=Mode.VERIFICATION if requested else Mode.NORMAL,
            requested=requested, now=now,
        )
    except MappingUnavailable as exc:
        print(f"lcmaps-run: {exc.reason}", file=sys.stderr)
        return _error(exc.reason)
    finally:
        engine.close()
    out: dict[str, object] = {
        "decision": result.decision, "uid": result.uid, "username": result.username,
        "pgid": result.pgid, "pgids": list(result.pgids), "sgids": list(result.sgids),
        "poolindex": result.poolindex, "reason": result.reason,
    }
    if requested is not None:  # the oracle echoes the account it was asked to verify
        from lcmaps.accounts import UnknownAccount, account_by_uid

        try:
            uname: str | None = account_by_uid(requested.uid or 0).name
        except UnknownAccount:
            uname = None
        out.update(uid=requested.uid, username=uname, pgids=list(requested.pgids),
                   sgids=list(requested.sgids), poolindex=requested.poolindex)
        out.pop("pgid")
    _emit(out)
    return 0 if result.permitted else 1


if __name__ == "__main__":
    sys.exit(main())
