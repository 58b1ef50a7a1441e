"""lcmaps_ldap_enf.mod: write the mapped account's groups into an RFC 2307 directory.

Sites whose NSS/PAM read accounts from LDAP cannot switch identity until the
directory says the mapped user belongs to the mapped groups. As the C
plugin does, this one sets the ``gidNumber`` of the user's posixAccount
under ``-sb_user`` to the first primary gid, and adds the user name as a
``memberUid`` of the posixGroup of every secondary gid under ``-sb_groups``
(an existing membership is left alone, so repeated runs change nothing).

Differences from C, all on the side of not leaving a half-written directory:

* entries are found by search (posixAccount by ``uid``, posixGroup by
  ``gidNumber``), not by gluing ``uid=<name>``/``cn=<local group name>``
  onto the search base, so LDAP group names need not match /etc/group;
* every entry is looked up before anything is modified: with
  ``-require_all_groups yes`` (the default) a missing group fails the run
  with nothing changed; if a write still fails, the writes already made are
  undone and the reason says what was and was not changed;
* the connect timeout and every operation honour ``-timeout`` (C only
  bounds the bind); ``0`` means no limit, as in C;
* C insists on running as root and on a password file owned by root; here
  the file must be owned by the process user (root for a root service).

Like C it runs in verification mode too (it only makes the directory
agree with the mapping). One connection per run, none kept on ``self``.

Faults raise PluginUnavailable (host:port): unreachable, bind refused, timeout, failed op.
Answers about the mapping are a deny (ctx.fail): id limits, an entry missing or not unique.
"""

from __future__ import annotations

import os
import stat
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import cache
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from ldap3 import Connection

from lcmaps import accounts
from lcmaps.plugin_api import Plugin, PluginInitError, PluginUnavailable, RunContext, log
from safetext import one_line
from sitefiles.plugins import ArgWalker, parse_yes_no


@cache
def _ldap3() -> Any:
    """ldap3, imported when the plugin first talks to a directory: importing it (and pyasn1
    under it) costs about 170 ms, which a one-shot whose policy never reaches this plugin, or
    fails it on the id limits, should not pay."""
    with warnings.catch_warnings():  # ldap3 2.9 uses pyasn1 names deprecated in 0.6
        warnings.filterwarnings("ignore", "(tag|type)Map is deprecated", DeprecationWarning)
        import ldap3
        from ldap3.core.exceptions import LDAPException
        from ldap3.utils.conv import escape_filter_chars
    return SimpleNamespace(lib=ldap3, LDAPException=LDAPException,
                           escape_filter_chars=escape_filter_chars)

NAME = "lcmaps_ldap_enf"
MAX_GID = 999_999_999  # C refuses larger group numbers
RESULT_TYPE_OR_VALUE_EXISTS = 20

_MAX_OPTS = {
    "-maxuid": "maxuid", "-MAXUID": "maxuid",
    "-maxpgid": "maxpgid", "-MAXPGID": "maxpgid",
    "-maxsgid": "maxsgid", "-MAXSGID": "maxsgid",
}


def _ngroups_max() -> int:
    try:
        return int(os.sysconf("SC_NGROUPS_MAX"))
    except (ValueError, OSError):
        return 65536


def _number(value: str, opt: str) -> int:
    """A string of ASCII digits only, as C's isdigit loop plus strtol."""
    if not value.isascii() or not value.isdigit():
        raise PluginInitError(f"{NAME}: {opt} needs a number >= 0, got '{value}'")
    return int(value)


def read_password(path: str) -> str:
    """The first line of ``path`` (without its newline; other whitespace kept).

    The file must be a regular file owned by the process user with no
    permission bits beyond owner-read (0400, or 0000 for root)."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NOCTTY)
    except OSError as exc:
        raise PluginInitError(f"{NAME}: cannot open -ldap_pw file {path}: "
                              f"{exc.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise PluginInitError(f"{NAME}: -ldap_pw file {path} is not a regular file")
        if st.st_uid != os.geteuid():
            raise PluginInitError(f"{NAME}: -ldap_pw file {path} is owned by uid "
                                  f"{st.st_uid}, not by the process user {os.geteuid()}")
        if st.st_mode & 0o377:
            raise PluginInitError(f"{NAME}: -ldap_pw file {path} has mode "
                                  f"{stat.S_IMODE(st.st_mode):04o}, must be 0400 or stricter")
        with os.fdopen(os.dup(fd), "rb") as fh:
            raw = fh.read(65536)
    finally:
        os.close(fd)
    line = raw.split(b"\n", 1)[0]
    if not line:
        raise PluginInitError(f"{NAME}: -ldap_pw file {path} holds no password on its first line")
    try:
        return line.decode("utf-8")
    except UnicodeDecodeError:
        raise PluginInitError(f"{NAME}: -ldap_pw file {path} is not UTF-8") from None


class _Failure(Exception):
    """One-line reason the directory's answer refuses this mapping (``ctx.fail``, a deny)."""


@dataclass
class _Plan:
    """What the directory needs, found before anything is written."""

    user_dn: str | None = None
    old_gid: str | None = None
    new_gid: str | None = None
    add_to: list[tuple[int, str]] = field(default_factory=list)  # (gid, group dn)
    already: list[int] = field(default_factory=list)
    missing: list[int] = field(default_factory=list)


def _ldap_error(conn: Connection) -> str:
    res = conn.result or {}
    desc = res.get("description") or "error"
    msg = res.get("message") or ""
    return one_line(f"{desc} ({msg})" if msg else desc)


class LdapEnf(Plugin):
    name = "ldap_enf"

    def __init__(self, argv: Sequence[str]) -> None:
        super().__init__(argv)
        self.maxuid = -1
        self.maxpgid = -1
        self.maxsgid = -1
        self.require_all_groups = True
        self.hostname: str | None = None
        self.port: int | None = None
        self.dn_manager: str | None = None
        self.password: str | None = None
        self.sb_groups: str | None = None
        self.sb_user: str | None = None
        self.timeout = 0
        args = ArgWalker(argv, NAME)
        for opt in args:
            if opt in _MAX_OPTS:
                attr = _MAX_OPTS[opt]
                if getattr(self, attr) != -1:  # C: a second -maxuid is an unknown parameter
                    raise PluginInitError(f"{NAME}: option {opt} given twice")
                setattr(self, attr, _number(args.value("a number"), opt))
            elif opt in ("-port", "-PORT"):
                self.port = _number(args.value("a number"), opt)
                if self.port > 65535:
                    raise PluginInitError(f"{NAME}: {opt} must be at most 65535, got {self.port}")
            elif opt in ("-hostname", "-HOSTNAME"):
                self.hostname = args.value("a host name")
            elif opt == "-require_all_groups":
                self.require_all_groups = parse_yes_no(args.value('"yes" or "no"'), NAME, opt)
            elif opt == "-dn_manager":
                self.dn_manager = args.value("a DN")
            elif opt == "-ldap_pw":
                self.password = read_password(args.value("a file name"))
            elif opt == "-sb_groups":
                self.sb_groups = args.value("a search base")
            elif opt == "-sb_user":
                self.sb_user = args.value("a search base")
            elif opt == "-timeout":
                self.timeout = _number(args.value("a number of seconds"), opt)
            else:
                args.unknown()
        if self.maxsgid > _ngroups_max():
            raise PluginInitError(f"{NAME}: -maxsgid {self.maxsgid} exceeds the system "
                                  f"maximum of {_ngroups_max()} groups")
        given: dict[str, object] = {
            "-hostname": self.hostname, "-port": self.port, "-dn_manager": self.dn_manager,
            "-ldap_pw": self.password, "-sb_groups": self.sb_groups, "-sb_user": self.sb_user,
        }
        for name, setting in given.items():
            if setting is None:
                raise PluginInitError(f"{NAME}: option {name} is required")

    # -- run ---------------------------------------------------------------

    def run(self, ctx: RunContext) -> bool:
        d = ctx.data
        for what, items, limit in (("uids", d.uids, self.maxuid),
                                   ("primary gids", d.pgids, self.maxpgid),
                                   ("secondary gids", d.sgids, self.maxsgid)):
            if limit >= 0 and len(items) > limit:
                return ctx.fail(f"{NAME}: {len(items)} {what}, at most {limit} allowed")
        if not d.uids:
            return ctx.fail(f"{NAME}: no uid in the credential data")
        try:
            username = accounts.account_by_uid(d.uids[0]).name
        except accounts.UnknownAccount:
            return ctx.fail(f"{NAME}: no user name for uid {d.uids[0]}")
        pgid = d.pgids[0] if d.pgids else None
        for gid in ([pgid] if pgid is not None else []) + list(d.sgids):
            if gid > MAX_GID:
                return ctx.fail(f"{NAME}: gid {gid} too large (at most {MAX_GID})")
        conn = self._connect()
        try:
            plan = self._plan(conn, username, pgid, d.sgids)
            if plan.missing and self.require_all_groups:
                return ctx.fail(f"{NAME}: no posixGroup under {one_line(self.sb_groups)} "
                                f"for gid(s) "
                                f"{', '.join(map(str, plan.missing))}; nothing changed")
            for gid in plan.missing:
                log.info("%s: no posixGroup for gid %d, skipped (-require_all_groups no)",
                         NAME, gid)
            self._apply(conn, username, plan)
        except _Failure as exc:
            return ctx.fail(str(exc))
        except _ldap3().LDAPException as exc:  # the connection broke or timed out half-way
            raise PluginUnavailable(f"{NAME}: LDAP server {self._where()} failed: "
                                    f"{one_line(exc) or type(exc).__name__}") from None
        finally:
            _close(conn)
        log.info("%s: uid=%d(%s) pgid=%s sgids=%s: added to %d group(s), already in %d%s",
                 NAME, d.uids[0], one_line(username), pgid, d.sgids, len(plan.add_to),
                 len(plan.already),
                 "" if plan.new_gid is None else f", gidNumber set to {plan.new_gid}")
        return True

    def _where(self) -> str:
        return one_line(f"{self.hostname}:{self.port}")

    def _connect(self) -> Connection:
        """A bound connection, or PluginUnavailable naming host and cause."""
        limit = self.timeout or None
        conn: Connection | None = None
        lib = _ldap3().lib
        try:
            server = lib.Server(self.hostname or "", port=self.port, get_info=lib.NONE,
                                connect_timeout=limit)
            conn = lib.Connection(server, user=self.dn_manager, password=self.password,
                                  authentication=lib.SIMPLE, receive_timeout=limit,
                                  raise_exceptions=False, read_only=False)
            if conn.bind():
                return conn
            reason = _ldap_error(conn)
        except _ldap3().LDAPException as exc:
            reason = one_line(exc) or type(exc).__name__
        if conn is not None:
            _close(conn)
        raise PluginUnavailable(f"{NAME}: cannot bind to LDAP server {self._where()} as "
                                f"{one_line(self.dn_manager)}: {reason}")

    def _search(self, conn: Connection, base: str, flt: str, attrs: list[str]) -> list[dict]:
        ok = conn.search(base, flt, search_scope=_ldap3().lib.SUBTREE, attributes=attrs,
                         time_limit=self.timeout)
        if not ok and (conn.result or {}).get("result") not in (0, 32):  # 32: noSuchObject
            raise PluginUnavailable(f"{NAME}: LDAP server {self._where()}: search for "
                                    f"{one_line(flt)} under {one_line(base)} failed: "
                                    f"{_ldap_error(conn)}; nothing changed")
        return [e for e in conn.response or [] if e.get("type") == "searchResEntry"]

    def _plan(self, conn: Connection, username: str, pgid: int | None,
              sgids: Sequence[int]) -> _Plan:
        plan = _Plan()
        name = _ldap3().escape_filter_chars(username)
        if pgid is not None:
            base = self.sb_user or ""
            users = self._search(conn, base, f"(&(objectClass=posixAccount)(uid={name}))",
                                 ["gidNumber"])
            if len(users) != 1:
                raise _Failure(f"{NAME}: {len(users)} posixAccount entries with uid="
                               f"{one_line(username)} under {one_line(base)}, need exactly 1; "
                               "nothing changed")
            plan.user_dn = users[0]["dn"]
            old = users[0]["attributes"].get("gidNumber")
            old = old[0] if isinstance(old, list) and old else old
            plan.old_gid = None if old in (None, []) else str(old)
            if plan.old_gid != str(pgid):
                plan.new_gid = str(pgid)
        for gid in sgids:
            groups = self._search(conn, self.sb_groups or "",
                                  f"(&(objectClass=posixGroup)(gidNumber={gid}))",
                                  ["memberUid"])
            if not groups:
                plan.missing.append(gid)
                continue
            if len(groups) > 1:
                raise _Failure(f"{NAME}: {len(groups)} posixGroup entries with gidNumber "
                               f"{gid} under {one_line(self.sb_groups)}; nothing changed")
            members = groups[0]["attributes"].get("memberUid") or []
            if username in members:
                plan.already.append(gid)
            else:
                plan.add_to.append((gid, groups[0]["dn"]))
        return plan

    def _apply(self, conn: Connection, username: str, plan: _Plan) -> None:
        """Write the plan; on a failed write undo what was written and raise
        PluginUnavailable saying what was undone, left changed and not attempted."""
        steps: list[tuple[str, str, dict, dict]] = []  # (what, dn, change, undo)
        lib = _ldap3().lib
        add, delete, replace = lib.MODIFY_ADD, lib.MODIFY_DELETE, lib.MODIFY_REPLACE
        if plan.user_dn is not None and plan.new_gid is not None:
            back = ({"gidNumber": [(replace, [plan.old_gid])]} if plan.old_gid
                    else {"gidNumber": [(delete, [])]})
            steps.append((f"gidNumber of {plan.user_dn}", plan.user_dn,
                          {"gidNumber": [(replace, [plan.new_gid])]}, back))
        for _gid, dn in plan.add_to:
            steps.append((f"memberUid of {dn}", dn,
                          {"memberUid": [(add, [username])]},
                          {"memberUid": [(delete, [username])]}))
        written: list[tuple[str, str, dict]] = []
        for k, (what, dn, change, back) in enumerate(steps):
            ok, code, cause = _modify(conn, dn, change)
            if ok:
                written.append((what, dn, back))
                continue
            if code == RESULT_TYPE_OR_VALUE_EXISTS:
                continue  # someone else added the same member meanwhile
            stuck = [w for w, udn, uchange in reversed(written) if not _modify(conn, udn,
                                                                                uchange)[0]]
            undone = [w for w, _, _ in written if w not in stuck]
            parts = []
            if undone:
                parts.append("undone: " + "; ".join(undone))
            if stuck:
                parts.append("COULD NOT UNDO, left changed: " + "; ".join(stuck))
            if not written:
                parts.append("nothing else was changed")
            if k + 1 < len(steps):
                parts.append("not attempted: " + "; ".join(s[0] for s in steps[k + 1:]))
            raise PluginUnavailable(f"{NAME}: LDAP server {self._where()}: changing "
                                    f"{one_line(what)} failed: {cause}; "
                                    f"{one_line('; '.join(parts))}")


def _modify(conn: Connection, dn: str, change: dict) -> tuple[bool, int | None, str]:
    """(ok, LDAP result code, one-line cause); a dropped connection is a failure too."""
    try:
        if conn.modify(dn, change):
            return True, 0, ""
        return False, (conn.result or {}).get("result"), _ldap_error(conn)
    except _ldap3().LDAPException as exc:
        return False, None, one_line(exc) or type(exc).__name__


def _close(conn: Connection) -> None:
    """Unbind, and close the socket even when the connection broke half-way."""
    try:
        conn.unbind()
    except _ldap3().LDAPException:
        pass
    sock = getattr(conn, "socket", None)
    if sock is not None:
        sock.close()
