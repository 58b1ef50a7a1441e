"""Input and output sandboxes: what may be shipped, checked before anything is staged.

In:  the JDL's sandbox lists, the directory they are relative to, the size limit.
Out: tar streams (the upload, the staging stream the CE feeds to ``glexec ... tar -x``, the
     output sandbox) and :class:`SandboxError` with one line naming the file.

Rules, the same at the client and again at the CE (which trusts no upload):

- a sandbox name is a plain relative path: no absolute path, no ``..`` component;
- every path component is opened with ``O_NOFOLLOW`` from a directory descriptor: a
  symlink anywhere, or anything but a regular file, is refused (never followed);
- a missing file is refused; the total size must stay within the limit;
- the CE accepts an upload only if it holds exactly the declared files, as regular files.

Files are read through the descriptors that were checked, so a name swapped for a symlink
after the check is not followed either.
"""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tarfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import IO

from safetext import one_line

__all__ = [
    "SandboxError",
    "SandboxFile",
    "check_upload",
    "collect_input",
    "collect_output",
    "extract_output",
    "plain_relative",
    "write_tar",
]  # fmt: skip

DEFAULT_LIMIT = 10 * 1024 * 1024
_CHUNK = 1 << 16


class SandboxError(Exception):
    """A sandbox file cannot be shipped (escapes, missing, not a regular file, too big)."""


@dataclass(frozen=True)
class SandboxFile:
    """One file to put in a tar stream: its name inside the job directory, size, content."""

    name: str
    size: int
    mode: int
    fd: int | None = None  # read from this descriptor (closed by the owner), or
    data: bytes | None = None  # these bytes


def plain_relative(name: str) -> bool:
    """No absolute path, no ``.``/``..``/empty component, printable."""
    if not name or name.startswith("/") or not name.isprintable() or "\\" in name:
        return False
    return all(part not in ("", ".", "..") for part in name.split("/"))


def _open_beneath(dir_fd: int, name: str, what: str) -> int:
    """Open ``name`` under ``dir_fd`` component by component, never following a symlink."""
    parts = name.split("/")
    current = os.dup(dir_fd)
    try:
        for i, part in enumerate(parts):
            last = i == len(parts) - 1
            flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | (0 if last else os.O_DIRECTORY)
            try:
                nxt = os.open(part, flags | os.O_NONBLOCK, dir_fd=current)
            except OSError as exc:
                raise SandboxError(_why(what, name, exc)) from None
            os.close(current)
            current = nxt
        st = os.fstat(current)
        if not stat.S_ISREG(st.st_mode):
            raise SandboxError(f"{what} {name!r}: not a regular file")
        fd, current = current, -1
        return fd
    finally:
        if current >= 0:
            os.close(current)


def _why(what: str, name: str, exc: OSError) -> str:
    import errno

    if exc.errno == errno.ELOOP:
        return f"{what} {name!r}: a symbolic link (sandbox files are never followed)"
    if exc.errno == errno.ENOTDIR:
        return f"{what} {name!r}: a component is not a directory (or is a symbolic link)"
    if exc.errno == errno.ENOENT:
        return f"{what} {name!r}: no such file"
    return f"{what} {name!r}: {exc.strerror}"


@contextlib.contextmanager
def collect_input(base_dir: str, names: Sequence[str], limit: int) -> Iterator[list[SandboxFile]]:
    """Open every input-sandbox file (relative to ``base_dir``) after the checks above;
    the descriptors are closed when the block ends."""
    for name in names:
        if not plain_relative(name):
            raise SandboxError(f"input sandbox {name!r}: must be a relative path inside "
                               f"{base_dir} (no absolute path, no '..')")  # fmt: skip
    try:
        base = os.open(base_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"{base_dir}: {exc.strerror}") from None
    files: list[SandboxFile] = []
    try:
        total = 0
        for name in names:
            fd = _open_beneath(base, name, "input sandbox")
            st = os.fstat(fd)
            files.append(SandboxFile(name, st.st_size, stat.S_IMODE(st.st_mode), fd=fd))
            total += st.st_size
            if total > limit:
                raise SandboxError(f"input sandbox: {total} bytes or more, over the limit of "
                                   f"{limit} bytes")  # fmt: skip
        yield files
    finally:
        for f in files:
            if f.fd is not None:
                os.close(f.fd)
        os.close(base)


def write_tar(out: IO[bytes], files: Sequence[SandboxFile]) -> None:
    """A tar stream of regular files (and their parent directories), modes ``rwx`` for the
    owner and group only, no owner names, time 0: what ``tar -x`` as the target recreates."""
    made: set[str] = set()
    with tarfile.open(fileobj=out, mode="w|", format=tarfile.PAX_FORMAT) as tar:
        for f in files:
            parts = f.name.split("/")
            for depth in range(1, len(parts)):
                directory = "/".join(parts[:depth])
                if directory not in made:
                    made.add(directory)
                    info = tarfile.TarInfo(directory)
                    info.type, info.mode = tarfile.DIRTYPE, 0o770
                    tar.addfile(info)
            info = tarfile.TarInfo(f.name)
            info.size = f.size
            info.mode = 0o770 if f.mode & 0o111 else 0o660
            if f.data is not None:
                tar.addfile(info, io.BytesIO(f.data))
            else:
                assert f.fd is not None
                os.lseek(f.fd, 0, os.SEEK_SET)
                with os.fdopen(os.dup(f.fd), "rb") as fh:
                    tar.addfile(info, _Exactly(fh, f.size, f.name))


class _Exactly(io.RawIOBase):
    """Reads exactly ``size`` bytes: a file that shrank or grew since it was checked fails."""

    def __init__(self, fh: IO[bytes], size: int, name: str) -> None:
        self.fh, self.left, self.name = fh, size, name

    def readable(self) -> bool:
        return True

    def read(self, n: int = -1) -> bytes:
        want = self.left if n is None or n < 0 else min(n, self.left)
        data = self.fh.read(want)
        if len(data) < want:
            raise SandboxError(f"input sandbox {self.name!r}: changed size while being read")
        self.left -= len(data)
        return data


def check_upload(fileobj: IO[bytes], declared: Sequence[str], limit: int) -> list[SandboxFile]:
    """The CE's check of an uploaded input sandbox: exactly the declared files, regular, plain
    names, within the limit. Returns the files with their bytes (nothing written to disk)."""
    wanted, found, total = set(declared), {}, 0
    try:
        with tarfile.open(fileobj=fileobj, mode="r|*") as tar:
            for member in tar:
                if member.isdir():
                    continue
                name = member.name
                if not plain_relative(name):
                    raise SandboxError(f"upload: {one_line(name, 80)!r} escapes the job dir")
                if not member.isreg():
                    raise SandboxError(f"upload: {name!r} is not a regular file")
                if name not in wanted or name in found:
                    raise SandboxError(f"upload: {name!r} is not in the JDL's InputSandbox")
                total += member.size
                if total > limit:
                    raise SandboxError(f"input sandbox over the limit of {limit} bytes")
                fh = tar.extractfile(member)
                data = fh.read() if fh is not None else b""
                found[name] = SandboxFile(name, len(data), member.mode, data=data)
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise SandboxError(f"upload: not a readable tar stream ({exc})") from None
    missing = sorted(wanted - set(found))
    if missing:
        raise SandboxError(f"upload: InputSandbox file {missing[0]!r} was not sent")
    return [found[name] for name in declared]


def collect_output(job_dir: str, names: Sequence[str], limit: int) -> tuple[bytes, list[str]]:
    """(tar of the output files that exist, names missing or refused) from a job directory.

    Read as the CE (group member of the hand-over directory), never following a symlink
    the job may have left: such a name is reported as refused, not served.
    """
    out, missing, files = io.BytesIO(), [], []
    try:
        base = os.open(job_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise SandboxError(f"job directory: {exc.strerror}") from None
    try:
        total = 0
        for name in names:
            if not plain_relative(name):
                missing.append(f"{name} (escapes the job directory)")
                continue
            try:
                fd = _open_beneath(base, name, "output sandbox")
            except SandboxError as exc:
                missing.append(f"{name} ({str(exc).rsplit(': ', 1)[-1]})")
                continue
            size = os.fstat(fd).st_size
            total += size
            if total > limit:
                os.close(fd)
                raise SandboxError(f"output sandbox over the limit of {limit} bytes")
            files.append(SandboxFile(name, size, 0o640, fd=fd))
        write_tar(out, files)
    finally:
        for f in files:
            if f.fd is not None:
                os.close(f.fd)
        os.close(base)
    return out.getvalue(), missing


def extract_output(data: bytes, dest: str) -> list[str]:
    """Write an output tar into ``dest`` (made if missing); never overwrite, never follow a
    link. Every name is checked before the first file is written."""
    try:
        with tarfile.open(fileobj=io.BytesIO(data), mode="r:") as tar:
            members = [m for m in tar.getmembers() if not m.isdir()]
            names = {m.name for m in members}
            for m in members:
                if not plain_relative(m.name) or not m.isreg():
                    raise SandboxError(f"output: {one_line(m.name, 80)!r}: refused")
                _check_new(dest, m.name, names, len(members))
            os.makedirs(dest, exist_ok=True)
            written = []
            for m in members:
                _write_new(dest, m.name, tar.extractfile(m))
                written.append(m.name)
            return written
    except tarfile.TarError as exc:
        raise SandboxError(f"output: not a readable tar stream ({exc})") from None
    except OSError as exc:
        raise SandboxError(f"output: {exc.filename or dest}: {exc.strerror}") from None


def _check_new(dest: str, name: str, names: set[str], count: int) -> None:
    """Before anything is written: no name twice, none also a directory of another, none
    there already, and no existing component of its path (inside ``dest``) a symlink."""
    if len(names) != count:
        raise SandboxError("output: the same name twice in the stream")
    parts = name.split("/")
    for i in range(1, len(parts)):
        prefix = "/".join(parts[:i])
        if prefix in names:
            raise SandboxError(f"output: {one_line(prefix, 80)!r} is a file and a directory")
        if os.path.islink(os.path.join(dest, prefix)):
            raise SandboxError(f"{os.path.join(dest, prefix)}: a symbolic link; not followed")
    if os.path.lexists(os.path.join(dest, name)):
        raise SandboxError(f"{os.path.join(dest, name)}: already exists")


def _write_new(dest: str, name: str, src: IO[bytes] | None) -> None:
    parent = os.path.dirname(name)
    if parent:
        os.makedirs(os.path.join(dest, parent), exist_ok=True)
    flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(os.path.join(dest, name), flags, 0o644)
    with os.fdopen(fd, "wb") as fh:
        while src is not None and (chunk := src.read(_CHUNK)):
            fh.write(chunk)
