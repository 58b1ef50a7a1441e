"""The CE's settings: one YAML file (conf/wms-ce.yaml), validated as a whole.

Every problem is one line ``file:line: key: reason``, all of them collected before failing,
so an admin fixes the file in one pass. Nothing here opens a socket or runs a command.
"""

from __future__ import annotations

import os
import shlex
from dataclasses import dataclass, field
from typing import Any

import yaml

__all__ = ["CeConfig", "ConfigError", "load_config"]

MIB = 1024 * 1024
KEY_TYPES = ("rsa2048", "rsa3072", "ec-p256")
STRATEGIES = ("round-robin", "round-robin-random-start", "random")


class ConfigError(Exception):
    """The configuration cannot be used; ``errors`` holds one line per problem."""

    def __init__(self, errors: list[str]) -> None:
        self.errors = errors or ["invalid configuration"]
        super().__init__("; ".join(self.errors))


@dataclass(frozen=True)
class CeConfig:
    path: str
    listen: str
    public_url: str
    tls_cert: str
    tls_key: str
    ca_dir: str
    state_dir: str
    job_dir: str
    scas_endpoints: tuple[str, ...]
    scas_cert: str
    scas_key: str
    glexec_command: tuple[str, ...]
    workers: int = 2
    threads: int = 8
    vomsdir: str | None = None
    scas_strategy: str = "round-robin-random-start"
    scas_timeout: float = 30.0
    scas_deadline: float = 60.0
    glexec_config: str | None = None
    slurm_conf: str | None = None
    slurm_bin: str = "/usr/bin"
    sbatch_args: tuple[str, ...] = ()
    accounting: str = "none"
    max_input_sandbox: int = 10 * MIB
    max_output_sandbox: int = 100 * MIB
    delegation_key: str = "rsa2048"
    delegation_lifetime: int = 12 * 3600
    log_level: str = "info"
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def db_path(self) -> str:
        return os.path.join(self.state_dir, "wms-ce.sqlite")

    @property
    def proxy_dir(self) -> str:
        return os.path.join(self.state_dir, "proxies")

    @property
    def glexec_credential(self) -> str:
        """The host certificate and key in one file: glexec's X509_USER_PROXY (its TLS
        identity towards SCAS), written at start-up from ``scas.cert``/``scas.key``."""
        return os.path.join(self.state_dir, "hostcred.pem")


class _Checker:
    """Typed reads with the line of each key; errors are collected, not raised one by one."""

    def __init__(self, path: str, text: str) -> None:
        self.path, self.errors = path, list[str]()
        self.lines: dict[str, int] = {}
        try:
            node = yaml.compose(text)
            self.data = yaml.safe_load(text)
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            line = mark.line + 1 if mark is not None else 1
            raise ConfigError([f"{path}:{line}: not valid YAML: "
                               f"{getattr(exc, 'problem', exc)}"]) from None  # fmt: skip
        if not isinstance(self.data, dict):
            raise ConfigError([f"{path}:1: the file must be a YAML mapping"])
        self._index(node, "")

    def _index(self, node: Any, prefix: str) -> None:
        if isinstance(node, yaml.MappingNode):
            for key, value in node.value:
                name = f"{prefix}{key.value}"
                self.lines[name] = key.start_mark.line + 1
                self._index(value, name + ".")

    def error(self, key: str, reason: str) -> None:
        line = self.lines.get(key, self.lines.get(key.split(".")[0], 1))
        self.errors.append(f"{self.path}:{line}: {key}: {reason}")

    def get(self, key: str, kind: type | tuple[type, ...], default: Any = None,
            required: bool = False) -> Any:  # fmt: skip
        node: Any = self.data
        for part in key.split("."):
            node = node.get(part) if isinstance(node, dict) else None
        if node is None:
            if required:
                self.error(key, "missing")
            return default
        if (isinstance(node, bool) and kind is not bool) or not isinstance(node, kind):
            names = kind.__name__ if isinstance(kind, type) else "/".join(k.__name__ for k in kind)
            self.error(key, f"must be {names}, not {type(node).__name__}")
            return default
        return node

    def file(self, key: str, *, required: bool = True, directory: bool = False) -> str | None:
        value = self.get(key, str, required=required)
        if value is None:
            return None
        path = value if os.path.isabs(value) else os.path.join(os.path.dirname(self.path), value)
        ok = os.path.isdir(path) if directory else os.path.isfile(path)
        if not ok:
            self.error(key, f"{path}: no such {'directory' if directory else 'file'}")
        return path

    def positive(self, key: str, default: float, kind: type = int) -> Any:
        value = self.get(key, (int, float) if kind is float else int, default)
        if not value > 0:
            self.error(key, "must be a positive number")
            return default
        return kind(value)

    def choice(self, key: str, choices: tuple[str, ...], default: str) -> str:
        value = self.get(key, str, default)
        if value not in choices:
            self.error(key, f"{value!r}: one of {', '.join(choices)}")
            return default
        return str(value)


KNOWN = {"listen", "public_url", "workers", "threads", "tls", "trust", "state_dir", "job_dir",
         "scas", "glexec", "slurm", "limits", "delegation", "log_level"}  # fmt: skip


def _scas(chk: _Checker, cert: str | None, key: str | None) -> dict[str, Any]:
    endpoints = chk.get("scas.endpoints", list, [], required=True)
    if not endpoints or not all(isinstance(e, str) and e.startswith("https://")
                                for e in endpoints):  # fmt: skip
        chk.error("scas.endpoints", "a non-empty list of https:// URLs")
    return dict(
        scas_endpoints=tuple(endpoints),
        scas_cert=chk.file("scas.cert", required=False) or cert,
        scas_key=chk.file("scas.key", required=False) or key,
        scas_strategy=chk.choice("scas.strategy", STRATEGIES, "round-robin-random-start"),
        scas_timeout=chk.positive("scas.timeout", 30.0, float),
        scas_deadline=chk.positive("scas.deadline", 60.0, float),
    )


def _glexec_slurm(chk: _Checker) -> dict[str, Any]:
    command = chk.get("glexec.command", (str, list), "/usr/bin/glexec")
    argv = shlex.split(command) if isinstance(command, str) else [str(c) for c in command]
    if not argv or not os.path.isabs(argv[0]):
        chk.error("glexec.command", "an absolute path (or a list starting with one)")
    sbatch_args = chk.get("slurm.sbatch_args", list, [])
    accounting = chk.get("slurm.accounting", str, "none")
    if accounting not in ("none", "sacct") and not os.path.isabs(accounting):
        chk.error("slurm.accounting", "none, sacct, or the absolute path of a jobcomp log")
    return dict(
        glexec_command=tuple(argv),
        glexec_config=chk.file("glexec.config", required=False),
        slurm_conf=chk.file("slurm.conf", required=False),
        slurm_bin=chk.file("slurm.bin_dir", required=False, directory=True) or "/usr/bin",
        sbatch_args=tuple(str(a) for a in sbatch_args),
        accounting=accounting,
    )


def load_config(path: str) -> CeConfig:
    """Read and check ``path``; ConfigError with every problem found."""
    try:
        with open(path, encoding="utf-8") as fh:
            text = fh.read()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigError([f"{path}: cannot read: {getattr(exc, 'strerror', exc)}"]) from None
    chk = _Checker(path, text)
    for key in chk.data:
        if key not in KNOWN:
            chk.error(str(key), "unknown key")
    cert, key = chk.file("tls.cert"), chk.file("tls.key")
    ca_dir = chk.file("tls.ca_dir", directory=True)
    state_dir = chk.get("state_dir", str, required=True)
    job_dir = chk.get("job_dir", str, required=True)
    for name, value in (("state_dir", state_dir), ("job_dir", job_dir)):
        if value is not None and not os.path.isabs(value):
            chk.error(name, "must be an absolute path")
    listen = chk.get("listen", str, "0.0.0.0:8643")
    public_url = chk.get("public_url", str, required=True)
    if public_url and not public_url.startswith("https://"):
        chk.error("public_url", "must start with https://")
    values = dict(
        path=path, listen=listen, public_url=(public_url or "").rstrip("/"),
        tls_cert=cert, tls_key=key, ca_dir=ca_dir, state_dir=state_dir, job_dir=job_dir,
        workers=chk.positive("workers", 2), threads=chk.positive("threads", 8),
        vomsdir=chk.file("trust.vomsdir", required=False, directory=True),
        max_input_sandbox=chk.positive("limits.input_sandbox", 10 * MIB),
        max_output_sandbox=chk.positive("limits.output_sandbox", 100 * MIB),
        delegation_key=chk.choice("delegation.key", KEY_TYPES, "rsa2048"),
        delegation_lifetime=chk.positive("delegation.lifetime", 12 * 3600),
        log_level=chk.choice("log_level", ("debug", "info", "warning", "error"), "info"),
        **_scas(chk, cert, key), **_glexec_slurm(chk),
    )  # fmt: skip
    if chk.errors:
        raise ConfigError(chk.errors)
    return CeConfig(**values)
