"""lcas-run: ask an lcas.db whether one user may use this site.

    lcas-run --db FILE (--pem FILE | --dn DN [--fqan F]...) [--certdir D]
             [--vomsdir D] [--now ISO-8601] [--json]

Prints the decision and, for a deny, which plugin refused and why (one
line, or one JSON object with ``--json``). With ``--pem`` the proxy is
verified first (chain against ``--certdir``, VOMS ACs against ``--vomsdir``;
defaults ``$X509_CERT_DIR`` / ``$X509_VOMS_DIR``, else /etc/grid-security/...);
a credential that fails verification is a deny. ``--now`` fixes the clock
(timeslots, certificate lifetimes) for testing. As C, the proxy's private key is never read
(deciding needs only the certificates; loading a key costs tens of milliseconds).

Exit codes:

* 0 allow;
* 1 deny (a plugin refused, no plugins configured, a plugin failed to
  initialise, the credential failed verification);
* 2 error, one line on stderr (and, with ``--json``, ``{"decision": "error",
  "reason": ...}`` on stdout, except for argparse usage errors): bad usage,
  an unreadable credential, a malformed lcas.db (``file:line: reason``, no
  plugin is run), or no decision because a plugin failed while deciding (an
  unreadable or broken ban, allow or auth file, a crash):
  ``LCAS unavailable: <plugin>: <why>``.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Sequence
from datetime import datetime

from lcas.plugin_api import LcasUnavailable, Verdict
from safetext import one_line
from sitefiles.oneshot import finish


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="lcas-run", description="Run LCAS on one user.")
    p.add_argument("--db", required=True, help="lcas.db to use")
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--pem", help="proxy or certificate chain file (verified)")
    src.add_argument("--dn", help="user DN, OpenSSL one-line form (with --fqan)")
    p.add_argument("--fqan", action="append", default=[], help="FQAN (repeatable, in order)")
    p.add_argument("--certdir", help="CA directory (default $X509_CERT_DIR)")
    p.add_argument("--vomsdir", help="vomsdir (default $X509_VOMS_DIR)")
    p.add_argument("--now", help="decide as of this ISO-8601 time (local if no offset)")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    return p


def _report(verdict: Verdict, dn: str | None, fqans: Sequence[str], as_json: bool) -> int:
    decision = "allow" if verdict.allowed else "deny"
    if as_json:
        obj = {"decision": decision, "dn": dn, "fqans": list(fqans),
               "plugin": verdict.plugin, "reason": verdict.reason}
        sys.stdout.write(json.dumps(obj, ensure_ascii=False) + "\n")
    elif verdict.allowed:
        sys.stdout.write("allow\n")
    else:
        who = f"{one_line(verdict.plugin)}: " if verdict.plugin else ""
        sys.stdout.write(f"deny: {who}{one_line(verdict.reason)}\n")
    return 0 if verdict.allowed else 1


def _error(message: str, as_json: bool) -> int:
    message = one_line(message)
    if as_json:
        sys.stdout.write(json.dumps({"decision": "error", "reason": message}) + "\n")
    print(f"lcas-run: {message}", file=sys.stderr)
    return 2


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command; the exit code (from the command line: see :mod:`sitefiles.oneshot`)."""
    return finish(_run, argv)


def _run(argv: Sequence[str] | None) -> int:
    args = _parser().parse_args(argv)
    if args.fqan and args.pem:
        return _error("--fqan goes with --dn; with --pem the FQANs come from the proxy",
                      args.json)
    now = datetime.now().astimezone()
    if args.now:
        try:
            now = datetime.fromisoformat(args.now)
        except ValueError:
            return _error(f"--now: not an ISO-8601 time: {args.now!r}", args.json)

    from lcas.chain import LcasConfigError, authorize, load_chain

    try:
        chain = load_chain(args.db)
    except LcasConfigError as exc:
        return _error(str(exc), args.json)

    try:
        credential = None
        dn, fqans = args.dn, tuple(args.fqan)
        if args.pem:
            from credentials.credential import TrustStore, load_proxy_file, verify_credential
            from credentials.errors import CredentialError

            certdir = args.certdir or os.environ.get(
                "X509_CERT_DIR", "/etc/grid-security/certificates")
            vomsdir = args.vomsdir or os.environ.get(
                "X509_VOMS_DIR", "/etc/grid-security/vomsdir")
            try:
                credential = load_proxy_file(args.pem, with_key=False)
            except CredentialError as exc:
                return _error(f"cannot read credential: {exc.reason}", args.json)
            dn = credential.identity
            try:
                checked = now if now.tzinfo is not None else now.astimezone()
                credential = verify_credential(credential, TrustStore(certdir, vomsdir),
                                               now=checked)
            except CredentialError as exc:
                refused = Verdict.deny(f"credential refused: {exc.reason}")
                return _report(refused, dn, (), args.json)
            fqans = credential.fqans
        try:
            verdict = authorize(chain, dn, fqans, credential=credential, now=now)
        except LcasUnavailable as exc:
            return _error(f"LCAS unavailable: {exc.reason}", args.json)
        return _report(verdict, dn, fqans, args.json)
    finally:
        chain.close()


if __name__ == "__main__":
    sys.exit(main())
