"""Private claim names: how a free pool entry is won before any lease name points to it.

A claim is a hard link to a pool entry under a name only its maker knows::

    .lease-claim.<ns since epoch, hex>.<pid>.<random hex>.<host>

C LCMAPS and our own scans skip every name that starts with ``.``, so a claim is never
mistaken for a pool entry or a lease. The rules and the argument that they never give one
account to two credentials are in ``docs/leases.md``.

A claim lives for microseconds. One left by a killed process is *stale* after
``CLAIM_TIMEOUT`` seconds (or at once when its maker, on this host, is gone) and anyone
may remove it: removing even a live claim is safe, because its maker's next step (publishing
the claim as a lease) then fails and it starts over.
"""

from __future__ import annotations

import errno
import os
import secrets
import socket
import time
from typing import Any

__all__ = [
    "CLAIM_PREFIX",
    "CLAIM_TIMEOUT",
    "claim_is_stale",
    "new_claim_name",
    "process_alive",
    "rename_noreplace",
]

CLAIM_PREFIX = ".lease-claim."
#: seconds after which anyone may remove a claim (a live one needs microseconds)
CLAIM_TIMEOUT = 60.0

_HOST = socket.gethostname().replace("/", "_")[:64] or "localhost"


def new_claim_name(now_ns: int | None = None) -> str:
    """A claim name no other process, thread or host can make."""
    stamp = time.time_ns() if now_ns is None else now_ns
    return f"{CLAIM_PREFIX}{stamp:x}.{os.getpid()}.{secrets.token_hex(6)}.{_HOST}"


def claim_is_stale(name: str, *, timeout: float = CLAIM_TIMEOUT, now: float | None = None) -> bool:
    """Whether a claim may be removed: older than ``timeout``, maker gone, or unparsable."""
    parts = name[len(CLAIM_PREFIX):].split(".", 3)
    try:
        made = int(parts[0], 16) / 1e9
        pid = int(parts[1])
        host = parts[3]
    except (IndexError, ValueError):
        return True
    if (time.time() if now is None else now) - made > timeout:
        return True
    return host == _HOST and not process_alive(pid)


def process_alive(pid: int) -> bool:
    """Whether `pid` names a live process (one we may not signal counts as alive)."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


_renameat2: Any = None
_NO_RENAMEAT2 = object()


def rename_noreplace(src: str, dst: str) -> bool:
    """``renameat2(src, dst, RENAME_NOREPLACE)``: True when done, False when the kernel or
    file system cannot do it (the caller falls back to link + unlink).

    Raises FileExistsError when ``dst`` exists and FileNotFoundError when ``src`` is gone.
    """
    global _renameat2
    if _renameat2 is None:
        _renameat2 = _load_renameat2()
    if _renameat2 is _NO_RENAMEAT2:
        return False
    import ctypes

    at_fdcwd, rename_noreplace_flag = -100, 1
    rc = _renameat2(at_fdcwd, os.fsencode(src), at_fdcwd, os.fsencode(dst), rename_noreplace_flag)
    if rc == 0:
        return True
    err = ctypes.get_errno()
    if err in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP):
        return False
    raise OSError(err, os.strerror(err), dst)


def _load_renameat2() -> Any:
    """glibc's renameat2, loaded on first use (ctypes is not on the one-shot import path)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        fn = libc.renameat2
    except (OSError, AttributeError):
        return _NO_RENAMEAT2
    fn.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    fn.restype = ctypes.c_int
    return fn
