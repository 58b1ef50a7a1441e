"""Local account and group lookups (pwd/grp), as the C plugins do them.

Mapping plugins turn a user or group NAME into ids; every failure is the one
exception class ``UnknownAccount`` with a one-line message.  Secondary gids
come from ``getgrouplist(user, pw_gid)``, which includes the primary gid;
they are returned sorted and unique (that is what LCMAPS hands on).
"""

from __future__ import annotations

import grp
import os
import pwd
from dataclasses import dataclass

from safetext import one_line

__all__ = [
    "Account",
    "UnknownAccount",
    "account",
    "account_by_uid",
    "gid_of_group",
    "group_gids",
    "group_name",
]


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


def _from_pw(pw: pwd.struct_passwd) -> Account:
    return Account(pw.pw_name, pw.pw_uid, pw.pw_gid, pw.pw_dir, pw.pw_shell)


def account(name: str) -> Account:
    """``getpwnam(name)``; raises UnknownAccount."""
    try:
        return _from_pw(pwd.getpwnam(name))
    except (KeyError, ValueError):
        raise UnknownAccount(f"unknown user {one_line(name)!r}") from None


def account_by_uid(uid: int) -> Account:
    """``getpwuid(uid)``; raises UnknownAccount."""
    try:
        return _from_pw(pwd.getpwuid(uid))
    except (KeyError, OverflowError, ValueError):
        raise UnknownAccount(f"unknown uid {uid}") from None


def gid_of_group(name: str) -> int:
    """``getgrnam(name).gr_gid``; raises UnknownAccount."""
    try:
        return grp.getgrnam(name).gr_gid
    except (KeyError, ValueError):
        raise UnknownAccount(f"unknown group {one_line(name)!r}") from None


def group_name(gid: int) -> str:
    """``getgrgid(gid).gr_name``; raises UnknownAccount."""
    try:
        return grp.getgrgid(gid).gr_name
    except (KeyError, OverflowError, ValueError):
        raise UnknownAccount(f"unknown gid {gid}") from None


def group_gids(name: str, primary_gid: int | None = None) -> tuple[int, ...]:
    """``getgrouplist(name, primary_gid)`` sorted and unique (includes the primary gid).

    ``primary_gid`` defaults to the account's ``pw_gid`` (as
    ``lcmaps_get_gidlist`` does); raises UnknownAccount for an unknown user.
    """
    if primary_gid is None:
        primary_gid = account(name).gid
    try:
        gids = os.getgrouplist(name, primary_gid)
    except (OSError, ValueError) as exc:
        raise UnknownAccount(f"cannot list groups of {one_line(name)!r}: {exc}") from None
    return tuple(sorted(set(gids)))
