"""Hand the ticket and the payload proxy to the setuid helper, and exec it.

In:  the helper's path (glexec.conf ``setuid_helper``), the ticket, the proxy's bytes, the
     status descriptor, the ``--env`` list, the target proxy path, the command.
Out: nothing: the process becomes the helper (``os.execve``, no shell, an empty
     environment: the helper builds the payload's from scratch). A `GlexecError` (202) if
     the helper is missing, not executable, not setuid root in setuid mode, or will not start.

Descriptors: the ticket and the proxy each go in a sealed memfd (written whole, then sealed
against writes and resizes, rewound), made inheritable only now; where memfd is not
available, a pipe big enough to hold them. The helper takes them as ``--ticket-fd N
--proxy-fd M`` (it closes every other descriptor but 0-2, ``--status-fd`` and
``--workdir-fd``, the parent of the hand-over directory).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence

from glexec.config import Config
from glexec.status import SYSTEM, GlexecError


def check_helper(cfg: Config) -> str:
    """The helper's path once it looks runnable; setuid root too unless mode = log-only."""
    path = str(cfg["setuid_helper"])
    try:
        st = os.stat(path)
    except OSError as exc:
        raise GlexecError(SYSTEM, "handover", f"setuid helper {path}: {exc.strerror}") from None
    if not stat.S_ISREG(st.st_mode) or not os.access(path, os.X_OK):
        raise GlexecError(SYSTEM, "handover", f"setuid helper {path}: not an executable file")
    if cfg["mode"] == "setuid" and (st.st_uid != 0 or not st.st_mode & stat.S_ISUID):
        raise GlexecError(
            SYSTEM,
            "handover",
            (
                f"setuid helper {path} is not setuid root (owner uid {st.st_uid}, mode "
                f"{st.st_mode & 0o7777:04o}): install it root:root 4755, or set mode = log-only"
            ),
        )
    return path


def data_fd(data: bytes, name: str) -> int:
    """A close-on-exec descriptor that reads `data` to EOF (made inheritable at exec)."""
    try:
        fd = os.memfd_create(name, os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
    except (AttributeError, OSError):
        return _pipe_fd(data)
    try:
        _write_all(fd, data)
        import fcntl

        seals = fcntl.F_SEAL_WRITE | fcntl.F_SEAL_GROW | fcntl.F_SEAL_SHRINK | fcntl.F_SEAL_SEAL
        fcntl.fcntl(fd, fcntl.F_ADD_SEALS, seals)
        os.lseek(fd, 0, os.SEEK_SET)
    except OSError:
        os.close(fd)
        raise
    return fd


def _pipe_fd(data: bytes) -> int:
    import fcntl

    r, w = os.pipe()
    try:
        size = fcntl.fcntl(w, 1032)  # F_GETPIPE_SZ
        if size < len(data):
            size = fcntl.fcntl(w, 1031, len(data))  # F_SETPIPE_SZ
        if size < len(data):
            raise OSError(0, f"a pipe holds {size} bytes, not {len(data)}")
        _write_all(w, data)
    except OSError:
        os.close(r)
        raise
    finally:
        os.close(w)
    return r


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def helper_argv(
    helper: str,
    *,
    ticket_fd: int,
    proxy_fd: int,
    status_fd: int | None,
    target_proxy: str | None,
    env: Sequence[str],
    command: Sequence[str],
    linger: bool | None = None,
    workdir: tuple[int, str] | None = None,
) -> list[str]:
    """``setuid_helper --ticket-fd N --proxy-fd M [...] -- /CMD ARGS`` (its CLI, exactly)."""
    argv = [helper, "--ticket-fd", str(ticket_fd), "--proxy-fd", str(proxy_fd)]
    if status_fd is not None:
        argv += ["--status-fd", str(status_fd)]
    if target_proxy is not None:
        argv += ["--target-proxy", target_proxy]
    if workdir is not None:
        argv += ["--workdir-fd", str(workdir[0]), "--workdir-name", workdir[1]]
    for item in env:
        argv += ["--env", item]
    if linger is not None:
        argv.append("--linger" if linger else "--exec")
    return [*argv, "--", *command]


def refresh_command(target: str) -> tuple[str, list[str]]:
    """(temporary target name, command) for ``glexec`` without a command: proxy refresh.

    The helper writes the verified proxy, as the target, to a new hidden name next to
    GLEXEC_TARGET_PROXY (O_EXCL, 0600), then execs ``mv -f -T TMP TARGET`` as the target:
    one rename(2) in the same directory replaces the old copy atomically, and only where
    the target itself may (its own directory, or its own file in a sticky one).
    """
    mv = next((p for p in ("/usr/bin/mv", "/bin/mv") if os.access(p, os.X_OK)), None)
    if mv is None:
        raise GlexecError(SYSTEM, "handover", "proxy refresh needs mv in /usr/bin or /bin")
    directory, name = os.path.split(target)
    tmp = os.path.join(directory, f".{name[:200]}.glexec-{os.urandom(6).hex()}")
    return tmp, [os.path.realpath(mv), "-f", "-T", tmp, target]


def execute(
    cfg: Config,
    helper: str,
    *,
    ticket: str,
    proxy_pem: bytes,
    status_fd: int | None,
    target_proxy: str | None,
    env: Sequence[str],
    command: Sequence[str],
    linger: bool | None = None,
    workdir: tuple[int, str] | None = None,
) -> None:
    """Become the helper. Returns only by raising GlexecError(202)."""
    try:
        ticket_fd = data_fd(ticket.encode("ascii") + b"\n", "glexec-ticket")
        proxy_fd = data_fd(proxy_pem, "glexec-proxy")
    except OSError as exc:
        raise GlexecError(SYSTEM, "handover", f"cannot hand over the ticket: {exc}") from None
    argv = helper_argv(
        helper,
        ticket_fd=ticket_fd,
        proxy_fd=proxy_fd,
        status_fd=status_fd,
        target_proxy=target_proxy,
        env=env,
        command=command,
        linger=linger,
        workdir=workdir,
    )
    for fd in (ticket_fd, proxy_fd, *(workdir[:1] if workdir else ())):
        os.set_inheritable(fd, True)
    try:
        os.execve(helper, argv, {})
    except OSError as exc:
        raise GlexecError(SYSTEM, "handover", f"cannot run {helper}: {exc.strerror}") from None
