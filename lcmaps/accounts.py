"""Local account and group lookups (passwd/group), as the C plugins make them, cached.

Mapping plugins turn a user or group NAME into ids; every failure is the one
exception class ``UnknownAccount`` with a one-line message.  Secondary gids
come from ``getgrouplist(user, pw_gid)``, which includes the primary gid;
they are returned sorted and unique (that is what LCMAPS hands on).

Every answer is cached, so a warm decision asks NSS nothing (an uncached lookup in a
files-backed passwd scans the file: with 100,000 lines glibc takes 37 ms for a decision's
three lookups, the cache 18 µs), and dropped as soon as it may be stale:

* the ``stat`` of /etc/passwd (or /etc/group) is checked on every lookup (one system call),
  so an edit (a new account, a new uid) is seen at once; while a file changed less than
  ``RACY_SECONDS`` ago nothing is cached, so two edits within one timestamp tick cannot hide
  each other; /etc/nsswitch.conf is re-checked every ``NSSWITCH_SECONDS``;
* when nsswitch.conf gives passwd or group any source but ``files`` (``systemd``, ``sss``,
  ``ldap``...), answers also expire after ``TTL_SECONDS``, since a directory changes without
  touching the files. nscd or sssd's own cache then sits behind this one.

When nsswitch.conf says ``files`` alone, the files are read directly (first match in file
order, as glibc's files module; one C-speed search per uncached key). :class:`NameService`
takes the three paths, which is how tests point the lookups at a passwd of their own
(:func:`use`).
"""

from __future__ import annotations

import grp
import os
import pwd
import re
import threading
import time
from collections.abc import Callable, Hashable, Iterator
from dataclasses import dataclass
from typing import Any

from safetext import one_line

__all__ = [
    "Account",
    "NameService",
    "UnknownAccount",
    "account",
    "account_by_uid",
    "files_only",
    "gid_of_group",
    "group_gids",
    "group_name",
    "use",
]

PASSWD, GROUP, NSSWITCH = "/etc/passwd", "/etc/group", "/etc/nsswitch.conf"
#: how long an answer from a source other than the files is kept
TTL_SECONDS = 5.0
#: a file changed more recently than this is not trusted to show its next change in ``stat``
RACY_SECONDS = 1.0
#: nsswitch.conf is re-checked at most this often (passwd and group on every lookup)
NSSWITCH_SECONDS = 1.0
#: answers kept per database (names come from site files, but bound it anyway)
MAX_ENTRIES = 100_000


class UnknownAccount(LookupError):
    """A user name, uid, group name or gid has no entry in the passwd/group database."""


@dataclass(frozen=True)
class Account:
    """The fields of a passwd entry the mapping needs."""

    name: str
    uid: int
    gid: int
    home: str
    shell: str


class _Group:
    """A group entry (a plain class: a dataclass costs a millisecond of start-up each)."""

    __slots__ = ("gid", "members", "name")

    def __init__(self, name: str, gid: int, members: tuple[str, ...]) -> None:
        self.name, self.gid, self.members = name, gid, members


_ACTION = re.compile(r"\[[^\]]*\]")


def files_only(nsswitch: str = NSSWITCH) -> bool:
    """Whether ``nsswitch`` gives passwd and group (and initgroups, if named) ``files`` alone.

    An unreadable file or a database it does not name counts as "not files": NSS is asked."""
    try:
        with open(nsswitch, encoding="utf-8", errors="replace") as fh:
            text = fh.read()
    except OSError:
        return False
    sources: dict[str, list[str]] = {}
    for line in text.splitlines():
        db, colon, rest = line.split("#", 1)[0].partition(":")
        if colon:
            sources[db.strip()] = _ACTION.sub(" ", rest).split()
    files = ["files"]
    return (sources.get("passwd") == files and sources.get("group") == files
            and sources.get("initgroups", files) == files)


def _stat(path: str) -> tuple[int, ...] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns, st.st_ctime_ns)


def _pw_line(line: bytes) -> Account | None:
    parts = line.lstrip(b" \t").split(b":", 6)
    if len(parts) != 7 or not parts[0] or not parts[2].isdigit() or not parts[3].isdigit():
        return None
    name, home, shell = (os.fsdecode(p) for p in (parts[0], parts[5], parts[6]))
    return Account(name, int(parts[2]), int(parts[3]), home, shell)


def _gr_line(line: bytes) -> _Group | None:
    parts = line.lstrip(b" \t").split(b":", 3)
    if len(parts) != 4 or not parts[0] or not parts[2].isdigit():
        return None
    members = tuple(os.fsdecode(m.strip()) for m in parts[3].split(b",") if m.strip())
    return _Group(os.fsdecode(parts[0]), int(parts[2]), members)


def _lines_with(data: bytes, needle: bytes) -> Iterator[bytes]:
    """Each line of ``data`` holding ``needle``, in file order (a memchr-speed search, not a
    parse of every line: what keeps an uncached lookup in a 100,000-line file cheap)."""
    i = data.find(needle)
    while i != -1:
        start = data.rfind(b"\n", 0, i) + 1
        end = data.find(b"\n", i)
        end = len(data) if end == -1 else end
        yield data[start:end]
        i = data.find(needle, end)


def _key_bytes(name: str) -> bytes | None:
    """``name`` as it is written in the file, or None if no entry can have it."""
    raw = os.fsencode(name)
    return raw if raw and not any(c in raw for c in b":\n\0") else None


class _Files:
    """Lookups in the bytes of one passwd or group file, glibc's files-module way: the first
    well-formed line that matches wins; comments and malformed lines never match. (A uid or
    gid written with leading zeros is not found.)"""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def pw_name(self, name: str) -> Account | None:
        raw = _key_bytes(name)
        found = (_pw_line(ln) for ln in _lines_with(self.data, raw + b":")) if raw else ()
        return next((a for a in found if a is not None and a.name == name), None)

    def pw_uid(self, uid: int) -> Account | None:
        found = (_pw_line(ln) for ln in _lines_with(self.data, b":%d:" % uid))
        return next((a for a in found if a is not None and a.uid == uid), None)

    def gr_name(self, name: str) -> _Group | None:
        raw = _key_bytes(name)
        found = (_gr_line(ln) for ln in _lines_with(self.data, raw + b":")) if raw else ()
        return next((g for g in found if g is not None and g.name == name), None)

    def gr_gid(self, gid: int) -> _Group | None:
        found = (_gr_line(ln) for ln in _lines_with(self.data, b":%d:" % gid))
        return next((g for g in found if g is not None and g.gid == gid), None)

    def group_list(self, name: str, gid: int) -> list[int]:
        gids, raw = [gid], _key_bytes(name)
        for line in _lines_with(self.data, raw) if raw else ():
            g = _gr_line(line)
            if g is not None and name in g.members:
                gids.append(g.gid)
        return gids


class _Generation:
    """The answers valid for one ``stat`` of a file (and of nsswitch.conf)."""

    __slots__ = ("born", "cacheable", "direct", "entries", "files", "path", "sig")

    def __init__(self, sig: tuple[object, ...], born: float, direct: bool, cacheable: bool,
                 path: str) -> None:
        self.sig, self.born, self.direct, self.cacheable, self.path = (
            sig, born, direct, cacheable, path)
        self.entries: dict[Hashable, object] = {}
        self.files: _Files | None = None

    def read(self) -> _Files:
        if self.files is None:
            try:
                with open(self.path, "rb") as fh:
                    self.files = _Files(fh.read())
            except OSError:
                self.files = _Files(b"")
        return self.files


class NameService:
    """Cached passwd/group lookups over ``passwd``, ``group`` and ``nsswitch`` (module doc)."""

    def __init__(self, passwd: str = PASSWD, group: str = GROUP, nsswitch: str = NSSWITCH,
                 *, ttl: float = TTL_SECONDS, racy: float = RACY_SECONDS) -> None:
        self.paths = {"passwd": passwd, "group": group}
        self.nsswitch = nsswitch
        self.ttl, self.racy = ttl, racy
        self._lock = threading.Lock()
        self._gens: dict[str, _Generation] = {}
        self._ns_sig: tuple[int, ...] | None = None
        self._ns_checked = -NSSWITCH_SECONDS

    def _generation(self, db: str) -> _Generation:
        path = self.paths[db]
        file_sig, now = _stat(path), time.monotonic()
        if now - self._ns_checked >= NSSWITCH_SECONDS:  # one stat per lookup, not two
            self._ns_sig, self._ns_checked = _stat(self.nsswitch), now
        ns_sig = self._ns_sig
        with self._lock:
            gen = self._gens.get(db)
            if (gen is None or not gen.cacheable or gen.sig != (file_sig, ns_sig)
                    or (not gen.direct and now - gen.born > self.ttl)):
                newest = max((s[4] for s in (file_sig, ns_sig) if s is not None), default=0)
                racy = time.time() - newest / 1e9 < self.racy
                gen = _Generation((file_sig, ns_sig), now, files_only(self.nsswitch),
                                  not racy, path)
                self._gens[db] = gen
            return gen

    def _lookup(self, db: str, key: Hashable, direct: Callable[[_Files], object],
                nss: Callable[[], object]) -> object:
        """The cached answer for ``key`` (None: no such entry)."""
        gen = self._generation(db)
        hit = gen.entries.get(key, gen)
        if hit is not gen:
            return hit
        answer = direct(gen.read()) if gen.direct else nss()
        if gen.cacheable and len(gen.entries) < MAX_ENTRIES:
            gen.entries[key] = answer
        return answer

    def account(self, name: str) -> Account:
        """``getpwnam(name)``; raises UnknownAccount."""
        found = self._lookup("passwd", ("name", name), lambda f: f.pw_name(name),
                             lambda: _nss(pwd.getpwnam, name, _from_pw))
        if not isinstance(found, Account):
            raise UnknownAccount(f"unknown user {one_line(name)!r}")
        return found

    def account_by_uid(self, uid: int) -> Account:
        """``getpwuid(uid)``; raises UnknownAccount."""
        found = self._lookup("passwd", ("uid", uid), lambda f: f.pw_uid(uid),
                             lambda: _nss(pwd.getpwuid, uid, _from_pw))
        if not isinstance(found, Account):
            raise UnknownAccount(f"unknown uid {uid}")
        return found

    def gid_of_group(self, name: str) -> int:
        """``getgrnam(name).gr_gid``; raises UnknownAccount."""
        found = self._lookup("group", ("name", name), lambda f: f.gr_name(name),
                             lambda: _nss(grp.getgrnam, name, _from_gr))
        if not isinstance(found, _Group):
            raise UnknownAccount(f"unknown group {one_line(name)!r}")
        return found.gid

    def group_name(self, gid: int) -> str:
        """``getgrgid(gid).gr_name``; raises UnknownAccount."""
        found = self._lookup("group", ("gid", gid), lambda f: f.gr_gid(gid),
                             lambda: _nss(grp.getgrgid, gid, _from_gr))
        if not isinstance(found, _Group):
            raise UnknownAccount(f"unknown gid {gid}")
        return found.name

    def group_gids(self, name: str, primary_gid: int | None = None) -> tuple[int, ...]:
        """``getgrouplist(name, primary_gid)`` sorted and unique (includes the primary gid).

        ``primary_gid`` defaults to the account's ``pw_gid`` (as ``lcmaps_get_gidlist``
        does); raises UnknownAccount for an unknown user."""
        gid = self.account(name).gid if primary_gid is None else primary_gid
        found = self._lookup("group", ("list", name, gid), lambda f: f.group_list(name, gid),
                             lambda: _grouplist(name, gid))
        if isinstance(found, str):
            raise UnknownAccount(f"cannot list groups of {one_line(name)!r}: {found}")
        assert isinstance(found, list)
        return tuple(sorted(set(found)))


def _from_pw(pw: pwd.struct_passwd) -> Account:
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)


def _from_gr(gr: grp.struct_group) -> _Group:
    return _Group(gr.gr_name, gr.gr_gid, tuple(gr.gr_mem))


def _nss(call: Callable[[Any], Any], key: object, wrap: Callable[[Any], object]
         ) -> object | None:
    try:
        return wrap(call(key))
    except (KeyError, OverflowError, ValueError):
        return None


def _grouplist(name: str, gid: int) -> list[int] | str:
    """``os.getgrouplist``, or why it failed (kept as the cached answer)."""
    try:
        return os.getgrouplist(name, gid)
    except (OSError, ValueError, OverflowError) as exc:
        return str(exc)


_service = NameService()


def use(service: NameService) -> NameService:
    """Make ``service`` answer this module's functions; returns the one it replaces."""
    global _service
    previous, _service = _service, service
    return previous


def account(name: str) -> Account:
    """``getpwnam(name)``; raises UnknownAccount."""
    return _service.account(name)


def account_by_uid(uid: int) -> Account:
    """``getpwuid(uid)``; raises UnknownAccount."""
    return _service.account_by_uid(uid)


def gid_of_group(name: str) -> int:
    """``getgrnam(name).gr_gid``; raises UnknownAccount."""
    return _service.gid_of_group(name)


def group_name(gid: int) -> str:
    """``getgrgid(gid).gr_name``; raises UnknownAccount."""
    return _service.group_name(gid)


def group_gids(name: str, primary_gid: int | None = None) -> tuple[int, ...]:
    """``getgrouplist(name, primary_gid)``, sorted and unique: :meth:`NameService.group_gids`."""
    return _service.group_gids(name, primary_gid)
