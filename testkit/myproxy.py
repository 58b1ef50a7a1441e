"""Debian's ``myproxy-server`` on loopback with the test PKI, for tests and demos.

    policy = RetrieverPolicy.pilots_only("FQAN:/atlas/Role=pilot*")
    with myproxy_server(base_dir, pki, policy=policy) as mp:
        mp.store(alice_voms_proxy, "alice")                 # myproxy-init -n, as the user
        mp.retrieve(pilot_proxy, "alice", "/tmp/x509up_a")  # myproxy-logon -n, as the pilot

The pilot fetches a user's proxy without the user's passphrase: the credential is stored
without one (``myproxy-init -n``) and the server lets only ``trusted_retrievers`` (which must
also match ``authorized_retrievers``) retrieve it. Policies match the client's DN with MyProxy's
regex dialect (``*`` is ``.*``) or, with an ``FQAN:`` prefix, the client's VOMS attributes,
verified by the real VOMS library against the PKI's vomsdir (package ``libmyproxy-voms``).

``myproxy-server -d`` serves one connection and exits, so this runs it the way inetd does: a
listener thread here accepts on a free loopback port and hands each connection to a fresh
``myproxy-server -d`` as stdin/stdout, its log going to ``<base_dir>/myproxy.log``. Every
process is a child of this one, and ``stop()`` ends them all.
"""

from __future__ import annotations

import contextlib
import ctypes.util
import os
import shlex
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509

from credentials.dn import oneline
from testkit.batch import PATH, missing_programs, tail, wait_for_signal
from testkit.pki import Host, TestPKI

__all__ = [
    "MyProxyError", "MyProxyServer", "MyProxyStartError", "RetrievalRefused", "RetrieverPolicy",
    "missing", "myproxy_server",
]  # fmt: skip

PROGRAMS = ("myproxy-server", "myproxy-init", "myproxy-logon", "myproxy-info", "myproxy-destroy")
HOST_DN = "/DC=org/DC=example/CN=localhost"
MAX_CHILDREN = 64


class MyProxyError(Exception):
    """A MyProxy client command failed for a reason other than the server's refusal."""


class MyProxyStartError(MyProxyError):
    """The server could not be configured or did not answer; the message has the log tail."""


class RetrievalRefused(MyProxyError):
    """The server refused the request; ``reason`` is its ERROR text."""

    def __init__(self, message: str, reason: str) -> None:
        super().__init__(message)
        self.reason = reason


@dataclass(frozen=True)
class RetrieverPolicy:
    """The server-wide policy lines of myproxy-server.config (each a MyProxy DN/FQAN regex)."""

    accepted: Sequence[str] = ("*",)
    retrievers: Sequence[str] = ()
    trusted: Sequence[str] = ()
    renewers: Sequence[str] = ()
    default_trusted: Sequence[str] = ()
    max_proxy_hours: int | None = None

    @classmethod
    def pilots_only(cls, *patterns: str) -> RetrieverPolicy:
        """Only clients matching ``patterns`` may retrieve, and without a passphrase."""
        return cls(retrievers=patterns, trusted=patterns)

    def config_text(self) -> str:
        lines = ["# written by testkit/myproxy.py"]
        for key, values in (
            ("accepted_credentials", self.accepted), ("authorized_retrievers", self.retrievers),
            ("trusted_retrievers", self.trusted), ("authorized_renewers", self.renewers),
            ("default_trusted_retrievers", self.default_trusted),
        ):  # fmt: skip
            for value in values:
                if '"' in value or "\n" in value:
                    raise MyProxyStartError(f"{key}: quote or newline in pattern {value!r}")
                lines.append(f'{key} "{value}"')
        if self.max_proxy_hours is not None:
            lines.append(f"max_proxy_lifetime {int(self.max_proxy_hours)}")
        return "\n".join(lines) + "\n"

    def uses_fqans(self) -> bool:
        every = [*self.retrievers, *self.trusted, *self.renewers, *self.default_trusted]
        return any(p.upper().startswith("FQAN:") for p in every)


def missing(policy: RetrieverPolicy | None = None) -> list[str]:
    """What is not installed for this policy: programs, and the VOMS plugin for FQAN rules."""
    gone = missing_programs(PROGRAMS)
    if policy is not None and policy.uses_fqans() and not ctypes.util.find_library("myproxy_voms"):
        gone.append("libmyproxy_voms.so (package libmyproxy-voms)")
    return gone


class _Listener:
    """inetd for one service: accept, run ``argv`` on the connection, reap, stop on request."""

    def __init__(self, argv: Sequence[str], env: Mapping[str, str], log: Path, cwd: Path):
        self.argv, self.env, self.log, self.cwd = list(argv), dict(env), log, cwd
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(128)
        # A timed accept, not select(): select() cannot watch a descriptor numbered 1024 or
        # more, which a long test run reaches, and the thread then died without a word.
        self.sock.settimeout(0.1)
        self.port = int(self.sock.getsockname()[1])
        self.children: list[subprocess.Popen[bytes]] = []
        self.failure: str | None = None
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name="myproxy-inetd", daemon=True)
        self._thread.start()

    def alive(self) -> bool:
        return self._thread.is_alive()

    def _loop(self) -> None:
        try:
            while not self._stop.is_set():
                self.children = [c for c in self.children if c.poll() is None]
                if len(self.children) >= MAX_CHILDREN:
                    time.sleep(0.05)
                    continue
                self._serve()
        except Exception as exc:  # recorded for the probe and the log
            if not self._stop.is_set():
                self.failure = f"listener stopped: {type(exc).__name__}: {exc}"
                with contextlib.suppress(OSError), open(self.log, "ab") as log:
                    log.write(f"testkit.myproxy: {self.failure}\n".encode())

    def _serve(self) -> None:
        """One connection: a fresh server process on it; a failure is logged, not fatal."""
        try:
            conn, _ = self.sock.accept()
        except TimeoutError:
            return
        except OSError as exc:  # out of descriptors, say: log it and keep listening
            if not self._stop.is_set():
                with open(self.log, "ab") as log:
                    log.write(f"testkit.myproxy: accept failed: {exc}\n".encode())
                time.sleep(0.05)
            return
        with conn, open(self.log, "ab") as log:
            try:
                conn.settimeout(None)
                self.children.append(subprocess.Popen(
                    self.argv, stdin=conn.fileno(), stdout=conn.fileno(), stderr=log,
                    env=self.env, cwd=self.cwd, start_new_session=True,
                ))  # fmt: skip
            except OSError as exc:
                log.write(f"testkit.myproxy: connection not served: {exc}\n".encode())

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(5)
        self.sock.close()
        for child in self.children:
            if child.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(child.pid, signal.SIGKILL)
            child.wait(5)
        self.children.clear()


def _localhost_credential(pki: TestPKI) -> tuple[Host, str]:
    """The PKI's ``localhost`` host certificate and its DN; made only if it does not exist.

    Re-issuing it would rewrite the files under another server still using them.
    """
    cert = os.path.join(pki.dir, "hosts", "localhost", "hostcert.pem")
    key = os.path.join(pki.dir, "hosts", "localhost", "hostkey.pem")
    if not (os.path.exists(cert) and os.path.exists(key)):
        return pki.host("localhost", HOST_DN), HOST_DN
    with open(cert, "rb") as fh:
        subject = x509.load_pem_x509_certificate(fh.read()).subject
    return Host("localhost", cert, key), oneline(subject)


class MyProxyServer:
    """A configured server; build it with :func:`myproxy_server`."""

    def __init__(self, base_dir: str | os.PathLike[str], pki: TestPKI, *,
                 policy: RetrieverPolicy, host: Host | None = None) -> None:  # fmt: skip
        self.base_dir = Path(base_dir).resolve()
        self.pki, self.policy = pki, policy
        self.host_dn: str | None = None
        if host is not None:
            self.host_cert = host
        else:
            self.host_cert, self.host_dn = _localhost_credential(pki)
        self.storage = self.base_dir / "storage"
        self.config_path = self.base_dir / "myproxy-server.config"
        self.log_path = self.base_dir / "myproxy.log"
        self.hostname = "localhost"
        self._listener: _Listener | None = None

    @property
    def port(self) -> int:
        if self._listener is None:
            raise MyProxyError("the server is not running")
        return self._listener.port

    def start(self, timeout: float = 20.0) -> None:
        """Write the config and storage dir, start listening, and wait for a real answer."""
        gone = missing(self.policy)
        if gone:
            raise MyProxyStartError(f"not installed: {', '.join(gone)}")
        self.base_dir.mkdir(parents=True, exist_ok=True)
        self.storage.mkdir(mode=0o700, exist_ok=True)
        os.chmod(self.storage, 0o700)
        self.config_path.write_text(self.policy.config_text())
        env = {
            "PATH": PATH, "LANG": "C", "X509_CERT_DIR": self.pki.certdir,
            "X509_VOMS_DIR": self.pki.vomsdir, "X509_USER_CERT": self.host_cert.cert_path,
            "X509_USER_KEY": self.host_cert.key_path,
        }  # fmt: skip
        argv = ["myproxy-server", "-d", "-c", str(self.config_path), "-s", str(self.storage)]
        self._listener = _Listener(argv, env, self.log_path, self.base_dir)
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        """A probe ``myproxy-info`` with the host credential must get the server's answer."""
        deadline = time.monotonic() + timeout
        detail = ""
        while time.monotonic() < deadline:
            listener = self._listener
            if listener is None or not listener.alive():
                detail = listener.failure if listener and listener.failure else "listener gone"
                break
            try:
                left = max(1.0, deadline - time.monotonic())
                res = self._client(["myproxy-info", "-l", "__probe__"], self.host_cert.cert_path,
                                   key=self.host_cert.key_path, timeout=left)  # fmt: skip
            except subprocess.TimeoutExpired:
                detail = "the probe got no answer"
                break
            if "no credentials found for user __probe__" in res.stderr:
                return
            detail = (res.stdout + res.stderr).strip()
            time.sleep(0.2)
        self.stop()
        raise MyProxyStartError(f"myproxy-server gave no proper answer in {timeout:.0f} s "
                                f"({detail}); log:\n{tail(self.log_path)}")  # fmt: skip

    def stop(self) -> None:
        if self._listener is not None:
            self._listener.stop()
            self._listener = None

    # -- clients -------------------------------------------------------------------------

    def client_env(self, proxy: str | os.PathLike[str], key: str | None = None) -> dict[str, str]:
        """Environment for a MyProxy client acting with ``proxy`` (e.g. inside a pilot job)."""
        proxy = os.fspath(proxy)
        env = {
            "PATH": PATH, "LANG": "C", "X509_CERT_DIR": self.pki.certdir,
            "X509_VOMS_DIR": self.pki.vomsdir, "MYPROXY_SERVER": self.hostname,
            "MYPROXY_SERVER_PORT": str(self.port), "X509_USER_PROXY": proxy,
            "X509_USER_CERT": proxy, "X509_USER_KEY": key or proxy,
        }  # fmt: skip
        if self.host_dn:
            env["MYPROXY_SERVER_DN"] = self.host_dn
        return env

    def _client(self, cmd: Sequence[str], proxy: str | os.PathLike[str], *,
                key: str | None = None, stdin: str | None = None,
                timeout: float = 60.0) -> subprocess.CompletedProcess[str]:  # fmt: skip
        env = self.client_env(proxy, key)
        if key is not None:
            env.pop("X509_USER_PROXY")
        full = [*cmd, "-s", self.hostname, "-p", str(self.port)]
        return subprocess.run(full, env=env, input=stdin, capture_output=True, text=True,
                              timeout=timeout, cwd=self.base_dir)  # fmt: skip

    def _checked(self, res: subprocess.CompletedProcess[str], what: str) -> None:
        if res.returncode == 0:
            return
        text = (res.stdout + res.stderr).strip()
        marker = "ERROR from myproxy-server:"
        if marker in text:
            reason = " ".join(text.split(marker, 1)[1].split())
            raise RetrievalRefused(f"{what}: refused: {reason}", reason)
        raise MyProxyError(f"{what} exited {res.returncode}: {' '.join(text.split())}")

    def store(self, proxy: str | os.PathLike[str], username: str, *,
              passphrase: str | None = None, trusted_retriever: str | None = None,
              cred_hours: int = 11, proxy_hours: int = 2) -> None:  # fmt: skip
        """``myproxy-init`` with the user's (VOMS) proxy: delegate a credential under ``username``.

        Without ``passphrase`` the credential is stored with none (``-n``), so only the
        server's trusted retrievers can get it; ``trusted_retriever`` narrows that further
        per credential (``-x -Z REGEX``). ``cred_hours`` must not outlive the proxy.
        """
        cmd = ["myproxy-init", "-l", username, "-c", str(cred_hours), "-t", str(proxy_hours),
               "-C", os.fspath(proxy), "-y", os.fspath(proxy)]  # fmt: skip
        cmd += ["-S"] if passphrase is not None else ["-n"]
        if trusted_retriever is not None:
            cmd += ["-x", "-Z", trusted_retriever]
        stdin = f"{passphrase}\n" if passphrase is not None else None
        self._checked(self._client(cmd, proxy, stdin=stdin), f"store {username}")

    def retrieve(self, proxy: str | os.PathLike[str], username: str,
                 out: str | os.PathLike[str], *, passphrase: str | None = None,
                 hours: int = 1) -> str:  # fmt: skip
        """``myproxy-logon`` authenticated by ``proxy``: write ``username``'s proxy to ``out``.

        Raises :class:`RetrievalRefused` with the server's reason when the policy says no.
        """
        cmd = ["myproxy-logon", "-q", "-l", username, "-t", str(hours), "-o", os.fspath(out)]
        cmd += ["-S"] if passphrase is not None else ["-n"]
        stdin = f"{passphrase}\n" if passphrase is not None else None
        self._checked(self._client(cmd, proxy, stdin=stdin), f"retrieve {username}")
        return os.fspath(out)

    def info(self, proxy: str | os.PathLike[str], username: str) -> str:
        """``myproxy-info`` output for the owner of the stored credential."""
        res = self._client(["myproxy-info", "-l", username], proxy)
        self._checked(res, f"info {username}")
        return res.stdout

    def destroy(self, proxy: str | os.PathLike[str], username: str) -> None:
        res = self._client(["myproxy-destroy", "-l", username], proxy)
        self._checked(res, f"destroy {username}")

    def command_line(self, cmd: Sequence[str]) -> str:
        """A copy-paste shell line for ``cmd`` against this server (for demos and docs)."""
        return shlex.join([*cmd, "-s", self.hostname, "-p", str(self.port)])


@contextlib.contextmanager
def myproxy_server(base_dir: str | os.PathLike[str], pki: TestPKI, *,
                   policy: RetrieverPolicy | None = None, host: Host | None = None,
                   timeout: float = 20.0) -> Iterator[MyProxyServer]:  # fmt: skip
    """Start a server in ``base_dir`` trusting ``pki``; yield it; stop every process after.

    The default policy lets anyone store and only ``/DC=org/DC=example/O=Pilots/*`` retrieve.
    """
    policy = policy or RetrieverPolicy.pilots_only("/DC=org/DC=example/O=Pilots/*")
    server = MyProxyServer(base_dir, pki, policy=policy, host=host)
    try:
        server.start(timeout)
        yield server
    finally:
        server.stop()


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testkit.myproxy DIR``: a server with alice's proxy stored, until Ctrl-C."""
    import argparse
    import sys

    parser = argparse.ArgumentParser(prog="python -m testkit.myproxy", description=main.__doc__)
    parser.add_argument("dir", help="directory for the PKI, the config and the storage")
    parser.add_argument("--retrievers", default="FQAN:/atlas/Role=pilot*",
                        help="authorized and trusted retrievers (default: %(default)s)")
    args = parser.parse_args(argv)
    pki = TestPKI(os.path.join(args.dir, "pki"), reuse_keys=True)
    alice = pki.user("alice", "/DC=org/DC=example/O=Users/CN=Alice Smith")
    pilot = pki.user("pilot", "/DC=org/DC=example/O=Pilots/CN=atlas pilot")
    user_proxy = pki.proxy(alice, fqans=["/atlas/Role=NULL/Capability=NULL"], vo="atlas")
    pilot_proxy = pki.proxy(pilot, fqans=["/atlas/Role=pilot/Capability=NULL"], vo="atlas")
    policy = RetrieverPolicy.pilots_only(args.retrievers)
    try:
        with myproxy_server(os.path.join(args.dir, "server"), pki, policy=policy) as server:
            server.store(user_proxy, "alice")
            env = server.client_env(pilot_proxy)
            keys = ("X509_USER_PROXY", "X509_CERT_DIR", "MYPROXY_SERVER", "MYPROXY_SERVER_PORT")
            exports = " ".join(f"{k}={shlex.quote(env[k])}" for k in keys)
            print(f"myproxy-server on localhost:{server.port}; alice's proxy stored as 'alice'."
                  f"\nAs the pilot:\n  env {exports} myproxy-logon -n -l alice -o x509up"
                  "\nCtrl-C stops it.", flush=True)  # fmt: skip
            wait_for_signal()
    except MyProxyError as exc:
        print(f"testkit.myproxy: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
