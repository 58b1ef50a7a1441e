"""The payload owner's proxy: fetch it from MyProxy, check it, add VOMS if missing, destroy it.

Fetching runs the real ``myproxy-logon -n`` authenticated by the pilot's own proxy: the
server lets only pilot credentials retrieve without the owner's passphrase. The proxy is
written 0600 into the pilot's private directory and removed by :func:`destroy` whatever
happens to the payload.

VOMS: a proxy delegated from a VOMS proxy keeps its attribute certificate, so a proxy a user
stored with ``myproxy-init`` from a VOMS proxy comes back with its FQANs and nothing is added.
Only when the payload names a VO and the proxy carries no attribute of it does the pilot run
``voms-proxy-init -noregen -voms VO`` on the retrieved proxy (the proxy itself authenticates
to the VO's VOMS server and signs the new one; no user key is needed). That needs a vomses
file (``--vomses``); without one the payload is reported as failed, never run with a proxy
that SCAS would map differently.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from credentials.credential import (
    TrustStore,
    load_proxy_file,
    read_voms_unverified,
    verify_credential,
)
from credentials.errors import CredentialError
from pilot.queue import MyProxySpec
from safetext import one_line

TIMEOUT = 60.0
MIN_LIFETIME = 300.0  # seconds a retrieved proxy must still be valid to start a payload


class ProxyError(Exception):
    """Base of the ways getting the owner's proxy can fail; ``reason`` is one line."""

    def __init__(self, reason: str) -> None:
        self.reason = one_line(reason, 600)
        super().__init__(self.reason)


class PilotNotAuthorized(ProxyError):
    """MyProxy refused this pilot's own credential: no payload will work, the pilot stops."""


class PayloadProxyProblem(ProxyError):
    """The owner's credential is missing, locked, not theirs or unusable: the payload fails."""


class ProxyUnavailable(ProxyError):
    """MyProxy or VOMS could not be reached or failed: put the payload back and retry later."""


@dataclass(frozen=True)
class Tools:
    """Where the commands are, and the trust directories they and the checks use."""

    myproxy_logon: Sequence[str] = ("myproxy-logon",)
    voms_proxy_init: Sequence[str] = ("voms-proxy-init",)
    certdir: str = "/etc/grid-security/certificates"
    vomsdir: str | None = None
    vomses: str | None = None


def _env(tools: Tools, pilot_proxy: str, **extra: str) -> dict[str, str]:
    env = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "LANG": "C",
           "X509_USER_PROXY": pilot_proxy, "X509_CERT_DIR": tools.certdir}  # fmt: skip
    if tools.vomsdir:
        env["X509_VOMS_DIR"] = tools.vomsdir
    env.update(extra)
    return env


def _run(argv: Sequence[str], env: dict[str, str], what: str) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(list(argv), env=env, capture_output=True, text=True,
                              timeout=TIMEOUT, stdin=subprocess.DEVNULL)  # fmt: skip
    except FileNotFoundError:
        raise ProxyUnavailable(f"{what}: {argv[0]} not found") from None
    except subprocess.TimeoutExpired:
        raise ProxyUnavailable(f"{what}: no answer within {TIMEOUT:.0f} s") from None


def retrieve(spec: MyProxySpec, out: Path, *, tools: Tools, pilot_proxy: str,
             hours: int = 12) -> None:  # fmt: skip
    """``myproxy-logon -n`` as the pilot: the owner's proxy into ``out`` (mode 0600)."""
    argv = [*tools.myproxy_logon, "-n", "-q", "-s", spec.server, "-p", str(spec.port),
            "-l", spec.username, "-t", str(hours), "-o", str(out)]  # fmt: skip
    extra = {"MYPROXY_SERVER_DN": spec.server_dn} if spec.server_dn else {}
    res = _run(argv, _env(tools, pilot_proxy, **extra), "myproxy-logon")
    if res.returncode == 0 and out.is_file():
        os.chmod(out, 0o600)
        return
    text = " ".join((res.stdout + res.stderr).split())
    where = f"MyProxy {spec.server}:{spec.port} user {spec.username!r}"
    marker = "ERROR from myproxy-server:"
    if marker not in text:
        raise ProxyUnavailable(f"{where}: {text or f'myproxy-logon exited {res.returncode}'}")
    said = text.split(marker, 1)[1].strip()
    if "not authorized by server's" in said:
        raise PilotNotAuthorized(f"{where}: this pilot may not retrieve: {said}")
    raise PayloadProxyProblem(f"{where}: {said}")


@dataclass(frozen=True)
class Checked:
    identity: str
    fqans: tuple[str, ...]
    seconds_left: float


def check(path: Path, *, owner: str, tools: Tools) -> Checked:
    """Verify the retrieved chain and that it is the payload owner's, with time left."""
    trust = TrustStore(tools.certdir, tools.vomsdir)
    try:
        cred = verify_credential(load_proxy_file(path), trust, verify_voms=bool(tools.vomsdir))
    except CredentialError as exc:
        raise PayloadProxyProblem(f"retrieved proxy does not verify: {exc}") from None
    if cred.identity != owner:
        raise PayloadProxyProblem(f"retrieved proxy is {cred.identity!r}, not the payload "
                                  f"owner {owner!r}")  # fmt: skip
    left = cred.time_left()
    if left < MIN_LIFETIME:
        raise PayloadProxyProblem(f"retrieved proxy has {left:.0f} s left")
    fqans = cred.fqans
    if not tools.vomsdir:  # no vomsdir to verify with: only whether ACs are there at all
        fqans = tuple(f for ac in read_voms_unverified(cred) for f in ac.fqans)
    return Checked(cred.identity, fqans, left)


def has_vo(fqans: Sequence[str], vo: str) -> bool:
    return any(f == f"/{vo}" or f.startswith(f"/{vo}/") for f in fqans)


def add_voms(path: Path, vo: str, *, tools: Tools, hours: int = 12) -> None:
    """``voms-proxy-init -noregen -voms VO`` on the retrieved proxy, replacing it in place."""
    if not tools.vomses:
        raise PayloadProxyProblem(f"the owner's proxy carries no VOMS attributes of {vo!r} and "
                                  "this pilot has no --vomses to add them")  # fmt: skip
    new = path.with_name(path.name + ".voms")
    argv = [*tools.voms_proxy_init, "-noregen", "-voms", vo, "-vomses", tools.vomses,
            "-out", str(new), "-valid", f"{hours}:00", "-quiet", "-timeout", "30"]  # fmt: skip
    try:
        res = _run(argv, _env(tools, str(path)), "voms-proxy-init")
        if res.returncode != 0 or not new.is_file():
            text = " ".join((res.stdout + res.stderr).split())
            raise ProxyUnavailable(f"voms-proxy-init -noregen -voms {vo} exited "
                                   f"{res.returncode}: {text}")  # fmt: skip
        os.chmod(new, 0o600)
        os.replace(new, path)
    finally:
        destroy(new)


def destroy(path: Path) -> bool:
    """Remove a proxy file (True if one was there). Never raises for a missing file."""
    try:
        os.unlink(path)
        return True
    except FileNotFoundError:
        return False
