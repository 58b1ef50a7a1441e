"""Edit site files so that nothing is lost or half-written, then make the edit live.

* Two admins at once: each edited file has a lock file beside it
  (``.<name>.lock``); an exclusive ``fcntl`` lock on it is held across the
  whole read, modify, write, reload and (if the server refuses) restore, so a
  restore can never wipe another admin's edit. Locks are taken in path order.
* A crash at any moment: the new bytes go to a temporary file in the same
  directory, are fsynced, renamed over the file, and the directory is fsynced;
  the file's mode and owner are kept.
* A server that refuses the result: the exact previous bytes are put back the
  same way and the server is told to reload again, so files and running policy
  agree.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import os
import stat
import tempfile
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass

from site_admin.common import AdminError, warn
from site_admin.reload import Reloaded, ServerRejected, reload_server, running_master

__all__ = ["Change", "LockTimeout", "apply_changes", "atomic_write", "locked", "read_bytes"]

LOCK_TIMEOUT = 300.0
MAX_FILE_BYTES = 16 * 1024 * 1024


class LockTimeout(AdminError):
    """Another scas-admin held a file's lock for too long."""


@dataclass
class Change:
    """One file's planned edit: what was there (and its inode's metadata) and what goes in."""

    path: str
    old: bytes
    new: bytes
    meta: os.stat_result


def lock_path(path: str) -> str:
    directory, name = os.path.split(os.path.abspath(path))
    return os.path.join(directory, f".{name}.lock")


@contextlib.contextmanager
def locked(paths: Sequence[str], timeout: float = LOCK_TIMEOUT) -> Iterator[None]:
    """Hold the exclusive lock of every file in ``paths`` (taken in sorted order)."""
    with contextlib.ExitStack() as stack:
        for path in sorted({os.path.abspath(p) for p in paths}):
            stack.enter_context(_lock_one(path, timeout))
        yield


@contextlib.contextmanager
def _lock_one(path: str, timeout: float) -> Iterator[None]:
    name = lock_path(path)
    try:
        fd = os.open(name, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        raise AdminError(f"{name}: cannot open the lock file: {exc.strerror}") from None
    if not stat.S_ISREG(os.fstat(fd).st_mode):  # root never locks (or creates) through a link
        os.close(fd)
        raise AdminError(f"{name}: the lock file is not a regular file")
    try:
        deadline = time.monotonic() + timeout
        while True:
            try:
                fcntl.lockf(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except OSError as exc:
                if exc.errno not in (errno.EAGAIN, errno.EACCES):
                    raise AdminError(f"{name}: cannot lock: {exc.strerror}") from None
            if time.monotonic() >= deadline:
                raise LockTimeout(f"{path}: still locked by another scas-admin after "
                                  f"{timeout:.0f} s ({name})")
            time.sleep(0.02)
        yield
    finally:
        os.close(fd)  # closing drops the lock


def read_bytes(path: str) -> tuple[bytes, os.stat_result]:
    """The file's bytes and metadata; a missing or odd file is an AdminError."""
    try:
        with open(path, "rb") as fh:
            meta = os.fstat(fh.fileno())
            if not stat.S_ISREG(meta.st_mode):
                raise AdminError(f"{path}: not a regular file")
            data = fh.read(MAX_FILE_BYTES + 1)
    except OSError as exc:
        raise AdminError(f"{path}: cannot read: {exc.strerror}") from None
    if len(data) > MAX_FILE_BYTES:
        raise AdminError(f"{path}: larger than {MAX_FILE_BYTES} bytes")
    return data, meta


def _fsync_dir(directory: str) -> None:
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write(path: str, data: bytes, meta: os.stat_result) -> None:
    """Replace ``path`` by ``data`` in one rename, keeping ``meta``'s mode and owner."""
    directory, name = os.path.split(os.path.abspath(path))
    try:
        fd, tmp = tempfile.mkstemp(dir=directory, prefix=f".{name}.", suffix=".tmp")
    except OSError as exc:
        raise AdminError(f"{path}: cannot create a temporary file: {exc.strerror}") from None
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            _keep_owner(fh.fileno(), meta, path)
            os.fchmod(fh.fileno(), stat.S_IMODE(meta.st_mode))
            os.fsync(fh.fileno())
        os.replace(tmp, path)
        _fsync_dir(directory)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise AdminError(f"{path}: cannot write: {exc.strerror}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def _keep_owner(fd: int, meta: os.stat_result, path: str) -> None:
    try:
        os.fchown(fd, meta.st_uid, meta.st_gid)
    except PermissionError:
        st = os.fstat(fd)
        if (st.st_uid, st.st_gid) != (meta.st_uid, meta.st_gid):
            raise AdminError(f"{path}: cannot keep its owner {meta.st_uid}:{meta.st_gid} "
                             "(run scas-admin as the file's owner or root)") from None


def _restore(changes: Sequence[Change]) -> None:
    """Put back the exact previous bytes of every change (best effort for each file)."""
    failed = []
    for ch in changes:
        try:
            atomic_write(ch.path, ch.old, ch.meta)
        except AdminError as exc:
            failed.append(exc.reason)
    if failed:
        raise AdminError("could not restore: " + "; ".join(failed))


def write_all(changes: Sequence[Change]) -> None:
    """Write every change, or (on a failure) none: those already written are put back."""
    done: list[Change] = []
    try:
        for ch in changes:
            atomic_write(ch.path, ch.new, ch.meta)
            done.append(ch)
    except AdminError:
        _restore(done)
        raise


def apply_changes(changes: Sequence[Change], pidfile: str | None, *, reload: bool
                  ) -> Reloaded | None:
    """Write ``changes`` (the caller holds their locks) and reload the server.

    If the server rejects the new policy, the previous bytes are restored, the
    server reloads again, and :class:`ServerRejected` is raised with its reason.
    Returns None when ``reload`` is False.
    """
    if reload:
        running_master(pidfile)  # a pidfile naming a stranger refuses before anything is written
    write_all(changes)
    if not reload:
        return None
    try:
        return reload_server(pidfile)
    except ServerRejected:
        _restore(changes)
        try:
            reload_server(pidfile)
        except ServerRejected:
            pass  # still refused for the same outside reason: it serves the old policy
        except AdminError as exc:
            warn(f"files restored; the reload after the restore did not confirm: {exc.reason}")
        raise
