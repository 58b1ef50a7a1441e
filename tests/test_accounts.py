"""pwd/grp lookups with real accounts made by useradd/groupadd (root only)."""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterator

import pytest

from lcmaps import accounts
from lcmaps.accounts import UnknownAccount

pytestmark = pytest.mark.root

USER, G1, G2 = "tstacctu1", "tstacctg1", "tstacctg2"


def _run(*cmd: str) -> None:
    subprocess.run(cmd, check=True, capture_output=True)


@pytest.fixture(scope="module")
def real_account() -> Iterator[str]:
    if os.geteuid() != 0 or shutil.which("useradd") is None:
        pytest.skip("needs root and useradd")
    for name in (USER,):
        subprocess.run(["userdel", name], capture_output=True)
    for name in (USER, G1, G2):
        subprocess.run(["groupdel", name], capture_output=True)
    _run("groupadd", "-g", "47811", G1)
    _run("groupadd", "-g", "47802", G2)
    _run("useradd", "-M", "-N", "-u", "47801", "-g", G1, "-G", G2, "-s", "/bin/false", USER)
    try:
        yield USER
    finally:
        subprocess.run(["userdel", USER], capture_output=True)
        subprocess.run(["groupdel", G1], capture_output=True)
        subprocess.run(["groupdel", G2], capture_output=True)


def test_account_by_name_and_uid(real_account: str) -> None:
    acc = accounts.account(real_account)
    assert (acc.uid, acc.gid, acc.shell) == (47801, 47811, "/bin/false")
    assert accounts.account_by_uid(47801).name == real_account


def test_group_name_and_gid(real_account: str) -> None:
    assert accounts.gid_of_group(G2) == 47802
    assert accounts.group_name(47811) == G1


def test_group_gids_include_primary_sorted_unique(real_account: str) -> None:
    # getgrouplist semantics: the primary gid is included, result sorted ascending.
    assert accounts.group_gids(real_account) == (47802, 47811)
    assert accounts.group_gids(real_account, 47802) == (47802,)


def test_unknown_names_raise_one_exception_class() -> None:
    with pytest.raises(UnknownAccount, match="unknown user 'tstnosuchuser'"):
        accounts.account("tstnosuchuser")
    with pytest.raises(UnknownAccount, match="unknown group 'tstnosuchgroup'"):
        accounts.gid_of_group("tstnosuchgroup")
    with pytest.raises(UnknownAccount, match="unknown uid 4294967299"):
        accounts.account_by_uid(4294967299)
    with pytest.raises(UnknownAccount, match="unknown gid 47999"):
        accounts.group_name(47999)
    with pytest.raises(UnknownAccount):
        accounts.group_gids("tstnosuchuser")
    with pytest.raises(UnknownAccount, match=r"unknown user 'a\?b'"):
        accounts.account("a\nb")
