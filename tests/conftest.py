"""Fixtures shared by the whole suite: a real test PKI, built once per session.

``pki`` is a :class:`testkit.pki.TestPKI` in a session temp dir with a CA
(+CRL), a VOMS server trusted for dteam/atlas/cms, and ``users``: alice,
bob, and jurgen (a non-ASCII CN). Tests that need their own CA make one.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from testkit.pki import TestPKI, User

ALICE_DN = "/DC=org/DC=example/O=Users/CN=Alice Smith"
BOB_DN = "/DC=org/DC=example/O=Users/CN=Bob Jones"
JURGEN_DN = "/DC=org/DC=example/O=Users/CN=Jürgen Müller"
# What C LCMAPS (X509_NAME_oneline) makes of JURGEN_DN: the mapfile key.
JURGEN_ONELINE = "/DC=org/DC=example/O=Users/CN=J\\xC3\\xBCrgen M\\xC3\\xBCller"


@pytest.fixture(autouse=True)
def _stat_every_time() -> Iterator[None]:
    """A Pipeline built in-process sets the process-wide stat re-check interval
    (``trust.recheck_seconds``); every test starts, and leaves, with none."""
    from credentials.chain_cache import set_recheck_seconds

    set_recheck_seconds(0)
    yield
    set_recheck_seconds(0)


@pytest.fixture(scope="session")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPKI]:
    yield TestPKI(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="session")
def users(pki: TestPKI) -> dict[str, User]:
    return {
        "alice": pki.user("alice", ALICE_DN),
        "bob": pki.user("bob", BOB_DN),
        "jurgen": pki.user("jurgen", JURGEN_DN),
    }
