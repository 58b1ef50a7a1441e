"""Throw-away Unix accounts for tests that need real pool accounts (root only)."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator, Sequence
from contextlib import contextmanager


@contextmanager
def unix_accounts(names: Sequence[str]) -> Iterator[None]:
    """Create the accounts that do not exist yet (no home, no login); remove those after."""
    made = []
    try:
        for name in names:
            if subprocess.run(["id", name], capture_output=True).returncode != 0:
                subprocess.run(["useradd", "-M", "-s", "/usr/sbin/nologin", name], check=True)
                made.append(name)
        yield
    finally:
        for name in made:
            subprocess.run(["userdel", name], capture_output=True)
