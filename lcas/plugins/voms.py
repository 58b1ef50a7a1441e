"""lcas_voms.mod: admit users by VOMS FQAN (and optionally DN) from an auth file.

``pluginargs="-authfile F [-authformat simple|gacl] [-use_user_dn]
[-vomsdir D] [-certdir D]"``

* ``simple``: grid-mapfile syntax (:mod:`sitefiles.mapfile`): each line's key
  is an FQAN pattern (shell wildcards, ``*`` crosses ``/``, case-sensitive,
  no FQAN normalisation: ``/dteam`` does not match ``/dteam/*``); anything
  after the key is ignored; a trailing ``\\r`` (CRLF file) is dropped from
  keys. With ``-use_user_dn`` a key may also match the user's DN.
* ``gacl``: GACL XML, see :mod:`lcas.plugins._gacl`.
* without ``-authformat`` the format is taken from the file: GACL if it
  starts with ``<``, simple otherwise.

The FQANs are those of the request. If the request carries a credential
that has not been verified yet, it is verified here against ``-certdir`` /
``-vomsdir`` (default ``$X509_CERT_DIR`` / ``$X509_VOMS_DIR``, else the
``/etc/grid-security`` directories) and a failure refuses. The legacy
option ``-gacl_use_voms_dn <value>`` of the shipped lcas.db example is
accepted and ignored (logged). An auth file that cannot be read or parsed
at decision time raises LcasUnavailable (Indeterminate, never a deny).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from lcas.plugin_api import (
    CachedFile,
    LcasUnavailable,
    Plugin,
    PluginInitError,
    Request,
    Verdict,
    resolve_path,
)
from lcas.plugins._gacl import Entry, Fqan, GaclError, gacl_allows, parse_gacl, split_fqan
from safetext import one_line
from sitefiles import mapfile
from sitefiles.cglob import glob_match
from sitefiles.plugins import ArgWalker

log = logging.getLogger("lcas")


def _parse_simple(data: bytes, filename: str) -> tuple[str, ...]:
    parsed = mapfile.parse(data, filename)
    if parsed.error is not None:
        raise parsed.error
    return tuple(line.key[:-1] if line.key.endswith("\r") else line.key
                 for line in parsed.lines)


def _detect(data: bytes, filename: str) -> tuple[str, tuple[str, ...] | tuple[Entry, ...]]:
    if data.lstrip(b"\xef\xbb\xbf \t\r\n").startswith(b"<"):
        return "gacl", parse_gacl(data, filename)
    return "simple", _parse_simple(data, filename)


class VomsAuth(Plugin):
    name = "voms"

    def __init__(self, argv: Sequence[str], *, db_dir: str = ".") -> None:
        super().__init__(argv, db_dir=db_dir)
        authfile = fmt = None
        self.use_user_dn = False
        self.certdir = os.environ.get("X509_CERT_DIR", "/etc/grid-security/certificates")
        self.vomsdir = os.environ.get("X509_VOMS_DIR", "/etc/grid-security/vomsdir")
        args = ArgWalker(argv, self.name)
        for opt in args:
            if opt == "-use_user_dn":
                self.use_user_dn = True
                continue
            if opt not in ("-vomsdir", "-certdir", "-authfile", "-authformat",
                           "-gacl_use_voms_dn"):
                args.unknown()
            value = args.value(allow_empty=True)
            if opt == "-authfile":
                authfile = resolve_path(value, db_dir)
            elif opt == "-authformat":
                if value not in ("simple", "gacl"):
                    raise PluginInitError(f"{self.name}: -authformat takes simple or gacl, "
                                          f"got '{value}'")
                fmt = value
            elif opt == "-vomsdir":
                self.vomsdir = resolve_path(value, db_dir)
            elif opt == "-certdir":
                self.certdir = resolve_path(value, db_dir)
            else:
                log.warning("%s: legacy option %s %s ignored", self.name, opt, one_line(value))
        if authfile is None:
            raise PluginInitError(f"{self.name}: -authfile is required")
        self.format = fmt
        parse = {"simple": lambda d, f: ("simple", _parse_simple(d, f)),
                 "gacl": lambda d, f: ("gacl", parse_gacl(d, f)),
                 None: _detect}[fmt]
        self.authfile = CachedFile(authfile, parse)
        try:
            self.authfile.get()
        except OSError as exc:
            raise PluginInitError(f"{self.name}: {authfile}: {exc.strerror}") from None
        except (GaclError, mapfile.MapfileError) as exc:
            raise PluginInitError(f"{self.name}: {exc}") from None

    def _fqans(self, request: Request) -> list[Fqan] | Verdict:
        cred = request.credential
        if cred is None:
            return [split_fqan(f) for f in request.fqans]
        if not cred.verified:
            from credentials.credential import TrustStore, verify_credential
            from credentials.errors import CredentialError

            try:
                cred = verify_credential(cred, TrustStore(self.certdir, self.vomsdir),
                                         now=request.now)
            except CredentialError as exc:
                return Verdict.deny(f"credential refused: {exc.reason}")
        return [split_fqan(f, ac.server_subject) for ac in cred.voms for f in ac.fqans]

    def authorize(self, request: Request) -> Verdict:
        try:
            kind, rules = self.authfile.get()
        except OSError as exc:
            raise LcasUnavailable(f"cannot read {self.authfile.path}: {exc.strerror}") from None
        except (GaclError, mapfile.MapfileError) as exc:
            raise LcasUnavailable(str(exc)) from None
        fqans = self._fqans(request)
        if isinstance(fqans, Verdict):
            return fqans
        where = self.authfile.path
        if kind == "gacl":
            entry = gacl_allows(rules, request.dn, fqans, self.use_user_dn)  # type: ignore[arg-type]
            if entry is not None:
                return Verdict.allow(f"GACL entry at {where}:{entry.line}")
        else:
            for key in rules:
                assert isinstance(key, str)
                if any(glob_match(key, f.text) for f in fqans):
                    return Verdict.allow(f"FQAN matches '{key}' in {where}")
                if self.use_user_dn and glob_match(key, request.dn):
                    return Verdict.allow(f"DN matches '{key}' in {where}")
        if not fqans and not self.use_user_dn:
            return Verdict.deny(f"no FQANs, and {where} admits by FQAN only")
        if self.use_user_dn:
            return Verdict.deny(f"neither the DN nor any FQAN is authorised by {where}")
        return Verdict.deny(f"no FQAN is authorised by {where}")
