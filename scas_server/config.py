"""The SCAS server's own settings: one YAML file, validated as a whole.

Every problem is reported as ``file: key: reason`` and all of them are
collected before failing, so an admin fixes a config in one pass. Nothing
here opens sockets or loads plugins; :mod:`scas_server.decision` turns a
valid :class:`ServerConfig` into a running pipeline (and checks lcas.db,
lcmaps.db and keys on top).
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["ConfigError", "PolicyRoute", "ServerConfig", "TicketSettings", "load_config"]

DEFAULT_MAX_BODY = 1024 * 1024
DEFAULT_MAX_DEPTH = 64
DEFAULT_TICKET_LIFETIME = 120
# tickets are back-dated 30 s for clock skew; the whole window stays within 300 s
MAX_TICKET_LIFETIME = 270
# gevent: one greenlet per connection, each phase under a deadline (the default: a few
# stalled clients cannot occupy the workers); gthread: a thread pool, where a stalled TLS
# handshake holds a thread; sync: one connection at a time, closed after each reply
WORKER_CLASSES = ("gevent", "gthread", "sync")


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = [" ".join(e.split()) for e in errors] or ["invalid configuration"]
        super().__init__("; ".join(self.errors))


@dataclass(frozen=True)
class PolicyRoute:
    """Which LCMAPS policies serve a (resource type, action) pair; ``*`` matches any."""

    resource: str
    action: str
    lcmaps: tuple[str, ...]

    def matches(self, resource: str, action: str) -> bool:
        return self.resource in ("*", resource) and self.action in ("*", action)


@dataclass(frozen=True)
class TicketSettings:
    """Ed25519 key for glexec mapping tickets (docs/ticket.md, version 2).

    ``host`` is the host named in tickets issued on the Unix socket (default: this
    machine's FQDN); over TLS the ticket names the PEP's dns-host-name. Over TLS a ticket
    is issued only to a PEP that states its caller uid and is on the ticket allow-list:
    its identity DN matches a ``pep_allow`` pattern, or it is a proxy whose verified VOMS
    FQANs match a ``pep_fqans`` pattern (fnmatch, both).
    """

    key: str
    lifetime: int = DEFAULT_TICKET_LIFETIME
    host: str | None = None
    pep_allow: tuple[str, ...] = ()
    pep_fqans: tuple[str, ...] = ()


@dataclass(frozen=True)
class ServerConfig:
    path: str
    listen: str
    lcas_db: str
    lcmaps_db: str
    certdir: str
    vomsdir: str | None = None
    socket_mode: int = 0o660
    workers: int = 2
    worker_class: str = "gevent"
    threads: int = 2  # gthread only
    keepalive: int = 5  # also the deadline for a request's headers (gevent)
    timeout: int = 30
    worker_connections: int = 4096  # gevent: open connections per worker
    handshake_timeout: float = 5.0  # seconds for the TLS handshake
    body_timeout: float = 10.0  # seconds to read a request body
    tls_cert: str | None = None
    tls_key: str | None = None
    tls_ca_dir: str | None = None
    crl_check: bool = True
    pep_allow: tuple[str, ...] = ()
    monitor_allow: tuple[str, ...] = ()
    allowed_uids: tuple[int, ...] | None = None
    policies: tuple[PolicyRoute, ...] = ()
    ticket: TicketSettings | None = None
    audit_file: str = "-"
    max_body: int = DEFAULT_MAX_BODY
    max_depth: int = DEFAULT_MAX_DEPTH
    mapping_cache_seconds: float = 1.0  # lcmaps.cache_seconds: see scas_server.mapping_memo
    recheck_seconds: float = 1.0  # trust.recheck_seconds: see credentials.chain_cache
    trust_pep_attributes: bool = False
    issuer: str = field(default_factory=socket.getfqdn)
    log_level: str = "info"
    pidfile: str | None = None  # the master's pid, for logrotate's SIGUSR1 and for reloads

    @property
    def unix_socket(self) -> str | None:
        """The socket path in node-local mode, else None."""
        return self.listen[len("unix:") :] if self.listen.startswith("unix:") else None

    def route(self, resource: str, action: str) -> PolicyRoute | None:
        for route in self.policies:
            if route.matches(resource, action):
                return route
        return None


class _Checker:
    """Walks the parsed YAML, collecting ``file: key: reason`` lines."""

    def __init__(self, path: str, data: dict[str, Any]) -> None:
        self.path = path
        self.data = data
        self.errors: list[str] = []
        self.base = os.path.dirname(os.path.abspath(path))

    def error(self, key: str, reason: str) -> None:
        self.errors.append(f"{self.path}: {key}: {reason}")

    def section(self, key: str, allowed: set[str], required: bool = False) -> dict[str, Any]:
        value = self.data.get(key)
        if value is None:
            if required:
                self.error(key, "missing section")
            return {}
        if not isinstance(value, dict):
            self.error(key, "must be a mapping")
            return {}
        for sub in value:
            if sub not in allowed:
                self.error(f"{key}.{sub}", "unknown key")
        return value

    def get(
        self,
        sect: dict[str, Any],
        key: str,
        dotted: str,
        kind: type | tuple[type, ...],
        default: Any = None,
        required: bool = False,
        check: Callable[[Any], str | None] | None = None,
    ) -> Any:
        if key not in sect or sect[key] is None:
            if required:
                self.error(dotted, "missing")
            return default
        value = sect[key]
        kinds = kind if isinstance(kind, tuple) else (kind,)
        if isinstance(value, bool) and bool not in kinds:
            self.error(dotted, f"expected {kinds[0].__name__}, got a boolean")
            return default
        if not isinstance(value, kinds):
            self.error(dotted, f"expected {kinds[0].__name__}, got {type(value).__name__}")
            return default
        if check is not None:
            problem = check(value)
            if problem:
                self.error(dotted, problem)
                return default
        return value

    def path_of(self, value: str) -> str:
        return value if os.path.isabs(value) else os.path.join(self.base, value)

    def file(self, sect: dict[str, Any], key: str, dotted: str, required: bool = True) -> Any:
        value = self.get(sect, key, dotted, str, required=required)
        if value is None:
            return None
        full = self.path_of(value)
        if not os.path.isfile(full):
            self.error(dotted, f"{value}: no such file")
        elif not os.access(full, os.R_OK):
            self.error(dotted, f"{value}: not readable")
        return full

    def directory(self, sect: dict[str, Any], key: str, dotted: str, required: bool = True) -> Any:
        value = self.get(sect, key, dotted, str, required=required)
        if value is None:
            return None
        full = self.path_of(value)
        if not os.path.isdir(full):
            self.error(dotted, f"{value}: no such directory")
        return full


def _positive(limit: int) -> Callable[[Any], str | None]:
    return lambda v: None if 0 < v <= limit else f"must be between 1 and {limit}"


def _non_negative(limit: int) -> Callable[[Any], str | None]:
    return lambda v: None if 0 <= v <= limit else f"must be between 0 and {limit}"


def _listen(value: str) -> str | None:
    if value.startswith("unix:"):
        return None if len(value) > len("unix:") else "empty socket path"
    if re.fullmatch(r"(\[[0-9a-fA-F:.]+\]|[A-Za-z0-9.-]+):\d{1,5}", value):
        port = int(value.rsplit(":", 1)[1])
        return None if 0 < port < 65536 else "port out of range"
    return "expected HOST:PORT or unix:PATH"


def _socket_mode(value: Any) -> int | None:
    if isinstance(value, bool):
        return None
    if isinstance(value, int):
        return value if 0 <= value <= 0o777 else None
    text = str(value).strip().lower().removeprefix("0o")
    if re.fullmatch(r"[0-7]{1,4}", text) and int(text, 8) <= 0o777:
        return int(text, 8)
    return None


def _patterns(value: list[Any]) -> str | None:
    if not all(isinstance(p, str) and p.strip() for p in value):
        return "every pattern must be a non-empty string"
    return None


TOP_KEYS = {
    "listen", "socket_mode", "workers", "worker_class", "threads", "keepalive", "timeout",
    "worker_connections", "handshake_timeout", "body_timeout",
    "tls", "trust", "pep_allow", "monitor_allow",
    "allowed_uids", "lcas", "lcmaps", "policies", "ticket", "audit",
    "limits", "trust_pep_attributes", "issuer", "log_level", "pidfile",
}  # fmt: skip


def _policies(chk: _Checker) -> tuple[PolicyRoute, ...]:
    raw = chk.get(chk.data, "policies", "policies", list, required=True) or []
    routes: list[PolicyRoute] = []
    for i, item in enumerate(raw):
        key = f"policies[{i}]"
        if not isinstance(item, dict):
            chk.error(key, "must be a mapping with resource, action, lcmaps")
            continue
        for sub in item:
            if sub not in ("resource", "action", "lcmaps"):
                chk.error(f"{key}.{sub}", "unknown key")
        resource = chk.get(item, "resource", f"{key}.resource", str, required=True)
        action = chk.get(item, "action", f"{key}.action", str, required=True)
        names = chk.get(item, "lcmaps", f"{key}.lcmaps", (list, str), required=True)
        if isinstance(names, str):
            names = [names]
        if names is not None and not names:
            chk.error(f"{key}.lcmaps", "at least one policy name")
        if names and not all(isinstance(n, str) and n for n in names):
            chk.error(f"{key}.lcmaps", "policy names must be strings")
        elif resource and action and names:
            routes.append(PolicyRoute(resource, action, tuple(names)))
    return tuple(routes)


def _fqan_patterns(value: list[Any]) -> str | None:
    problem = _patterns(value)
    if problem is None and not all(p.startswith("/") for p in value):
        return 'every FQAN pattern must start with "/" (e.g. "/*/Role=pilot")'
    return problem


_TICKET_HOST = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")


def _ticket(chk: _Checker) -> TicketSettings | None:
    sect = chk.section("ticket", {"key", "lifetime", "host", "pep_allow", "pep_fqans"})
    if not sect:
        return None
    key = chk.file(sect, "key", "ticket.key")
    lifetime = chk.get(
        sect, "lifetime", "ticket.lifetime", int, DEFAULT_TICKET_LIFETIME,
        check=_positive(MAX_TICKET_LIFETIME),
    )  # fmt: skip
    host = chk.get(
        sect, "host", "ticket.host", str,
        check=lambda v: None if _TICKET_HOST.fullmatch(v) else "must be a DNS host name",
    )  # fmt: skip
    pep_allow = chk.get(sect, "pep_allow", "ticket.pep_allow", list, [], check=_patterns)
    pep_fqans = chk.get(sect, "pep_fqans", "ticket.pep_fqans", list, [], check=_fqan_patterns)
    if key is None:
        return None
    return TicketSettings(
        key=key, lifetime=lifetime, host=host,
        pep_allow=tuple(pep_allow), pep_fqans=tuple(pep_fqans),
    )  # fmt: skip


def parse_config(path: str, data: Any) -> ServerConfig:
    """Validate already-parsed YAML; raise :class:`ConfigError` listing every problem."""
    if not isinstance(data, dict):
        raise ConfigError([f"{path}: (top): must be a mapping of settings"])
    chk = _Checker(path, data)
    for key in data:
        if key not in TOP_KEYS:
            chk.error(str(key), "unknown key")
    listen = chk.get(data, "listen", "listen", str, required=True, check=_listen)
    unix = isinstance(listen, str) and listen.startswith("unix:")
    mode = _socket_mode(data.get("socket_mode", 0o660))
    if mode is None:
        chk.error("socket_mode", "expected an octal mode such as 0660")
    workers = chk.get(data, "workers", "workers", int, 2, check=_positive(64))
    worker_class = chk.get(
        data, "worker_class", "worker_class", str, "gevent",
        check=lambda v: None if v in WORKER_CLASSES else f"one of {', '.join(WORKER_CLASSES)}",
    )  # fmt: skip
    threads = chk.get(data, "threads", "threads", int, 2, check=_positive(256))
    keepalive = chk.get(data, "keepalive", "keepalive", int, 5, check=_non_negative(3600))
    timeout = chk.get(data, "timeout", "timeout", int, 30, check=_positive(3600))
    if worker_class == "gevent" and keepalive == 0:
        chk.error("keepalive", "must be at least 1 with gevent: it bounds the wait for headers")
    connections = chk.get(data, "worker_connections", "worker_connections", int, 4096,
                          check=_positive(100_000))
    handshake_timeout = chk.get(data, "handshake_timeout", "handshake_timeout", (int, float),
                                5.0, check=_positive(300))
    body_timeout = chk.get(data, "body_timeout", "body_timeout", (int, float), 10.0,
                           check=_positive(300))

    tls = chk.section("tls", {"cert", "key", "ca_dir", "crl_check"}, required=not unix)
    cert = chk.file(tls, "cert", "tls.cert", required=not unix)
    keyf = chk.file(tls, "key", "tls.key", required=not unix)
    ca_dir = chk.directory(tls, "ca_dir", "tls.ca_dir", required=not unix)
    crl_check = chk.get(tls, "crl_check", "tls.crl_check", bool, True)

    trust = chk.section("trust", {"certdir", "vomsdir", "recheck_seconds"}, required=True)
    certdir = chk.directory(trust, "certdir", "trust.certdir")
    vomsdir = chk.directory(trust, "vomsdir", "trust.vomsdir", required=False)
    recheck = chk.get(trust, "recheck_seconds", "trust.recheck_seconds", (int, float), 1.0,
                      check=_non_negative(60))

    pep_allow = chk.get(data, "pep_allow", "pep_allow", list, [], check=_patterns)
    monitor_allow = chk.get(data, "monitor_allow", "monitor_allow", list, [], check=_patterns)
    if not unix and not pep_allow and "pep_allow" not in data:
        chk.error("pep_allow", "missing (list the DN patterns of the PEPs that may ask)")
    uids = chk.get(data, "allowed_uids", "allowed_uids", list)
    if uids is not None and not all(isinstance(u, int) and u >= 0 for u in uids):
        chk.error("allowed_uids", "must be a list of numeric uids")
        uids = None

    lcas = chk.section("lcas", {"db"}, required=True)
    lcas_db = chk.file(lcas, "db", "lcas.db")
    lcmaps = chk.section("lcmaps", {"db", "cache_seconds"}, required=True)
    lcmaps_db = chk.file(lcmaps, "db", "lcmaps.db")
    cache_seconds = chk.get(lcmaps, "cache_seconds", "lcmaps.cache_seconds", (int, float), 1.0,
                            check=_non_negative(60))
    policies = _policies(chk)
    ticket = _ticket(chk)

    pidfile = chk.get(data, "pidfile", "pidfile", str)
    if pidfile is not None:
        pidfile = chk.path_of(pidfile)
    audit = chk.section("audit", {"file"})
    audit_file = chk.get(audit, "file", "audit.file", str, "-")
    if audit_file != "-":
        audit_file = chk.path_of(audit_file)
        if not os.path.isdir(os.path.dirname(audit_file)):
            chk.error("audit.file", f"{audit_file}: directory does not exist")
    limits = chk.section("limits", {"max_body", "max_depth"})
    max_body = chk.get(
        limits, "max_body", "limits.max_body", int, DEFAULT_MAX_BODY, check=_positive(1 << 30)
    )
    max_depth = chk.get(
        limits, "max_depth", "limits.max_depth", int, DEFAULT_MAX_DEPTH, check=_positive(10000)
    )
    trust_pep = chk.get(data, "trust_pep_attributes", "trust_pep_attributes", bool, False)
    issuer = chk.get(data, "issuer", "issuer", str, socket.getfqdn())
    levels = ("debug", "info", "warning", "error")
    log_level = chk.get(
        data, "log_level", "log_level", str, "info",
        check=lambda v: None if v in levels else f"one of {', '.join(levels)}",
    )  # fmt: skip

    if chk.errors:
        raise ConfigError(chk.errors)
    return ServerConfig(
        path=os.path.abspath(path),
        listen=listen,
        socket_mode=mode if mode is not None else 0o660,
        workers=workers,
        worker_class=worker_class,
        threads=threads,
        keepalive=keepalive,
        worker_connections=connections,
        handshake_timeout=float(handshake_timeout),
        body_timeout=float(body_timeout),
        timeout=timeout,
        tls_cert=cert,
        tls_key=keyf,
        tls_ca_dir=ca_dir,
        crl_check=crl_check,
        certdir=certdir,
        vomsdir=vomsdir,
        pep_allow=tuple(pep_allow),
        monitor_allow=tuple(monitor_allow),
        mapping_cache_seconds=float(cache_seconds),
        recheck_seconds=float(recheck),
        pidfile=pidfile,
        allowed_uids=tuple(uids) if uids is not None else None,
        lcas_db=lcas_db,
        lcmaps_db=lcmaps_db,
        policies=policies,
        ticket=ticket,
        audit_file=audit_file,
        max_body=max_body,
        max_depth=max_depth,
        trust_pep_attributes=trust_pep,
        issuer=issuer,
        log_level=log_level,
    )


def load_config(path: str) -> ServerConfig:
    """Read and validate ``path``; raise :class:`ConfigError` (file:line for YAML syntax)."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read: {exc.strerror}"]) from None
    except UnicodeDecodeError:
        raise ConfigError([f"{path}: not UTF-8 text"]) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f"{path}:{mark.line + 1}" if mark is not None else path
        problem = getattr(exc, "problem", None) or "YAML syntax error"
        raise ConfigError([f"{where}: {problem}"]) from None
    return parse_config(path, data)
