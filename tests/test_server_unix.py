"""Node-local mode: scas-server on a Unix socket; the caller is who the kernel says."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import Server, Site, unix_request

from client import xacml
from client.xacml import ids
from scas_server import ticket as tickets
from scas_server.decision import build_pipeline
from scas_server.peer import Peer

pytestmark = pytest.mark.slow

NOBODY = 65534
TICKET_HOST = "wn1.example.org"
OBLIGATIONS = (*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET)

CLIENT = r"""
import http.client, socket, sys
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX)
        self.sock.connect(sys.argv[1])
c = C("localhost")
c.request("POST", "/", body=sys.stdin.buffer.read(), headers={"Content-Type": "text/xml"})
r = c.getresponse()
sys.stdout.buffer.write(str(r.status).encode() + b"\n" + r.read())
"""


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Server, str]]:
    site = Site(str(tmp_path_factory.mktemp("scas-unix")))
    site.write_lcmaps(uid=NOBODY, gid=NOBODY, sgid=NOBODY)  # an account that exists
    private, _, public_line = tickets.keygen(site.directory)
    sockdir = tempfile.mkdtemp(prefix="scas-sock-")
    os.chmod(sockdir, 0o755)  # nobody must reach the socket
    settings = site.write_config(
        listen=f"unix:{sockdir}/scas.sock", socket_mode="0666", tls=None,
        allowed_uids=[NOBODY], ticket={"key": str(private), "host": TICKET_HOST},
    )  # fmt: skip
    srv = Server(site, settings)
    yield site, srv, public_line
    srv.stop()
    os.unlink(f"{sockdir}/scas.sock") if os.path.exists(f"{sockdir}/scas.sock") else None
    os.rmdir(sockdir)


def _as_nobody(path: str, body: bytes) -> tuple[int, bytes]:
    out = subprocess.run(
        ["/usr/bin/python3", "-c", CLIENT, path], input=body, capture_output=True,
        user=NOBODY, group=NOBODY, extra_groups=[], timeout=30, check=True, cwd="/",
    )  # fmt: skip
    status, _, reply = out.stdout.partition(b"\n")
    return int(status), reply


def test_server_unix_socket_mode_as_configured(node: tuple[Site, Server, str]) -> None:
    _, srv, _ = node
    info = os.stat(srv.listen[5:])
    assert stat.S_ISSOCK(info.st_mode)
    assert stat.S_IMODE(info.st_mode) == 0o666


def test_server_unix_peer_uid_logged_and_bound_into_ticket(
    node: tuple[Site, Server, str],
) -> None:
    site, srv, public_line = node
    if os.geteuid() != 0:
        pytest.skip("needs root to run the client as another user (nobody)")
    status, reply = _as_nobody(srv.listen[5:], site.query(oblig_supported=OBLIGATIONS))
    decision = xacml.parse_response(reply)
    assert status == 200 and decision.decision == "Permit"
    assert decision.username == "nobody" and decision.ticket
    fields = tickets.verify_ticket(
        decision.ticket, public_line, now=time.time(), host=TICKET_HOST, caller_uid=NOBODY
    )
    assert (fields.caller_uid, fields.uid, fields.user) == (NOBODY, NOBODY, "nobody")
    assert fields.not_after - fields.not_before <= 300
    line = site.audit_lines()[-1]
    assert line["caller_uid"] == NOBODY
    assert line["pep"].startswith(f"unix:uid={NOBODY},pid=")
    assert line["ticket_nonce"] == fields.nonce


def test_server_unix_uid_not_allowed_refused(node: tuple[Site, Server, str]) -> None:
    site, srv, _ = node
    status, body = unix_request(srv.listen[5:], "POST", "/", site.query())  # not nobody
    assert status == 403
    assert f"uid {os.getuid()} is not allowed".encode() in body
    assert site.audit_lines()[-1]["caller_uid"] == os.getuid()


def test_server_unix_health(node: tuple[Site, Server, str]) -> None:
    _, srv, _ = node
    status, body = unix_request(srv.listen[5:], "GET", "/health")
    assert status == 200 and json.loads(body)["ticket_signing"] is True


def test_server_tls_peer_gets_no_ticket(tmp_path: Path) -> None:
    """Over TLS the caller's uid is unknown: a ticket would have to trust a claim."""
    site = Site(str(tmp_path))
    site.write_lcmaps(uid=NOBODY, gid=NOBODY, sgid=NOBODY)
    private, _, _ = tickets.keygen(site.directory)
    site.write_config(ticket={"key": str(private)})
    from scas_server.config import load_config

    pipeline = build_pipeline(load_config(site.config_path))
    peer = Peer("tls", subject="/DC=org/DC=example/CN=pep.example.org")
    outcome = pipeline.decide(site.query(oblig_supported=OBLIGATIONS), peer)
    decision = xacml.parse_response(outcome.body)
    assert decision.decision == "Permit" and decision.uid == NOBODY
    assert decision.ticket is None
    assert outcome.record.extra["ticket"].startswith("not issued")
