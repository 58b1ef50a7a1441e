"""The WSDL: a real zeep client loads it over HTTP and calls a real local endpoint."""

from __future__ import annotations

import threading
import wsgiref.simple_server
from collections.abc import Callable, Iterable, Iterator
from typing import Any

import pytest
from lxml import etree

from client import xacml
from client.xacml import ids

Seen = list[tuple[str, bytes]]


@pytest.fixture
def endpoint() -> Iterator[tuple[str, Seen]]:
    """A WSGI SCAS stand-in on a free loopback port: GET ?wsdl, POST a query -> Permit."""
    seen: Seen = []

    def app(environ: dict[str, Any], start: Callable[..., Any]) -> Iterable[bytes]:
        if environ["REQUEST_METHOD"] == "GET":
            start("200 OK", [("Content-Type", "text/xml")])
            return [xacml.wsdl(f"http://{environ['HTTP_HOST']}/")]
        body = environ["wsgi.input"].read(int(environ.get("CONTENT_LENGTH") or 0))
        seen.append((environ.get("HTTP_SOAPACTION", ""), body))
        try:
            request = xacml.parse_request(body)
        except xacml.XacmlError as exc:
            start(f"{exc.http_status} Refused", [("Content-Type", "text/xml")])
            return [xacml.error_response(exc, issuer="test")]
        decision = xacml.Decision.permit(uid=40001, gid=4000, sgids=(4001,), username="dteam001")
        start("200 OK", [("Content-Type", xacml.CONTENT_TYPE_SOAP11)])
        return [xacml.build_response(request, decision, issuer="test")]

    class Quiet(wsgiref.simple_server.WSGIRequestHandler):
        def log_message(self, *args: object) -> None:
            pass

    server = wsgiref.simple_server.make_server("127.0.0.1", 0, app, handler_class=Quiet)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_port}/", seen
    server.shutdown()
    server.server_close()


def test_wsdl_is_wsdl_11_document_literal() -> None:
    root = etree.fromstring(xacml.wsdl("https://scas.example.org:8443/"))
    ns = {"w": "http://schemas.xmlsoap.org/wsdl/", "s": "http://schemas.xmlsoap.org/wsdl/soap/"}
    assert root.xpath("//w:portType/w:operation/@name", namespaces=ns) == ["Authorize"]
    assert root.xpath("//s:binding/@style", namespaces=ns) == ["document"]
    assert root.xpath("//s:operation/@soapAction", namespaces=ns) == [ids.SOAP_ACTION]
    assert root.xpath("//s:address/@location", namespaces=ns) == ["https://scas.example.org:8443/"]


def test_wsdl_location_cannot_inject_markup() -> None:
    root = etree.fromstring(xacml.wsdl('https://x/"><evil/>'))
    assert not root.xpath("//evil")
    with pytest.raises(ValueError):
        xacml.wsdl("https://x/\n")


def test_wsdl_zeep_loads_and_calls(endpoint: tuple[str, Seen]) -> None:
    zeep = pytest.importorskip("zeep")
    url, seen = endpoint
    client = zeep.Client(url + "?wsdl")
    body = xacml.build_request(
        subject_dn="/DC=org/DC=example/CN=Jane", fqans=["/dteam"], host="wn01.example.org"
    )
    arguments = xacml.zeep_arguments(body)
    result = client.service.Authorize(**arguments)
    decision = xacml.parse_response(
        xacml.zeep_result_xml(result), expect_in_response_to=arguments["ID"]
    )
    assert decision.decision == "Permit"
    assert (decision.uid, decision.gid, decision.sgids, decision.username) == (
        40001,
        4000,
        (4001,),
        "dteam001",
    )
    action, sent = seen[-1]
    assert action.strip('"') == ids.SOAP_ACTION
    # what zeep put on the wire is the query we built, prefixes aside
    assert xacml.parse_request(sent) == xacml.parse_request(body)


def test_wsdl_zeep_raw_response(endpoint: tuple[str, Seen]) -> None:
    zeep = pytest.importorskip("zeep")
    url, _ = endpoint
    client = zeep.Client(url + "?wsdl")
    arguments = xacml.zeep_arguments(xacml.build_request(subject_dn=None, cert_chain="x"))
    with client.settings(raw_response=True):
        reply = client.service.Authorize(**arguments)
    decision = xacml.parse_response(reply.content)
    assert decision.decision == "Indeterminate"
    assert decision.status_code == ids.STATUS_SYNTAX_ERROR  # "x" is no certificate chain
