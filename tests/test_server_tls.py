"""scas-server over real mutual TLS: a real gunicorn (2 workers) on a loopback port."""

from __future__ import annotations

import http.client
import json
import os
import re
import socket
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import requests
from cryptography import x509
from lxml import etree
from server_harness import HERE, PEP_DN, ROGUE_DN, USER_DN, Server, Site

from client import xacml
from client.xacml import ids

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    site = Site(str(tmp_path_factory.mktemp("scas-tls")))
    revoked = site.pki.host("revoked.example.org", "/DC=org/DC=example/CN=pep.revoked")
    site.revoked = revoked  # type: ignore[attr-defined]
    with open(revoked.cert_path, "rb") as fh:
        site.pki.revoke(x509.load_pem_x509_certificate(fh.read()))
    return site


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Server]:
    srv = Server(site, site.write_config())
    yield srv
    srv.stop()


def _decision(body: bytes) -> xacml.Decision:
    return xacml.parse_response(body)


def test_server_permit_for_mapped_user(server: Server, site: Site) -> None:
    status, body = server.post(site.query())
    decision = _decision(body)
    assert status == 200
    assert decision.decision == "Permit"
    assert (decision.uid, decision.gid, decision.sgids) == (40001, 4000, (4001,))
    line = site.audit_lines()[-1]
    assert line["pep"] == PEP_DN and line["dn"] == USER_DN
    assert line["decision"] == "Permit" and line["uid"] == 40001
    assert line["action"] == "execute-now" and line["latency_ms"] > 0


def test_server_gatekeeper_policy_chosen_by_action(server: Server, site: Site) -> None:
    status, body = server.post(site.query(resource="ce", action="queue"))
    decision = _decision(body)
    assert status == 200 and decision.decision == "Deny"
    assert decision.status_message == "not authorized"  # the class; the detail is audited
    assert "lcmaps_dummy_bad" in site.audit_lines()[-1]["reason"]


def test_server_unrouted_action_denied(server: Server, site: Site) -> None:
    _, body = server.post(site.query(resource="se", action="access"))
    decision = _decision(body)
    assert decision.decision == "Deny"
    assert decision.status_message == "not authorized"
    assert site.audit_lines()[-1]["reason"] == "no policy for resource se action access"


def test_server_untrusted_user_chain_denied(server: Server, site: Site, tmp_path: Path) -> None:
    from testkit.pki import TestPKI

    other = TestPKI(tmp_path / "other", ca_dn="/DC=org/DC=evil/CN=Evil CA", reuse_keys=True)
    mallory = other.user("mallory", USER_DN)
    with open(mallory.cert_path, "rb") as fh:
        _, body = server.post(site.query(cert_chain=fh.read()))
    decision = _decision(body)
    assert decision.decision == "Deny"
    assert decision.status_message == "not authorized"
    assert site.audit_lines()[-1]["reason"].startswith("credential refused:")
    assert decision.uid is None


def test_server_pep_not_on_allow_list_refused(server: Server, site: Site) -> None:
    status, body = server.post(site.query(), cert=(site.rogue.cert_path, site.rogue.key_path))
    assert status == 403
    assert f"PEP {ROGUE_DN} is not on the allow-list".encode() in body
    line = site.audit_lines()[-1]
    assert line["decision"] == "refused" and line["pep"] == ROGUE_DN
    assert line["http_status"] == 403


def test_server_client_without_certificate_refused_at_tls(server: Server) -> None:
    with pytest.raises((ssl.SSLError, ConnectionError, http.client.RemoteDisconnected)):
        server.request("GET", "/health", cert=None)


def test_server_revoked_pep_certificate_refused(server: Server, site: Site) -> None:
    """Revocation is checked by the application against the CRLs on disk (so a new CRL
    counts at once), before the body is read: 403 and an audit line."""
    revoked = site.revoked  # type: ignore[attr-defined]
    status, body = server.post(site.query(), cert=(revoked.cert_path, revoked.key_path))
    assert status == 403 and b"revoked" in body.lower()
    line = site.audit_lines()[-1]
    assert line["decision"] == "refused" and "revoked" in line["reason"]


def test_server_proxy_certificate_as_client_accepted(server: Server, site: Site) -> None:
    proxy = site.pki.proxy(site.user)
    status, body = server.post(site.query(), cert=proxy)
    assert status == 200 and _decision(body).decision == "Permit"
    assert site.audit_lines()[-1]["pep"] == USER_DN  # the identity behind the proxy


def test_server_golden_vector_well_formed_response(server: Server) -> None:
    with open(os.path.join(HERE, "vectors", "captured_scas_request.xml"), "rb") as fh:
        body = fh.read()
    status, reply = server.post(body)
    assert status == 200
    decision = xacml.parse_response(reply, expect_in_response_to="ID-1804289383")
    # the vector's chain comes from a CA this site does not trust
    assert decision.decision == "Deny"
    root = etree.fromstring(reply)
    statement = root.find(f".//{{{ids.NS_SAML}}}Statement")
    assert statement is not None and statement.get(f"{{{ids.NS_XSI}}}type")
    assert root.find(f".//{{{ids.NS_CONTEXT}}}Result/{{{ids.NS_CONTEXT}}}Status") is not None


def test_server_wsdl_on_any_path(server: Server) -> None:
    for path in ("/?wsdl", "/gums/services/GUMSXACMLAuthorizationServicePort?wsdl"):
        status, body = server.request("GET", path)
        assert status == 200
        assert b"XACMLAuthorizationPortType" in body


def test_server_zeep_client_from_live_wsdl(server: Server, site: Site) -> None:
    import zeep
    from zeep.transports import Transport

    session = requests.Session()
    session.cert = (site.pep.cert_path, site.pep.key_path)
    session.verify = site.ca_file
    session.trust_env = False  # REQUESTS_CA_BUNDLE would override verify
    client = zeep.Client(f"https://localhost:{server.port}/?wsdl",
                         transport=Transport(session=session))
    request_el = etree.fromstring(site.query()).find(f".//{{{ids.NS_CONTEXT}}}Request")
    result = client.service.Authorize(
        ID="ID-zeep-1", Version="2.0", IssueInstant="2026-01-01T00:00:00Z",
        _value_1=[request_el],
    )
    text = etree.tostring(result._value_1[-1]) if result._value_1 else b""
    assert b"<XACMLcontext:Decision>Permit</XACMLcontext:Decision>" in text or (
        b">Permit<" in text
    )
    assert site.audit_lines()[-1]["request_id"] == "ID-zeep-1"


def test_server_health_reports_plugins_and_age(server: Server) -> None:
    status, body = server.request("GET", "/health")
    report = json.loads(body)
    assert status == 200 and report["ok"] is True
    assert "lcmaps_dummy_good.mod" in report["plugins"]["lcmaps"]
    assert report["config_age_seconds"] >= 0
    assert report["lease_stores"] == []  # the dummy plugins write no lease store
    assert report["audit"] == {"writable": True, "error": None}
    assert report["lcas"] == {"plugins": 1, "failed": []}


def _metric(text: str, name: str) -> float:
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? (\S+)$", text, re.M))


def test_server_metrics_summed_over_workers(server: Server, site: Site) -> None:
    _, before = server.request("GET", "/metrics")
    start = _metric(before.decode(), "scas_decisions_total")
    already = len(site.audit_lines())
    sent = 0
    while sent < 10 or len({a["worker"] for a in site.audit_lines()[already:]}) < 2:
        assert server.post(site.query())[0] == 200
        sent += 1
        assert sent < 200, "only one worker ever answered"
    seen = set()
    for _ in range(6):  # each scrape may land on either worker: all must agree
        _, text = server.request("GET", "/metrics")
        seen.add(_metric(text.decode(), "scas_decisions_total") - start)
    assert seen == {float(sent)}


def test_server_wrong_content_type_refused(server: Server, site: Site) -> None:
    status, _ = server.post(site.query(), headers={"Content-Type": "application/json"})
    assert status == 415
    assert server.post(site.query())[0] == 200


def test_server_empty_body_refused(server: Server) -> None:
    status, body = server.post(b"")
    assert status == 400 and b"empty body" in body


def test_server_huge_body_refused_before_reading(server: Server, site: Site) -> None:
    ctx = server.client_context()
    started = time.monotonic()
    with socket.create_connection(("localhost", server.port), timeout=20) as raw:
        with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
            size = 50 * 1024 * 1024
            tls.sendall(
                b"POST / HTTP/1.1\r\nHost: localhost\r\nContent-Type: text/xml\r\n"
                + f"Content-Length: {size}\r\n\r\n".encode() + b"<" * 65536
            )
            reply = tls.recv(4096)
    assert reply.startswith(b"HTTP/1.1 413")
    assert time.monotonic() - started < 5
    assert server.post(site.query())[0] == 200


def test_server_not_soap_gets_fault(server: Server) -> None:
    status, body = server.post(b"<hello/>")
    assert status == 500 and b"Fault" in body


def test_server_monitoring_is_for_operators(server: Server, site: Site) -> None:
    """/health, /metrics and the WSDL answer only PEPs and the monitoring allow-list. A
    trusted certificate that is not on either (another host, a revoked PEP) gets 403 and
    nothing that names a file, a plugin or a count."""
    rogue = (site.rogue.cert_path, site.rogue.key_path)
    revoked = (site.revoked.cert_path, site.revoked.key_path)  # type: ignore[attr-defined]
    for cert in (rogue, revoked):
        for path in ("/health", "/metrics", "/?wsdl"):
            status, body = server.request("GET", path, cert=cert)
            assert (status, body) == (403, b"forbidden\n"), path
    assert server.request("GET", "/health")[0] == 200  # the PEP itself may look


def test_server_metric_labels_are_a_fixed_set(server: Server, site: Site) -> None:
    """What a caller sends (a content type, an action) never becomes a metric label."""
    odd = "application/x-" + "z" * 30
    assert server.post(site.query(), headers={"Content-Type": odd})[0] == 415
    assert server.post(site.query(action="bogus-action-xyz"))[0] == 200
    _, text = server.request("GET", "/metrics")
    assert b"zzzz" not in text and b"bogus-action-xyz" not in text
    assert b'reason="content-type"' in text and b'action="other"' in text
