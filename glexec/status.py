"""Exit codes, the one error class of the front, and the JSON status record.

The codes are the classic gLExec ones (DESIGN.md section 6), shared with the setuid helper:
201 the caller can fix it, 202 the site must fix it (a caller may retry), 203 refused, 204 the
payload itself exited 201-204, 126 the payload could not be executed.

The status record is one JSON line, the same shape the helper writes to ``--status-fd``:
``{"phase": ..., "exit": N, "signal": 0, "reason": ...}``. The front writes one only when it
fails before the helper runs; from then on the helper writes it. Standard library only (no
json: a hand-written encoder keeps ``re`` out of a payload start).
"""

from __future__ import annotations

import os

from safetext import one_line

CALLER = 201  # the caller's mistake: bad proxy, permissions, a forbidden variable, usage
SYSTEM = 202  # the site's: config missing or bad, helper missing, SCAS unreachable
REFUSED = 203  # authorization refused: not whitelisted, Deny, no ticket, no key to prove
PAYLOAD = 204  # (helper) the payload exited 201..204
NOEXEC = 126  # (helper) the payload could not be executed


class GlexecError(Exception):
    """A refusal: the exit code, the phase it happened in, and a one-line reason."""

    def __init__(self, code: int, phase: str, reason: str) -> None:
        self.code = code
        self.phase = phase
        self.reason = one_line(reason, 900)
        super().__init__(self.reason)


def _json_string(text: str) -> str:
    out = ['"']
    for ch in text:
        if ch in '"\\':
            out.append("\\" + ch)
        elif ch < " " or ch == "\x7f" or "\ud800" <= ch <= "\udfff":
            out.append(f"\\u{ord(ch):04x}")
        else:
            out.append(ch)
    out.append('"')
    return "".join(out)


def record(phase: str, code: int, reason: str, signal: int = 0) -> bytes:
    """One status line, e.g. ``{"phase": "scas", "exit": 202, "signal": 0, "reason": "..."}``."""
    return (
        f'{{"phase": {_json_string(phase)}, "exit": {code}, "signal": {signal}, '
        f'"reason": {_json_string(one_line(reason, 900))}}}\n'
    ).encode("utf-8", "replace")


class StatusSink:
    """Where the status record goes: a descriptor the pilot gave, or a file it named.

    `fd` is None when the pilot asked for no record. The front writes at most one record; a
    descriptor it hands to the helper is marked inheritable by `for_helper()`.
    """

    def __init__(self, fd: int | None = None) -> None:
        self.fd = fd
        self.written = False

    @classmethod
    def open_file(cls, path: str) -> StatusSink:
        """Create or truncate `path` (as the caller; no symlink at the end), mode 0600."""
        flags = os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC
        try:
            fd = os.open(path, flags | os.O_NOCTTY, 0o600)
        except OSError as exc:
            raise GlexecError(CALLER, "usage", f"--status-file {path}: {exc.strerror}") from None
        return cls(fd)

    @classmethod
    def inherited(cls, number: str) -> StatusSink:
        """A descriptor the pilot opened for us: at least 3, open, and writable."""
        if not number.isdigit() or not number.isascii() or len(number) > 5 or int(number) < 3:
            raise GlexecError(CALLER, "usage", f"--status-fd needs a number >= 3, not {number!r}")
        fd = int(number)
        import fcntl

        try:
            flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        except OSError:
            raise GlexecError(
                CALLER, "usage", f"--status-fd {fd}: not an open descriptor"
            ) from None
        if flags & os.O_ACCMODE == os.O_RDONLY:
            raise GlexecError(CALLER, "usage", f"--status-fd {fd}: open read-only")
        return cls(fd)

    def write(self, phase: str, code: int, reason: str) -> None:
        if self.fd is None or self.written:
            return
        self.written = True
        data = record(phase, code, reason)
        try:
            while data:
                data = data[os.write(self.fd, data) :]
        except OSError:
            pass  # the exit code still tells; stderr has the reason

    def for_helper(self) -> int | None:
        if self.fd is not None:
            os.set_inheritable(self.fd, True)
        return self.fd
