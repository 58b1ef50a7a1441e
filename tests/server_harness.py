"""Helpers for the scas-server tests: a site on disk, a real server process, clients.

``Site`` writes a test PKI (CA + CRL, server and PEP host certificates), an
lcas.db, an lcmaps.db and a server YAML into one directory. ``Server``
starts the real ``scas-server`` console script (gunicorn, real mutual TLS
or a Unix socket) as a subprocess and waits until it answers.
"""

from __future__ import annotations

import http.client
import json
import os
import signal
import socket
import ssl
import subprocess
import sys
import time
from dataclasses import dataclass, field
from typing import Any

import yaml

from client import xacml
from testkit.pki import TestPKI

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
SCAS_SERVER = os.path.join(os.path.dirname(sys.executable), "scas-server")
PEP_DN = "/DC=org/DC=example/CN=pep.example.org"
ROGUE_DN = "/DC=org/DC=example/CN=rogue.example.org"
USER_DN = "/DC=org/DC=example/O=Users/CN=Carol Client"

LCMAPS_DB = """\
# written by tests/server_harness.py
good = "lcmaps_dummy_good.mod"
       " --dummy-uid {uid} --dummy-gid {gid} --dummy-sec-gid {sgid}"
bad = "lcmaps_dummy_bad.mod"
noop = "lcmaps_voms.mod"

glexec_get_account:
noop -> good

gatekeeper:
bad -> good
"""

LCAS_DB = 'pluginname="lcas_plugin_example.mod"\n'


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@dataclass
class Site:
    """Everything a server needs, in ``directory``."""

    directory: str
    pki: TestPKI = field(init=False)

    def __post_init__(self) -> None:
        self.pki = TestPKI(os.path.join(self.directory, "pki"), reuse_keys=True)
        self.server = self.pki.host("localhost", "/DC=org/DC=example/CN=localhost")
        self.pep = self.pki.host("pep.example.org", PEP_DN)
        self.rogue = self.pki.host("rogue.example.org", ROGUE_DN)
        self.user = self.pki.user("carol", USER_DN)
        self.ca_file = os.path.join(self.pki.dir, "ca.pem")
        self.audit = os.path.join(self.directory, "audit.log")
        self.write_lcmaps(uid=40001, gid=4000, sgid=4001)
        with open(os.path.join(self.directory, "lcas.db"), "w") as fh:
            fh.write(LCAS_DB)

    @property
    def config_path(self) -> str:
        return os.path.join(self.directory, "scas.yaml")

    def write_lcmaps(self, *, uid: int, gid: int, sgid: int, name: str = "lcmaps.db") -> str:
        path = os.path.join(self.directory, name)
        with open(path, "w") as fh:
            fh.write(LCMAPS_DB.format(uid=uid, gid=gid, sgid=sgid))
        return path

    def settings(self, **overrides: Any) -> dict[str, Any]:
        data: dict[str, Any] = {
            "listen": f"127.0.0.1:{free_port()}",
            "workers": 2,
            "tls": {
                "cert": self.server.cert_path,
                "key": self.server.key_path,
                "ca_dir": self.pki.certdir,
            },
            "trust": {"certdir": self.pki.certdir, "vomsdir": self.pki.vomsdir},
            "pep_allow": ["/DC=org/DC=example/CN=pep.*", USER_DN],
            "lcas": {"db": "lcas.db"},
            "lcmaps": {"db": "lcmaps.db"},
            "policies": [
                {"resource": "wn", "action": "execute-now", "lcmaps": ["glexec_get_account"]},
                {"resource": "ce", "action": "queue", "lcmaps": ["gatekeeper"]},
            ],
            "audit": {"file": self.audit},
            "issuer": "scas.test",
        }
        data.update(overrides)
        return data

    def write_config(self, **overrides: Any) -> dict[str, Any]:
        data = self.settings(**overrides)
        with open(self.config_path, "w") as fh:
            yaml.safe_dump(data, fh)
        return data

    def audit_lines(self) -> list[dict[str, Any]]:
        if not os.path.exists(self.audit):
            return []
        with open(self.audit) as fh:
            return [json.loads(line) for line in fh if line.strip()]

    def query(self, **kw: Any) -> bytes:
        """A query for the site's user, with the user's real chain."""
        with open(self.user.cert_path, "rb") as fh:
            chain = fh.read()
        kw.setdefault("subject_dn", USER_DN)
        kw.setdefault("cert_chain", chain)
        return xacml.build_request(**kw)


class Server:
    """``scas-server --config`` in a subprocess; stderr goes to ``<dir>/server.log``."""

    def __init__(
        self, site: Site, settings: dict[str, Any], config_path: str | None = None
    ) -> None:
        self.site = site
        self.settings = settings
        self.listen: str = settings["listen"]
        self.log_path = os.path.join(site.directory, "server.log")
        self.log = open(self.log_path, "ab")
        env = dict(os.environ)
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        self.proc = subprocess.Popen(
            [SCAS_SERVER, "--config", config_path or site.config_path],
            stdout=self.log, stderr=subprocess.STDOUT, env=env, cwd=site.directory,
        )  # fmt: skip
        self.wait_ready()

    @property
    def port(self) -> int:
        return int(self.listen.rsplit(":", 1)[1])

    def log_text(self) -> str:
        with open(self.log_path, errors="replace") as fh:
            return fh.read()

    def wait_ready(self, timeout: float = 30.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                code = self.proc.returncode
                raise RuntimeError(f"scas-server exited {code}:\n{self.log_text()}")
            try:
                if self.listen.startswith("unix:"):
                    status, _ = unix_request(self.listen[5:], "GET", "/health")
                else:
                    status, _ = self.request("GET", "/health")
                if status in (200, 503):
                    return
            except OSError:
                pass
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"scas-server did not come up:\n{self.log_text()}")

    def client_context(self, cert: tuple[str, str] | str | None = "pep") -> ssl.SSLContext:
        ctx = ssl.create_default_context(cafile=self.site.ca_file)
        if cert == "pep":
            ctx.load_cert_chain(self.site.pep.cert_path, self.site.pep.key_path)
        elif isinstance(cert, tuple):
            ctx.load_cert_chain(*cert)
        elif isinstance(cert, str):
            ctx.load_cert_chain(cert)
        return ctx

    def request(
        self, method: str, path: str, body: bytes | None = None,
        headers: dict[str, str] | None = None, cert: tuple[str, str] | str | None = "pep",
    ) -> tuple[int, bytes]:  # fmt: skip
        conn = http.client.HTTPSConnection(
            "localhost", self.port, context=self.client_context(cert), timeout=20
        )
        try:
            hdrs = {"Content-Type": "text/xml; charset=utf-8"} if body is not None else {}
            hdrs.update(headers or {})
            conn.request(method, path, body=body, headers=hdrs)
            resp = conn.getresponse()
            return resp.status, resp.read()
        finally:
            conn.close()

    def post(self, body: bytes, **kw: Any) -> tuple[int, bytes]:
        return self.request("POST", "/", body, **kw)

    def hup(self) -> None:
        self.proc.send_signal(signal.SIGHUP)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self.log.close()


def unix_request(
    path: str, method: str, url: str, body: bytes | None = None
) -> tuple[int, bytes]:
    """HTTP over a Unix socket with the standard library only."""

    class Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.settimeout(20)
            self.sock.connect(path)

    conn = Conn("localhost")
    try:
        headers = {"Content-Type": "text/xml; charset=utf-8"} if body is not None else {}
        conn.request(method, url, body=body, headers=headers)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()
