"""Node-local mode: scas-server on a Unix socket; the caller is who the kernel says.

Tickets here are version 2 (docs/ticket.md): bound to the kernel's uid for the caller (a
stated caller-uid must equal it) and to the leaf of the verified payload chain.
"""

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
from cryptography import x509
from server_harness import Server, Site, unix_request

from client import xacml
from client.xacml import ids
from scas_server import ticket as tickets
from scas_server.config import load_config
from scas_server.decision import Pipeline, build_pipeline
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


def _user_leaf_sha256(site: Site) -> str:
    with open(site.user.cert_path, "rb") as fh:
        return tickets.leaf_sha256(x509.load_pem_x509_certificate(fh.read()))


def _needs_root() -> None:
    if os.geteuid() != 0:
        pytest.skip("needs root to run the client as another user (nobody)")


@pytest.mark.parametrize("stated", [None, NOBODY], ids=["no-stated-uid", "stated-equal"])
def test_server_unix_peer_uid_logged_and_bound_into_ticket(
    node: tuple[Site, Server, str], stated: int | None
) -> None:
    site, srv, public_line = node
    _needs_root()
    body = site.query(oblig_supported=OBLIGATIONS, caller_uid=stated)
    status, reply = _as_nobody(srv.listen[5:], body)
    decision = xacml.parse_response(reply)
    assert status == 200 and decision.decision == "Permit"
    assert decision.username == "nobody" and decision.ticket
    leaf = _user_leaf_sha256(site)
    fields = tickets.verify_ticket(
        decision.ticket, public_line, now=time.time(), host=TICKET_HOST, caller_uid=NOBODY,
        proxy_sha256=leaf,
    )  # fmt: skip
    assert fields.version == 2 and fields.proxy_sha256 == leaf
    assert (fields.caller_uid, fields.uid, fields.user) == (NOBODY, NOBODY, "nobody")
    assert fields.not_after - fields.not_before <= 300
    text = tickets.parse_text(fields.text()).text().decode().splitlines()
    assert text[0] == "version=2" and text[-1] == f"proxy_sha256={leaf}" and len(text) == 13
    line = site.audit_lines()[-1]
    assert line["caller_uid"] == NOBODY
    assert line["pep"].startswith(f"unix:uid={NOBODY},pid=")
    assert line["ticket_nonce"] == fields.nonce
    assert line["ticket_proxy_sha256"] == leaf
    assert line.get("stated_caller_uid") == stated


def test_server_unix_stated_uid_unequal_to_kernel_gets_no_ticket(
    node: tuple[Site, Server, str],
) -> None:
    """The kernel's SO_PEERCRED uid is the truth; a different stated uid loses the ticket,
    not the decision."""
    site, srv, _ = node
    _needs_root()
    body = site.query(oblig_supported=OBLIGATIONS, caller_uid=1234)
    status, reply = _as_nobody(srv.listen[5:], body)
    decision = xacml.parse_response(reply)
    assert status == 200 and decision.decision == "Permit" and decision.uid == NOBODY
    assert decision.ticket is None
    line = site.audit_lines()[-1]
    assert line["ticket"] == f"not issued: stated caller uid 1234 is not the kernel's {NOBODY}"
    assert line["stated_caller_uid"] == 1234 and line["caller_uid"] == NOBODY
    assert line.get("ticket_nonce") is None


def test_server_unix_bad_stated_uid_is_a_syntax_error(node: tuple[Site, Server, str]) -> None:
    site, srv, _ = node
    _needs_root()
    extra = [("environment", ids.ATTR_CALLER_UID, "65534.0")]
    body = site.query(oblig_supported=OBLIGATIONS, extra_attributes=extra)
    status, reply = _as_nobody(srv.listen[5:], body)
    decision = xacml.parse_response(reply)
    assert status == 200 and decision.decision == "Indeterminate" and decision.ticket is None
    assert decision.status_code == ids.STATUS_SYNTAX_ERROR


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


def _pipeline(site: Site, **overrides: object) -> Pipeline:
    site.write_lcmaps(uid=NOBODY, gid=NOBODY, sgid=NOBODY)
    private, _, _ = tickets.keygen(site.directory)
    site.write_config(ticket={"key": str(private), "host": TICKET_HOST}, **overrides)
    return build_pipeline(load_config(site.config_path))


@pytest.mark.parametrize(
    ("stated", "issued"), [(None, True), (NOBODY, True), (0, False), (NOBODY + 1, False)]
)
def test_pipeline_unix_stated_uid_must_equal_kernel_uid(
    tmp_path: Path, stated: int | None, issued: bool
) -> None:
    """The same rule in-process, with the kernel's answer given as the Peer."""
    site = Site(str(tmp_path))
    pipeline = _pipeline(site)
    body = site.query(oblig_supported=OBLIGATIONS, caller_uid=stated)
    outcome = pipeline.decide(body, Peer("unix", uid=NOBODY, gid=NOBODY, pid=1))
    decision = xacml.parse_response(outcome.body)
    assert decision.decision == "Permit" and decision.uid == NOBODY
    assert (decision.ticket is not None) == issued
    if issued:
        assert decision.ticket is not None
        fields = tickets.verify_ticket(
            decision.ticket, pipeline.signer.verify_key(),  # type: ignore[union-attr]
            now=time.time(), host=TICKET_HOST, caller_uid=NOBODY,
            proxy_sha256=_user_leaf_sha256(site),
        )  # fmt: skip
        assert outcome.record.ticket_nonce == fields.nonce
    else:
        reason = f"not issued: stated caller uid {stated} is not the kernel's {NOBODY}"
        assert outcome.record.extra["ticket"] == reason


def test_pipeline_no_ticket_without_verified_chain(tmp_path: Path) -> None:
    """trust_pep_attributes: DN and FQANs from the PEP, no chain to bind: no ticket."""
    site = Site(str(tmp_path))
    pipeline = _pipeline(site, trust_pep_attributes=True)
    body = xacml.build_request(
        subject_dn="/DC=org/DC=example/O=Users/CN=Carol Client", oblig_supported=OBLIGATIONS,
        caller_uid=NOBODY,
    )  # fmt: skip
    outcome = pipeline.decide(body, Peer("unix", uid=NOBODY, gid=NOBODY, pid=1))
    decision = xacml.parse_response(outcome.body)
    assert decision.decision == "Permit" and decision.ticket is None
    assert outcome.record.extra["unverified"] is True
    assert outcome.record.extra["ticket"] == (
        "not issued: no verified payload chain to bind (attributes taken from the PEP)"
    )
    assert outcome.record.ticket_nonce is None


def test_server_tls_peer_without_stated_uid_gets_no_ticket(tmp_path: Path) -> None:
    """Over TLS the kernel cannot say who asks: without a stated uid there is nothing to bind
    (tests/test_server_tickets.py covers the TLS allow-list over real mutual TLS)."""
    site = Site(str(tmp_path))
    pipeline = _pipeline(site)
    peer = Peer("tls", subject="/DC=org/DC=example/CN=pep.example.org")
    outcome = pipeline.decide(site.query(oblig_supported=OBLIGATIONS), peer)
    decision = xacml.parse_response(outcome.body)
    assert decision.decision == "Permit" and decision.uid == NOBODY
    assert decision.ticket is None
    reason = "not issued: no stated caller uid (caller-uid attribute) over TLS"
    assert outcome.record.extra["ticket"] == reason
