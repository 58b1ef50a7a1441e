"""The file-level checks of ``scas-admin check``: one function per kind of file.

Each function adds :class:`Problem` lines to a :class:`Report` and never raises for what it
finds on disk; parsing goes through the parsers the service itself uses (``sitefiles.mapfile``,
``credentials``), so a file passes here exactly when the service can read it.
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import stat
from dataclasses import dataclass, field
from datetime import UTC, datetime

from safetext import one_line

__all__ = [
    "Problem", "Report", "check_ca_dir", "check_gridmapdir", "check_mapfile", "check_owner",
    "check_vomsdir", "check_writable_dir",
]

_HASHED_CERT = re.compile(r"[0-9a-f]{8}\.\d+")
_HASHED_CRL = re.compile(r"[0-9a-f]{8}\.r\d+")


@dataclass(frozen=True)
class Problem:
    file: str
    line: int | None
    reason: str
    severity: str = "error"  # error: the service fails or decides wrongly; warning: hygiene

    def text(self) -> str:
        where = f"{self.file}:{self.line}" if self.line else self.file
        return one_line(f"{where}: {self.reason}")


@dataclass
class Report:
    """Problems found so far and every file looked at (each once)."""

    problems: list[Problem] = field(default_factory=list)
    files: set[str] = field(default_factory=set)

    def add(self, file: str, line: int | None, reason: str, severity: str = "error") -> None:
        problem = Problem(file, line or None, one_line(reason), severity)
        if problem not in self.problems:
            self.problems.append(problem)

    def first_visit(self, path: str) -> bool:
        """True the first time ``path`` is seen (so each file is checked once)."""
        key = os.path.abspath(path)
        if key in self.files:
            return False
        self.files.add(key)
        return True


def check_owner(report: Report, path: str, *, what: str = "policy file") -> None:
    """Not group/world-writable, owned by root or the user running the check."""
    try:
        st = os.stat(path)
    except OSError:
        return  # missing files are reported by whoever needs them
    if st.st_mode & 0o022:
        report.add(path, None, f"{what} is group- or world-writable "
                               f"(mode {stat.S_IMODE(st.st_mode):04o})", "warning")
    if st.st_uid not in (0, os.geteuid()):
        try:
            owner = pwd.getpwuid(st.st_uid).pw_name
        except KeyError:
            owner = str(st.st_uid)
        report.add(path, None, f"{what} is owned by {owner}, not root or the running user",
                   "warning")


def check_mapfile(report: Report, path: str, *, kind: str) -> list[tuple[int, str]]:
    """Parse a grid-mapfile (``accounts``), groupmapfile (``groups``) or DN/FQAN list
    (``keys``) as the plugins do; return its ``(line, pool)`` pool mappings."""
    from sitefiles import mapfile

    if not report.first_visit(path):
        return _pools(path)
    check_owner(report, path)
    try:
        parsed = mapfile.load(path)
    except mapfile.MapfileError as exc:
        report.add(path, None, str(exc).removeprefix(f"{path}: "))
        return []
    if parsed.error is not None:
        report.add(path, parsed.error.lineno, parsed.error.reason)
    if kind == "keys":
        return []
    for line in parsed.lines:
        for name in line.mappings:
            if name.startswith(".") or _exists(name, kind):
                continue
            what = "account" if kind == "accounts" else "group"
            report.add(path, line.lineno, f"{what} '{name}' does not exist on this host")
    return _pools(path)


def _exists(name: str, kind: str) -> bool:
    try:
        (pwd.getpwnam if kind == "accounts" else grp.getgrnam)(name)
    except KeyError:
        return False
    return True


def _pools(path: str) -> list[tuple[int, str]]:
    from sitefiles import mapfile

    try:
        parsed = mapfile.load(path)
    except mapfile.MapfileError:
        return []
    return [(line.lineno, m[1:]) for line in parsed.lines for m in line.mappings
            if m.startswith(".") and len(m) > 1]


def check_gridmapdir(report: Report, path: str, pools: list[tuple[str, int, str, bool]],
                     *, accounts: bool) -> None:
    """The directory is usable, every ``.pool`` of ``pools`` ((mapfile, line, pool, strict))
    has entries, each entry is a user (group) and no lease is corrupt."""
    from leases.names import in_pool, is_candidate_entry

    first = report.first_visit(path)
    if not os.path.isdir(path):
        if first:
            report.add(path, None, "gridmapdir does not exist or is not a directory")
        return
    if first and not os.access(path, os.W_OK | os.X_OK):
        report.add(path, None, "gridmapdir is not writable: no lease can be made")
    entries = sorted(n for n in os.listdir(path) if is_candidate_entry(n))
    for mapfile_path, lineno, pool, strict in pools:
        members = [e for e in entries if in_pool(e, pool, strict)]
        if not members:
            report.add(mapfile_path, lineno, f"pool .{pool} has no account in gridmapdir {path}")
        for name in members:
            if not _exists(name, "accounts" if accounts else "groups"):
                what = "user account" if accounts else "group"
                report.add(os.path.join(path, name), None,
                           f"pool entry of .{pool} is not a {what} on this host")
    if first:
        _check_leases(report, path)


def _check_leases(report: Report, path: str) -> None:
    for name in os.listdir(path):
        if not name.startswith("%"):
            continue
        try:
            st = os.lstat(os.path.join(path, name))
        except OSError:
            continue
        full = os.path.join(path, name)
        if not stat.S_ISREG(st.st_mode) or st.st_nlink > 2:
            report.add(full, None, f"corrupt lease (link count {st.st_nlink}): the service "
                                   "answers Indeterminate for this credential")
        elif st.st_nlink == 1:
            report.add(full, None, "solitary lease (its pool account is gone)", "warning")


def check_ca_dir(report: Report, path: str, *, now: datetime | None = None) -> None:
    """Hashed CA certificates present and named for their subject hash; CRLs parse and are
    current."""
    if not report.first_visit(path):
        return
    if not os.path.isdir(path):
        report.add(path, None, "CA directory does not exist")
        return
    now = now or datetime.now(UTC)
    names = sorted(os.listdir(path))
    certs = [n for n in names if _HASHED_CERT.fullmatch(n)]
    if not certs:
        report.add(path, None, "no hashed CA certificate (<hash>.0) in the CA directory")
    for name in certs:
        _check_ca_cert(report, os.path.join(path, name), now)
    for name in (n for n in names if _HASHED_CRL.fullmatch(n)):
        _check_crl(report, os.path.join(path, name), now, has_ca=f"{name[:8]}.0" in names)


def _check_ca_cert(report: Report, full: str, now: datetime) -> None:
    from cryptography import x509

    from credentials.proxy_chain import subject_hash

    try:
        with open(full, "rb") as fh:
            cert = x509.load_pem_x509_certificates(fh.read())[0]
    except (OSError, ValueError) as exc:
        report.add(full, None, f"not a readable PEM certificate ({one_line(exc, 120)})")
        return
    want = subject_hash(cert)
    if not os.path.basename(full).startswith(want + "."):
        report.add(full, None, f"named for the wrong hash: its subject hashes to {want}")
    if cert.not_valid_after_utc < now:
        report.add(full, None, f"CA certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}")


def _check_crl(report: Report, full: str, now: datetime, *, has_ca: bool) -> None:
    from cryptography import x509

    try:
        with open(full, "rb") as fh:
            data = fh.read()
        crl = (x509.load_pem_x509_crl(data) if b"-----BEGIN" in data
               else x509.load_der_x509_crl(data))
    except (OSError, ValueError) as exc:
        report.add(full, None, f"CRL does not parse ({one_line(exc, 120)}): every "
                               "certificate of this CA is refused")
        return
    nxt = crl.next_update_utc
    if nxt is not None and nxt < now:
        report.add(full, None, f"CRL is out of date (next update was {nxt:%Y-%m-%d %H:%M} UTC)")
    if not has_ca:
        report.add(full, None, "CRL without its CA certificate in the directory", "warning")


def check_vomsdir(report: Report, path: str) -> None:
    """Every VO has an ``.lsc`` file (or a certificate), and every ``.lsc`` lists DN chains."""
    if not report.first_visit(path):
        return
    if not os.path.isdir(path):
        report.add(path, None, "vomsdir does not exist")
        return
    for vo in sorted(os.listdir(path)):
        vodir = os.path.join(path, vo)
        if not os.path.isdir(vodir):
            continue
        files = sorted(os.listdir(vodir))
        if not files:
            report.add(vodir, None, f"VO {vo} has no .lsc file or certificate", "warning")
        for name in files:
            full = os.path.join(vodir, name)
            if name.endswith(".lsc"):
                _check_lsc(report, full)


def _check_lsc(report: Report, full: str) -> None:
    report.first_visit(full)
    try:
        with open(full, encoding="utf-8", errors="replace") as fh:
            lines = fh.read().split("\n")
    except OSError as exc:
        report.add(full, None, f"cannot read: {exc.strerror}")
        return
    chain = 0
    for lineno, raw in enumerate(lines, 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith("-"):
            chain = 0
            continue
        if not line.startswith("/"):
            report.add(full, lineno, "not a DN in OpenSSL one-line form (/DC=.../CN=...)")
        chain += 1
    if not any(raw.strip().startswith("/") for raw in lines):
        report.add(full, None, "lists no DN: no VOMS server of this VO is trusted")


def check_writable_dir(report: Report, path: str, *, what: str) -> None:
    """The directory of a file the service appends to is writable (and the file, if any)."""
    directory = os.path.dirname(path) or "."
    report.first_visit(path)
    if not os.path.isdir(directory):
        report.add(directory, None, f"{what} directory does not exist")
    elif os.path.exists(path) and not os.access(path, os.W_OK):
        report.add(path, None, f"{what} is not writable")
    elif not os.path.exists(path) and not os.access(directory, os.W_OK | os.X_OK):
        report.add(directory, None, f"{what} directory is not writable")
