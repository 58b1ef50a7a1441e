"""The caller's inputs, checked before anything is asked: proxies, environment, command.

In:  the environment (GLEXEC_CLIENT_CERT, GLEXEC_SOURCE_PROXY, GLEXEC_TARGET_PROXY), the
     ``--env``/``--env-file`` options, the command line, the config.
Out: a `Proxy` (its bytes, whether it holds a key), the ``NAME=VALUE`` list for the helper, or
     a `GlexecError` (201 for the caller's mistakes) naming the variable or file.

These checks are the cheap, early half: they spare SCAS a query (and a pool lease) that the
helper would refuse anyway. The helper repeats what matters for security (proof of
possession, the environment deny list, absolute command) with its own privileges; nothing
here is trusted by it. The proxy check is deliberately light (no cryptography import): PEM
blocks, an unencrypted key, and in the first certificate a subject that is its issuer plus
one CN (RFC 3820 and legacy proxies alike), and a validity window that includes now.
"""

from __future__ import annotations

import binascii
import errno
import os
import stat
import time
from collections.abc import Mapping, Sequence

from glexec.config import Config, forbidden_env, is_env_name
from glexec.status import CALLER, GlexecError

MAX_PROXY = 65535  # the helper refuses 65536 bytes or more
MAX_ENV = 64  # the helper's limit on --env options
MAX_ENV_FILE = 65536
OWN_NAMES = frozenset({"HOME", "USER", "LOGNAME", "X509_USER_PROXY"})  # the helper sets them
_END_CERT = b"-----END CERTIFICATE-----"
_KEY_TYPES = (b"PRIVATE KEY", b"RSA PRIVATE KEY", b"EC PRIVATE KEY")
_CN_OID = b"\x06\x03\x55\x04\x03"


class Proxy:
    """A checked proxy file: its bytes (handed to the helper; SCAS gets only its certificates,
    client.query drops the key), whether it holds a key, and when its first certificate ends."""

    __slots__ = ("has_key", "not_after", "path", "pem")

    def __init__(self, path: str, pem: bytes, has_key: bool, not_after: int) -> None:
        self.path, self.pem, self.has_key, self.not_after = path, pem, has_key, not_after


def _err(what: str, reason: str) -> GlexecError:
    return GlexecError(CALLER, "input", f"{what}: {reason}")


def _tlv(der: bytes, pos: int, end: int) -> tuple[int, int, int]:
    """(tag, start of content, end of content) of the DER element at `pos`."""
    if pos + 2 > end:
        raise ValueError("truncated")
    tag, n = der[pos], der[pos + 1]
    pos += 2
    if n & 0x80:
        count = n & 0x7F
        if not 1 <= count <= 3 or pos + count > end:
            raise ValueError("bad length")
        n = int.from_bytes(der[pos : pos + count], "big")
        pos += count
    if pos + n > end:
        raise ValueError("truncated")
    return tag, pos, pos + n


def _epoch(tag: int, text: bytes) -> int:
    """UTCTime (YYMMDDHHMMSSZ) or GeneralizedTime (YYYYMMDDHHMMSSZ) as Unix seconds."""
    s = text.decode("ascii")
    if tag == 0x17 and len(s) == 13:
        year = int(s[:2]) + (2000 if int(s[:2]) < 50 else 1900)
        s = s[2:]
    elif tag == 0x18 and len(s) == 15:
        year, s = int(s[:4]), s[4:]
    else:
        raise ValueError("bad time")
    if not s.endswith("Z") or not s[:-1].isdigit():
        raise ValueError("bad time")
    month, day, hh, mm, ss = (int(s[i : i + 2]) for i in range(0, 10, 2))
    y = year - (month <= 2)  # days from civil (H. Hinnant), proleptic Gregorian
    era = y // 400
    yoe = y - era * 400
    doy = (153 * (month + (-3 if month > 2 else 9)) + 2) // 5 + day - 1
    days = era * 146097 + yoe * 365 + yoe // 4 - yoe // 100 + doy - 719468
    return days * 86400 + hh * 3600 + mm * 60 + ss


def leaf_facts(der: bytes) -> tuple[bool, int, int]:
    """(is a proxy, not before, not after) of one DER certificate; ValueError if malformed.

    A proxy's subject is its issuer's name with one more RDN holding a single CN (RFC 3820
    section 3.4; legacy "CN=proxy" proxies too). Compared as DER bytes: a proxy tool copies
    the issuer's name, so the bytes match.
    """
    _, pos, end = _tlv(der, 0, len(der))  # Certificate
    tag, pos, tbs_end = _tlv(der, pos, end)  # TBSCertificate
    fields: list[tuple[int, int, int]] = []
    while pos < tbs_end and len(fields) < 6:
        tag, start, stop = _tlv(der, pos, tbs_end)
        fields.append((tag, start, stop))
        pos = stop
    if fields and fields[0][0] == 0xA0:  # [0] version
        fields = fields[1:]
    if len(fields) < 5 or [f[0] for f in fields[:5]] != [0x02, 0x30, 0x30, 0x30, 0x30]:
        raise ValueError("not an X.509 certificate")
    issuer, validity, subject = fields[2], fields[3], fields[4]
    t1, s1, e1 = _tlv(der, validity[1], validity[2])
    t2, s2, e2 = _tlv(der, e1, validity[2])
    not_before, not_after = _epoch(t1, der[s1:e1]), _epoch(t2, der[s2:e2])
    iss, sub = der[issuer[1] : issuer[2]], der[subject[1] : subject[2]]
    proxy = False
    if sub.startswith(iss) and len(sub) > len(iss):
        rest = sub[len(iss) :]
        tag, s, e = _tlv(rest, 0, len(rest))
        if tag == 0x31 and e == len(rest):  # exactly one more RDN ...
            tag, s2, e2 = _tlv(rest, s, e)
            proxy = tag == 0x30 and e2 == e and rest[s2:].startswith(_CN_OID)  # ... one CN
    return proxy, not_before, not_after


def _blocks(pem: bytes) -> tuple[list[bytes], list[bytes]]:
    """(DER certificates in order, the BEGIN line label of each key block)."""
    certs, keys = [], []
    for part in pem.split(b"-----BEGIN ")[1:]:
        label, _, rest = part.partition(b"-----")
        if label == b"CERTIFICATE":
            body, end, _ = rest.partition(_END_CERT)
            if not end:
                raise ValueError("a certificate block has no END line")
            try:
                certs.append(binascii.a2b_base64(b"".join(body.split()), strict_mode=True))
            except binascii.Error:
                raise ValueError("a certificate block is not base64") from None
        elif label.endswith(b"PRIVATE KEY"):
            encrypted = b"Proc-Type: 4,ENCRYPTED" in rest.partition(b"-----END")[0]
            keys.append(b"ENCRYPTED PRIVATE KEY" if encrypted else label)
    return certs, keys


def read_proxy(
    what: str,
    path: str,
    *,
    uid: int,
    lock: str = "flock",
    key_optional: bool = False,
    now: float | None = None,
) -> Proxy:
    """Open and check the proxy file `path` named by variable `what`, as caller `uid`."""
    if not path:
        raise _err(what, "set but empty")
    if not path.startswith("/"):
        raise _err(what, f"{path}: not an absolute path")
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        reason = "a symbolic link" if exc.errno == errno.ELOOP else exc.strerror
        raise _err(what, f"{path}: {reason}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _err(what, f"{path}: not a regular file")
        if st.st_uid != uid:
            raise _err(what, f"{path}: owned by uid {st.st_uid}, not by the caller (uid {uid})")
        if st.st_mode & 0o7077:
            raise _err(
                what,
                f"{path}: mode {st.st_mode & 0o7777:04o} is too open "
                "(no group, other or special bits: 0600 or 0400)",
            )
        _lock(fd, lock, what, path)
        data = os.read(fd, MAX_PROXY + 1)
        while len(data) <= MAX_PROXY and (more := os.read(fd, MAX_PROXY + 1 - len(data))):
            data += more
    except OSError as exc:
        raise _err(what, f"{path}: {exc.strerror}") from None
    finally:
        os.close(fd)  # also drops the lock
    return check_pem(what, path, data, key_optional=key_optional, now=now)


def _lock(fd: int, mechanism: str, what: str, path: str) -> None:
    """A shared lock while reading, so a renewal never hands us half a file."""
    if mechanism == "disabled":
        return
    import fcntl

    for _ in range(50):
        try:
            if mechanism == "fcntl":
                fcntl.lockf(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            else:
                fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
            return
        except BlockingIOError:
            time.sleep(0.1)
    raise _err(what, f"{path}: locked by another process for 5 s ({mechanism})")


def check_pem(
    what: str, path: str, data: bytes, *, key_optional: bool = False, now: float | None = None
) -> Proxy:
    """The light PEM check of a proxy file's bytes (see the module docstring)."""
    if not data:
        raise _err(what, f"{path}: empty")
    if len(data) > MAX_PROXY:
        raise _err(what, f"{path}: larger than {MAX_PROXY} bytes")
    try:
        certs, keys = _blocks(data)
        if not certs:
            raise ValueError("no certificate (BEGIN CERTIFICATE) in it")
        is_proxy, not_before, not_after = leaf_facts(certs[0])
    except (ValueError, UnicodeDecodeError) as exc:
        raise _err(what, f"{path}: {exc}") from None
    if b"ENCRYPTED PRIVATE KEY" in keys:
        raise _err(
            what, f"{path}: the private key is encrypted; glexec needs the proxy's unencrypted key"
        )
    if any(label not in _KEY_TYPES for label in keys) or len(keys) > 1:
        raise _err(what, f"{path}: expected one RSA, EC or PKCS#8 private key block")
    if not keys and not key_optional:
        raise _err(what, f"{path}: holds no private key (BEGIN PRIVATE KEY)")
    if not is_proxy:
        raise _err(
            what,
            f"{path}: the first certificate is not a proxy (its subject is not "
            "its issuer plus one CN): give a proxy, not a certificate",
        )
    t = time.time() if now is None else now
    if not_after <= t:
        raise _err(what, f"{path}: the proxy expired {int(t - not_after)} s ago")
    if not_before > t + 300:
        raise _err(what, f"{path}: the proxy is not valid yet")
    return Proxy(path, data, bool(keys), not_after)


# -- environment --------------------------------------------------------------------------------


def parse_env_file(path: str) -> list[tuple[str, str]]:
    """``--env-file``: a JSON object of strings, or ``NAME=VALUE`` lines (# comments)."""
    try:
        with open(path, "rb") as fh:
            raw = fh.read(MAX_ENV_FILE + 1)
    except OSError as exc:
        raise GlexecError(CALLER, "environment", f"--env-file {path}: {exc.strerror}") from None
    if len(raw) > MAX_ENV_FILE:
        raise GlexecError(CALLER, "environment", f"--env-file {path}: over {MAX_ENV_FILE} bytes")
    text = raw.decode("utf-8", "surrogateescape")
    if text.lstrip().startswith("{"):
        import json

        try:
            obj = json.loads(raw)
        except ValueError as exc:
            raise GlexecError(
                CALLER, "environment", f"--env-file {path}: bad JSON: {exc}"
            ) from None
        if not isinstance(obj, dict) or not all(isinstance(v, str) for v in obj.values()):
            raise GlexecError(
                CALLER, "environment", f"--env-file {path}: expected an object of strings"
            )
        return list(obj.items())
    pairs = []
    for n, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        name, eq, value = line.partition("=")
        if not eq:
            raise GlexecError(CALLER, "environment", f"--env-file {path}:{n}: expected NAME=VALUE")
        pairs.append((name, value))
    return pairs


def payload_env(
    cfg: Config, environ: Mapping[str, str], files: Sequence[str], options: Sequence[str]
) -> list[str]:
    """The ``NAME=VALUE`` strings for the helper's ``--env`` options.

    In order of precedence (later wins): the caller's own environment for the names in
    preserve_env_variables (as the original gLExec kept them), each ``--env-file``, each
    ``--env``. A name asked for explicitly must be a variable name, never on the deny list
    (LD_*, MALLOC_*, PYTHON*...), not one the helper sets (HOME, USER, LOGNAME,
    X509_USER_PROXY) and listed in preserve_env_variables; else 201 naming it.
    """
    allowed: tuple[str, ...] = cfg["preserve_env_variables"]  # type: ignore[assignment]
    chosen = {n: environ[n] for n in allowed if n in environ and n not in OWN_NAMES}
    sources = [(f"--env-file {f}", parse_env_file(f)) for f in files]
    pairs = []
    for opt in options:
        name, eq, value = opt.partition("=")
        if not eq:
            raise GlexecError(CALLER, "environment", f"--env needs NAME=VALUE, not {opt[:64]!r}")
        pairs.append((name, value))
    sources.append(("--env", pairs))
    for where, items in sources:
        seen: set[str] = set()
        for name, value in items:
            check_env_name(name, allowed, where)
            if name in seen:
                raise GlexecError(CALLER, "environment", f"{where}: {name} given twice")
            if "\x00" in value:
                raise GlexecError(CALLER, "environment", f"{where}: {name} holds a NUL byte")
            seen.add(name)
            chosen[name] = value
    if len(chosen) > MAX_ENV:
        raise GlexecError(CALLER, "environment", f"{len(chosen)} variables; at most {MAX_ENV}")
    return [f"{n}={v}" for n, v in chosen.items()]


def check_env_name(name: str, allowed: Sequence[str], where: str = "--env") -> None:
    shown = name[:64]
    if not is_env_name(name):
        raise GlexecError(CALLER, "environment", f"{where}: {shown!r} is not a variable name")
    if forbidden_env(name):
        raise GlexecError(CALLER, "environment", f"{where}: {name} is never passed to a payload")
    if name in OWN_NAMES:
        raise GlexecError(
            CALLER, "environment", f"{where}: {name} is set by glexec for the target account"
        )
    if name not in allowed:
        raise GlexecError(
            CALLER,
            "environment",
            f"{where}: {name} is not in preserve_env_variables (glexec.conf)",
        )


# -- command and paths ----------------------------------------------------------------------------


def check_command(cfg: Config, command: str) -> None:
    """Absolute, and (prohibit_exec_via_symlink) reached without a symbolic link."""
    if not command.startswith("/"):
        raise GlexecError(
            CALLER,
            "input",
            f"command {command!r}: give an absolute path (glexec searches no PATH)",
        )
    if cfg["prohibit_exec_via_symlink"] and os.path.realpath(command) != os.path.normpath(command):
        raise GlexecError(
            CALLER,
            "input",
            f"command {command} is reached through a symbolic "
            f"link (prohibit_exec_via_symlink): use {os.path.realpath(command)}",
        )


def check_target_proxy(path: str, *, refresh: bool = False) -> str | None:
    """GLEXEC_TARGET_PROXY: None for unset or /dev/null (no copy), else an absolute path.

    For a payload (not a refresh) a file already there is refused now: the helper never
    overwrites one, and finding out after a SCAS query would cost a ticket and a lease.
    """
    if path in ("", "/dev/null"):
        return None
    if not path.startswith("/") or path.endswith("/"):
        raise GlexecError(
            CALLER, "input", f"GLEXEC_TARGET_PROXY {path!r}: give an absolute file path"
        )
    parent = os.path.dirname(path)
    try:
        os.stat(parent)
    except FileNotFoundError:
        raise GlexecError(
            CALLER, "input", f"GLEXEC_TARGET_PROXY {path}: directory {parent} does not exist"
        ) from None
    except OSError:
        return path  # not visible to the pilot (the target's own directory): the helper decides
    if not refresh and os.path.lexists(path):
        raise GlexecError(
            CALLER,
            "input",
            (
                f"GLEXEC_TARGET_PROXY {path} exists; the helper never overwrites it (remove it, "
                "or run glexec without a command to refresh it)"
            ),
        )
    return path


_NAME_CHARS = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789_.-")


def _workdir_name_ok(name: str) -> bool:
    """The helper's rule (a login name's characters): no '/', never '.', '..' or '-x'."""
    return 0 < len(name) <= 32 and set(name) <= _NAME_CHARS and name[0] not in ".-"


def open_workdir(path: str) -> tuple[int, str]:
    """``--workdir DIR``: (descriptor of DIR's parent, DIR's name) for the helper to create.

    The parent must be the caller's own directory and DIR must not exist yet: the helper
    creates it by descriptor (mkdirat/openat, O_NOFOLLOW), hands it to the target with the
    caller's group (setgid, 2770) and starts the payload in it (README, "Work directory").
    """
    parent, name = os.path.split(path.rstrip("/") if path != "/" else path)
    if not path.startswith("/") or not _workdir_name_ok(name):
        raise GlexecError(
            CALLER, "input",
            f"--workdir {path!r}: give an absolute path whose last part is 1-32 of "
            "A-Z a-z 0-9 _ . - (not starting with . or -)",
        )  # fmt: skip
    try:
        fd = os.open(parent, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except OSError as exc:
        raise GlexecError(CALLER, "input", f"--workdir: {parent}: {exc.strerror}") from None
    st = os.fstat(fd)
    problem = None
    if st.st_uid != os.getuid():
        problem = f"{parent} is not your directory (owner uid {st.st_uid})"
    elif os.path.lexists(os.path.join(f"/proc/self/fd/{fd}", name)):
        problem = f"{path} exists; glexec creates the work directory itself"
    if problem is not None:
        os.close(fd)
        raise GlexecError(CALLER, "input", f"--workdir: {problem}")
    return fd, name
