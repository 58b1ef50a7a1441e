"""glexec.conf: the ``[glexec]`` section the front and the setuid helper both read.

In:  the file's bytes (checked on the open descriptor: a regular file, not group- or
     world-writable, owned by root; an override named by ``$GLEXEC_CONFIG`` may also be the
     caller's own, see `config_path`).
Out: a `Config` (every key with its typed value, defaults filled in), or a `GlexecError`
     (202, phase "config") naming the file, the line or the key and what is wrong with it.

The parser follows the helper's (``read_conf`` in ``setuid_helper.c``) rule for rule, so a
file one accepts the other reads the same way: ``#``/``;`` comments at the start of a line, a
``key = value`` line only inside a section, other sections ignored, no key twice, values
trimmed (no inline comments), lists comma-separated. Keys come in two groups:

- ``HELPER_KEYS``: read by the helper itself (the front validates them exactly as it does);
- ``FRONT_KEYS``: the front's own keys and the legacy gLExec keys of reference/glexec.md
  section 2. The helper skips every key it does not use (its defaults are the safe ones),
  so a site's existing glexec.conf works unchanged; the front, which runs first on every
  call, refuses unknown keys and bad values with 202.
"""

from __future__ import annotations

import os
from collections.abc import Callable

from glexec.status import SYSTEM, GlexecError

DEFAULT_PATH = "/etc/glexec.conf"
DEFAULT_HELPER = "/usr/libexec/scas-stack/setuid_helper"  # glexec/Makefile: make install
MAX_CONF = 65536
MAX_ID = 4294967294
LIST_MAX = 2048  # the helper's LIST buffer (joined list, with commas)

#: never passed to a payload, whatever the config or the caller says (= setuid_helper.c)
BAD_PREFIXES = tuple(
    "LD_ MALLOC_ PYTHON PERL RUBY NODE_ BASH_FUNC_ GLIBC_ JAVA_TOOL_ _JAVA_ OPENSSL_".split()
)
BAD_NAMES = frozenset(
    "GCONV_PATH GETCONF_DIR HOSTALIASES IFS LOCALDOMAIN LOCPATH NIS_PATH NLSPATH RESOLV_HOST_CONF "
    "RES_OPTIONS TZDIR BASH_ENV ENV SHELLOPTS BASHOPTS PS4".split()
)
_ALNUM = frozenset("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789")


def forbidden_env(name: str) -> bool:
    """True for LD_*, MALLOC_*, PYTHON*, GCONV_PATH and the rest of the helper's deny list."""
    return name.startswith(BAD_PREFIXES) or name in BAD_NAMES


def is_env_name(name: str) -> bool:
    """``[A-Za-z_][A-Za-z0-9_]{0,127}``, as the helper's ``is_name(..., env=1)``."""
    return (
        0 < len(name) <= 128
        and (name[0] in _ALNUM or name[0] == "_")
        and not name[0].isdigit()
        and all(c in _ALNUM or c == "_" for c in name)
    )


def is_user_name(name: str) -> bool:
    """``[A-Za-z0-9_][A-Za-z0-9_.-]{0,31}``, as the helper's ``is_name(..., env=0)``."""
    return (
        0 < len(name) <= 32
        and (name[0] in _ALNUM or name[0] == "_")
        and all(c in _ALNUM or c in "_.-" for c in name)
    )


class _Bad(ValueError):
    """A value's problem, without the key (the caller adds file and key)."""


def _yesno(v: str) -> bool:
    if v not in ("yes", "no"):
        raise _Bad("must be yes or no")
    return v == "yes"


def _dec(v: str, lo: int, hi: int) -> int:
    if not (v.isascii() and v.isdigit()) or (len(v) > 1 and v[0] == "0") or len(v) > 10:
        raise _Bad(f"must be a whole number {lo}..{hi}")
    n = int(v)
    if not lo <= n <= hi:
        raise _Bad(f"must be a whole number {lo}..{hi}")
    return n


def _seconds(v: str) -> float:
    try:
        n = float(v)
    except ValueError:
        raise _Bad("must be a number of seconds") from None
    if not 0 < n <= 3600:  # also refuses nan and inf
        raise _Bad("must be a number of seconds, more than 0 and at most 3600")
    return n


def _abspath(v: str) -> str:
    if not v.startswith("/") or len(v) >= 4096 or "\x00" in v:
        raise _Bad("must be an absolute path")
    return v


def _choice(*allowed: str) -> Callable[[str], str]:
    def parse(v: str) -> str:
        if v not in allowed:
            raise _Bad(f"must be one of {', '.join(allowed)}")
        return v

    return parse


def _items(v: str) -> list[str]:
    return [item.strip(" \t") for item in v.split(",")] if v else []


def _users(v: str, *, star: bool = False) -> tuple[str, ...]:
    """Login names or ``.pool`` prefixes (the helper's set_list for users), or ``*``."""
    out = []
    for item in _items(v):
        if star and item == "*":
            out.append(item)
            continue
        if not is_user_name(item[1:] if item.startswith(".") else item):
            raise _Bad(f"bad entry {item!r}")
        out.append(item)
    if len(",".join(out)) + 2 > LIST_MAX:
        raise _Bad("is too long")
    return tuple(out)


def _envnames(v: str) -> tuple[str, ...]:
    if v == "no":
        return ()
    out = []
    for item in _items(v):
        if not is_env_name(item):
            raise _Bad(f"bad entry {item!r}")
        if forbidden_env(item):
            raise _Bad(f"{item} is never passed on")
        out.append(item)
    if len(",".join(out)) + 2 > LIST_MAX:
        raise _Bad("is too long")
    return tuple(out)


def _ticket_key(v: str) -> str:
    import binascii
    import hashlib

    shape = "must be ed25519:<16 hex key id>:<base64 key> (from scas-admin keygen)"
    parts = v.split(":")
    if len(parts) != 3 or parts[0] != "ed25519" or len(parts[1]) != 16:
        raise _Bad(shape)
    if any(c not in "0123456789abcdef" for c in parts[1]):
        raise _Bad(shape)
    try:
        raw = binascii.a2b_base64(parts[2], strict_mode=True)
    except ValueError:
        raw = b""
    if len(raw) != 32 or binascii.b2a_base64(raw, newline=False).decode() != parts[2]:
        raise _Bad("the key is not 32 bytes of base64")
    key_id = hashlib.sha256(raw).hexdigest()[:16]
    if key_id != parts[1]:
        raise _Bad(f"key id {parts[1]} is not the key's ({key_id})")
    return v


def _endpoints(v: str) -> tuple[str, ...]:
    from client.failures import ClientConfigError
    from client.transport import parse_endpoint

    urls = tuple(item for item in _items(v))
    for url in urls:
        try:
            if parse_endpoint(url).scheme != "https":
                raise _Bad(f"{url}: a socket goes in scas_socket")
        except ClientConfigError as exc:
            raise _Bad(exc.message) from None
    if len(set(urls)) != len(urls):
        raise _Bad("an endpoint is listed twice")
    return urls


def _order(v: str) -> str:
    from client.failover import STRATEGIES

    return _choice(*STRATEGIES)(v)


def _policies(v: str) -> tuple[str, ...]:
    names = tuple(v.split(":"))
    if not all(n and all(c in _ALNUM or c in "_-." for c in n) for n in names):
        raise _Bad("must be policy names joined by ':'")
    return names


def _name(v: str) -> str:
    if not is_user_name(v):
        raise _Bad("must be a user or group name")
    return v


def _facility(v: str) -> str:
    known = {
        "LOG_AUTH",
        "LOG_AUTHPRIV",
        "LOG_DAEMON",
        "LOG_USER",
        "LOG_SYSLOG",
        *(f"LOG_LOCAL{i}" for i in range(8)),
    }
    if v not in known:
        raise _Bad(f"must be one of {', '.join(sorted(known))}")
    return v


def _level(v: str) -> int:
    return _dec(v, 0, 5)


_LOCK = _choice("flock", "fcntl", "disabled")

#: key -> (parser, default). Read by the setuid helper too: validated exactly as it does.
HELPER_KEYS: dict[str, tuple[Callable[[str], object], object]] = {
    "user_white_list": (_users, ()),
    "preserve_env_variables": (_envnames, ()),
    "min_target_uid": (lambda v: _dec(v, 1, MAX_ID), 1000),
    "min_target_gid": (lambda v: _dec(v, 1, MAX_ID), 1000),
    "scas_ticket_key": (_ticket_key, None),
    "nonce_dir": (_abspath, "/var/lib/glexec/nonces"),
    "log_file": (_abspath, None),
    "mode": (_choice("setuid", "log-only"), "setuid"),
    "log_destination": (_choice("syslog", "file"), "syslog"),
    "linger": (_yesno, True),
    "no_new_privs": (_yesno, True),
    "target_proxy_cleanup": (_yesno, True),
}
#: the front's own keys and the legacy ones; the helper skips them.
FRONT_KEYS: dict[str, tuple[Callable[[str], object], object]] = {
    "scas_endpoints": (_endpoints, ()),
    "scas_socket": (_abspath, None),
    "scas_order": (_order, "round-robin-random-start"),
    "scas_timeout": (_seconds, 30.0),
    "scas_deadline": (_seconds, 60.0),
    "certdir": (_abspath, None),
    "vomsdir": (_abspath, None),
    "log_level": (_level, 3),
    "setuid_helper": (_abspath, DEFAULT_HELPER),
    # legacy gLExec keys (reference/glexec.md section 2); those with a meaning here:
    "omission_private_key_white_list": (_users, ()),
    "create_target_proxy": (_yesno, True),
    "input_lock_mechanism": (_LOCK, "flock"),
    "prohibit_exec_via_symlink": (_yesno, False),
    "silent_logging": (_yesno, False),
    "syslog_facility": (_facility, "LOG_AUTHPRIV"),
    # validated, otherwise without effect in this stack (LCAS/LCMAPS run inside SCAS)
    "log_file_group": (_name, None),
    "diff_syslog_levels": (_yesno, None),
    "group_white_list": (lambda v: _users(v, star=True), ()),
    "user_identity_switch_by": (_choice("glexec", "lcmaps"), None),
    "use_lcas": (_yesno, None),
    "lcas_db_file": (_abspath, None),
    "lcas_libdir": (_abspath, None),
    "lcas_log_file": (_abspath, None),
    "lcas_debug_level": (_level, None),
    "lcas_log_level": (_level, None),
    "lcmaps_db_file": (_abspath, None),
    "lcmaps_libdir": (_abspath, None),
    "lcmaps_log_file": (_abspath, None),
    "lcmaps_debug_level": (_level, None),
    "lcmaps_log_level": (_level, None),
    "lcmaps_get_account_policy": (_policies, None),
    "lcmaps_verify_account_policy": (_policies, None),
    "lcmaps_voms_verification": (_yesno, None),
    "target_lock_mechanism": (_LOCK, None),
    "lock_mechanism": (_LOCK, None),
    "pedantic_security_checks": (_yesno, None),
    "backlog_path": (_abspath, None),
    "epilogue": (_abspath, None),
    "epilogue_user": (_name, None),
    "epilogue_group": (_name, None),
    "epilogue_timeout": (lambda v: _dec(v, 1, 86400), None),
}
KEYS = {**HELPER_KEYS, **FRONT_KEYS}


def config_path(env: dict[str, str] | os._Environ[str] = os.environ) -> tuple[str, bool]:
    """(path, overridden): ``$GLEXEC_CONFIG`` when set, else /etc/glexec.conf.

    The override changes what this unprivileged front reads (SCAS endpoints, the helper's
    path), never what the setuid helper reads (its path is compiled in): a caller who points
    it elsewhere can only misdirect its own call. It is there for tests and for trying a
    new file with ``--check-config`` before installing it.
    """
    value = env.get("GLEXEC_CONFIG")
    if value:
        return value, True
    return DEFAULT_PATH, False


class Config:
    """Every key's typed value; `given` lists the keys the file set, in file order."""

    def __init__(self, path: str, overridden: bool = False) -> None:
        self.path = path
        self.overridden = overridden
        self.values: dict[str, object] = {k: default for k, (_, default) in KEYS.items()}
        self.given: list[str] = []

    def __getitem__(self, key: str) -> object:
        return self.values[key]

    @property
    def endpoints(self) -> list[str]:
        """The SCAS endpoints to ask: the node-local socket first, then the central ones."""
        sock = self.values["scas_socket"]
        urls: tuple[str, ...] = self.values["scas_endpoints"]  # type: ignore[assignment]
        return ([f"unix:{sock}"] if sock else []) + list(urls)

    def input_lock(self) -> str:
        return str(
            self.values["input_lock_mechanism"]
            if "input_lock_mechanism" in self.given
            else self.values["lock_mechanism"] or "flock"
        )


def _fail(path: str, reason: str) -> GlexecError:
    return GlexecError(SYSTEM, "config", f"{path}: {reason}")


def read_file(path: str, *, caller_uid: int, overridden: bool) -> bytes:
    """The file's bytes, after the checks on the open descriptor (O_NOFOLLOW, fstat)."""
    import stat

    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK
    try:
        fd = os.open(path, flags)
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _fail(path, "not a regular file")
        owners = (0, caller_uid) if overridden else (0,)
        if st.st_uid not in owners:
            who = "root or the caller" if overridden else "root"
            raise _fail(path, f"owned by uid {st.st_uid}, not by {who}")
        if st.st_mode & 0o022:
            raise _fail(path, f"group- or world-writable (mode {st.st_mode & 0o7777:04o})")
        data = os.read(fd, MAX_CONF + 1)
    except OSError as exc:
        raise _fail(path, exc.strerror or str(exc)) from None
    finally:
        os.close(fd)
    if len(data) > MAX_CONF or b"\x00" in data:
        raise _fail(path, "unreadable, binary or too large")
    return data


def parse(data: bytes, path: str, overridden: bool = False) -> Config:
    """Parse and validate the text of a glexec.conf; GlexecError(202) on the first problem."""
    cfg = Config(path, overridden)
    text = data.decode("utf-8", "surrogateescape")
    any_section = in_glexec = found = False
    for lineno, raw in enumerate(text.split("\n"), 1):
        line = raw.lstrip(" \t").rstrip(" \t\r")
        if not line or line[0] in "#;":
            continue
        if line[0] == "[":
            if line[-1] != "]":
                raise _fail(path, f"line {lineno}: bad section header")
            in_glexec = line[1:-1].strip(" \t") == "glexec"
            found = found or in_glexec
            any_section = True
            continue
        if not any_section:
            raise _fail(path, f"line {lineno}: key outside any section")
        if not in_glexec:
            continue
        key, eq, value = line.partition("=")
        if not eq:
            raise _fail(path, f"line {lineno}: expected key = value")
        key, value = key.strip(" \t"), value.strip(" \t")
        if key in cfg.given:
            raise _fail(path, f"key {key} given twice")
        if key not in KEYS or len(cfg.given) == 64:
            raise _fail(path, f"unknown key {key} in [glexec] (line {lineno})")
        try:
            cfg.values[key] = KEYS[key][0](value)
        except _Bad as exc:
            raise _fail(path, f"{key}: {exc}") from None
        cfg.given.append(key)
    if not found:
        raise _fail(path, "has no [glexec] section")
    if cfg.values["scas_ticket_key"] is None:
        raise _fail(path, "scas_ticket_key is missing (the helper verifies tickets with it)")
    if cfg.values["log_destination"] == "file" and not cfg.values["log_file"]:
        raise _fail(path, "log_destination = file needs log_file")
    if not cfg.endpoints:
        raise _fail(path, "no SCAS to ask: set scas_endpoints or scas_socket")
    return cfg


def load(
    env: dict[str, str] | os._Environ[str] = os.environ, caller_uid: int | None = None
) -> Config:
    """The caller's effective configuration (see `config_path` for which file)."""
    path, overridden = config_path(env)
    uid = os.getuid() if caller_uid is None else caller_uid
    return parse(read_file(path, caller_uid=uid, overridden=overridden), path, overridden)
