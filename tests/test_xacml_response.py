"""Building and reading SAML2-XACML2 responses (client/xacml_response.py)."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from client.xacml import (
    Decision,
    MalformedResponse,
    MissingAttribute,
    NotSoap,
    ResponseMismatch,
    SoapFaultReceived,
    build_request,
    build_response,
    error_response,
    ids,
    parse_request,
    parse_response,
    soap_fault,
)

VECTORS = Path(__file__).parent / "vectors"
GOLDEN_REQUEST = (VECTORS / "captured_scas_request.xml").read_bytes()
GOLDEN_RESPONSE = (VECTORS / "captured_scas_response.xml").read_bytes()
NS = {
    "s11": ids.NS_SOAP11,
    "s12": ids.NS_SOAP12,
    "saml": ids.NS_SAML,
    "samlp": ids.NS_SAMLP,
    "ctx": ids.NS_CONTEXT,
    "pol": ids.NS_POLICY,
}
MAPPING = Decision.permit(
    uid=40001, gid=4000, sgids=(4001, 4002), username="dteam001", ticket="dGV4dA==.c2ln"
)
RESULT = "//saml:Assertion/saml:Statement/ctx:Response/ctx:Result"


def _xml(body: bytes) -> etree._Element:
    return etree.fromstring(body)


def _c14n(element: etree._Element) -> bytes:
    return etree.tostring(element, method="c14n", exclusive=True)


def _obligation_ids(root: etree._Element) -> list[str]:
    return root.xpath(f"{RESULT}/pol:Obligations/pol:Obligation/@ObligationId", namespaces=NS)


def _request(advertised: tuple[str, ...], **kw: object) -> bytes:
    return build_request(
        subject_dn="/DC=org/DC=example/CN=Jane", oblig_supported=advertised, **kw  # type: ignore[arg-type]
    )


def test_response_permit_has_every_required_element() -> None:
    req = parse_request(GOLDEN_REQUEST)
    root = _xml(build_response(req, MAPPING, issuer="scas.example.org"))
    responses = root.xpath("/s11:Envelope/s11:Body/samlp:Response", namespaces=NS)
    assert len(responses) == 1
    response = responses[0]
    assert response.get("InResponseTo") == "ID-1804289383"
    assert response.get("Version") == "2.0" and response.get("ID") and response.get("IssueInstant")
    assertions = response.xpath("saml:Assertion", namespaces=NS)
    assert len(assertions) == 1
    assert assertions[0].get("ID") and assertions[0].get("Version") == "2.0"
    statements = assertions[0].xpath("saml:Statement", namespaces=NS)
    assert len(statements) == 1
    prefix, _, local = statements[0].get(f"{{{ids.NS_XSI}}}type").partition(":")
    assert statements[0].nsmap[prefix] == ids.NS_XACML_SAML_V2
    assert local == "XACMLAuthzDecisionStatementType"
    assert root.xpath(f"{RESULT}/ctx:Decision/text()", namespaces=NS) == ["Permit"]
    assert root.xpath(f"{RESULT}/ctx:Status/ctx:StatusCode/@Value", namespaces=NS) == [
        ids.STATUS_OK
    ]
    # the golden query advertised uidgid, secondary-gids, username; not the ticket
    assert _obligation_ids(root) == [
        ids.OBLIG_UIDGID,
        ids.OBLIG_SECONDARY_GIDS,
        ids.OBLIG_USERNAME,
    ]


def test_response_permit_has_the_golden_shape() -> None:
    """Same elements, namespaces and order as the C library's own server emitted."""
    req = parse_request(GOLDEN_REQUEST)
    ours = _xml(build_response(req, MAPPING, issuer="scas"))
    golden = _xml(GOLDEN_RESPONSE)
    assert [e.tag for e in ours.iter()] == [e.tag for e in golden.iter()]
    uid_xpath = f"{RESULT}/pol:Obligations/pol:Obligation/pol:AttributeAssignment/text()"
    assert ours.xpath(uid_xpath, namespaces=NS) == golden.xpath(uid_xpath, namespaces=NS)


def test_response_golden_vector_parses_to_permit() -> None:
    decision = parse_response(GOLDEN_RESPONSE, expect_in_response_to="ID-1804289383")
    assert decision.decision == "Permit"
    assert decision.status_code == ids.STATUS_OK
    assert (decision.uid, decision.gid, decision.sgids) == (40001, 4000, (4001, 4002))
    assert decision.username == "dteam001"
    assert decision.ticket is None


def test_response_roundtrip_with_ticket_when_advertised() -> None:
    req = parse_request(_request((*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET)))
    decision = parse_response(build_response(req, MAPPING, issuer="scas"))
    assert decision.ticket == MAPPING.ticket
    assert (decision.uid, decision.gid, decision.sgids) == (40001, 4000, (4001, 4002))
    assert decision.in_response_to == req.request_id


def test_response_only_advertised_obligations() -> None:
    req = parse_request(_request((ids.OBLIG_USERNAME,)))
    root = _xml(build_response(req, MAPPING, issuer="scas"))
    assert _obligation_ids(root) == [ids.OBLIG_USERNAME]


def test_response_none_advertised_means_no_obligations() -> None:
    req = parse_request(_request(()))
    root = _xml(build_response(req, MAPPING, issuer="scas"))
    assert _obligation_ids(root) == []
    legacy = (ids.OBLIG_UIDGID, ids.OBLIG_SECONDARY_GIDS, ids.OBLIG_TICKET)
    root = _xml(build_response(req, MAPPING, issuer="scas", when_none_advertised=legacy))
    assert _obligation_ids(root) == [ids.OBLIG_UIDGID, ids.OBLIG_SECONDARY_GIDS]


def test_response_deny_has_status_and_no_obligations() -> None:
    req = parse_request(GOLDEN_REQUEST)
    body = build_response(req, Decision.deny("banned\nFAKE LOG LINE"), issuer="scas")
    root = _xml(body)
    assert root.xpath(f"{RESULT}/ctx:Decision/text()", namespaces=NS) == ["Deny"]
    assert root.xpath(f"{RESULT}/ctx:Status/ctx:StatusCode/@Value", namespaces=NS) == [
        ids.STATUS_OK
    ]
    assert _obligation_ids(root) == []
    decision = parse_response(body)
    assert decision.decision == "Deny" and decision.status_message == "banned FAKE LOG LINE"


def test_response_indeterminate_for_missing_attribute() -> None:
    body = GOLDEN_REQUEST.replace(ids.ATTR_SUBJECT_DN.encode(), b"urn:x:a").replace(
        ids.ATTR_CERT_CHAIN.encode(), b"urn:x:b"
    )
    with pytest.raises(MissingAttribute) as info:
        parse_request(body)
    reply = error_response(info.value, issuer="scas")
    root = _xml(reply)
    assert root.xpath("//samlp:Response/@InResponseTo", namespaces=NS) == ["ID-1804289383"]
    assert root.xpath(f"{RESULT}/ctx:Decision/text()", namespaces=NS) == ["Indeterminate"]
    decision = parse_response(reply)
    assert decision.status_code == ids.STATUS_MISSING_ATTRIBUTE
    assert decision.status_message and "subject-x509-id" in decision.status_message


def test_response_processing_error_indeterminate() -> None:
    req = parse_request(GOLDEN_REQUEST)
    decision = Decision.indeterminate(ids.STATUS_PROCESSING_ERROR, "lease store unwritable")
    got = parse_response(build_response(req, decision, issuer="scas"))
    assert got.decision == "Indeterminate" and got.status_code == ids.STATUS_PROCESSING_ERROR
    assert got.obligations == ()


def test_response_echoes_request_only_with_return_context() -> None:
    req = parse_request(GOLDEN_REQUEST)
    root = _xml(build_response(req, MAPPING, issuer="scas"))
    echoed = root.xpath("//saml:Statement/ctx:Request", namespaces=NS)
    assert len(echoed) == 1
    golden_req = _xml(GOLDEN_REQUEST).xpath("//ctx:Request", namespaces=NS)[0]
    assert _c14n(echoed[0]) == _c14n(golden_req)
    quiet = parse_request(_request(ids.MAPPING_OBLIGATIONS, return_context=False))
    root = _xml(build_response(quiet, MAPPING, issuer="scas"))
    assert root.xpath("//saml:Statement/ctx:Request", namespaces=NS) == []


def test_response_follows_soap12_and_os_namespace_of_request() -> None:
    body = GOLDEN_REQUEST.replace(ids.NS_SOAP11.encode(), ids.NS_SOAP12.encode()).replace(
        ids.NS_XACML_SAMLP_V2.encode(), ids.NS_XACML_SAMLP_OS.encode()
    )
    root = _xml(build_response(parse_request(body), MAPPING, issuer="scas"))
    assert root.xpath("/s12:Envelope/s12:Body/samlp:Response", namespaces=NS)
    statement = root.xpath("//saml:Statement", namespaces=NS)[0]
    prefix = statement.get(f"{{{ids.NS_XSI}}}type").split(":")[0]
    assert statement.nsmap[prefix] == ids.NS_XACML_SAML_OS


def test_response_soap_fault_11_and_12() -> None:
    root = _xml(soap_fault("not a SOAP message"))
    assert root.xpath("/s11:Envelope/s11:Body/s11:Fault/faultstring/text()", namespaces=NS) == [
        "not a SOAP message"
    ]
    assert root.xpath("//faultcode/text()") == ["SOAP-ENV:Client"]
    root12 = _xml(soap_fault("bad", soap12=True))
    assert root12.xpath("//s12:Fault/s12:Code/s12:Value/text()", namespaces=NS) == [
        "SOAP-ENV:Sender"
    ]
    with pytest.raises(SoapFaultReceived, match="not a SOAP message"):
        parse_response(soap_fault("not a SOAP message"))


def test_response_error_response_for_not_soap_is_fault() -> None:
    with pytest.raises(NotSoap) as info:
        parse_request(b"<hello/>")
    root = _xml(error_response(info.value, issuer="scas"))
    assert root.xpath("//s11:Fault", namespaces=NS)
    assert info.value.http_status == 500


def test_response_opensaml_variant_parses() -> None:
    """The GUMS/OpenSAML layout with other prefixes and the element-form statement."""
    body = (
        b'<soapenv:Envelope xmlns:soapenv="http://schemas.xmlsoap.org/soap/envelope/">'
        b'<soapenv:Body><samlp:Response xmlns:samlp="urn:oasis:names:tc:SAML:2.0:protocol" '
        b'ID="_r1" InResponseTo="Q1" Version="2.0" IssueInstant="2009-03-01T12:00:00Z">'
        b'<saml:Assertion xmlns:saml="urn:oasis:names:tc:SAML:2.0:assertion" ID="_a1" '
        b'Version="2.0" IssueInstant="2009-03-01T12:00:00Z">'
        b'<xs:XACMLAuthzDecisionStatement xmlns:xs="urn:oasis:xacml:2.0:saml:assertion:schema:os">'
        b'<c:Response xmlns:c="urn:oasis:names:tc:xacml:2.0:context:schema:os"><c:Result>'
        b"<c:Decision>Permit</c:Decision>"
        b'<x:Obligations xmlns:x="urn:oasis:names:tc:xacml:2.0:policy:schema:os">'
        b'<x:Obligation FulfillOn="Permit" ObligationId="http://authz-interop.org/xacml/'
        b'obligation/uidgid"><x:AttributeAssignment AttributeId="http://authz-interop.org/'
        b'xacml/attribute/posix-uid">501</x:AttributeAssignment><x:AttributeAssignment '
        b'AttributeId="http://authz-interop.org/xacml/attribute/posix-gid">20'
        b"</x:AttributeAssignment></x:Obligation></x:Obligations></c:Result></c:Response>"
        b"</xs:XACMLAuthzDecisionStatement></saml:Assertion></samlp:Response></soapenv:Body>"
        b"</soapenv:Envelope>"
    )
    decision = parse_response(body, expect_in_response_to="Q1")
    assert (decision.decision, decision.uid, decision.gid) == ("Permit", 501, 20)
    with pytest.raises(ResponseMismatch):
        parse_response(body, expect_in_response_to="Q2")


def test_response_reader_refuses_garbage_ids_and_two_statements() -> None:
    bad_uid = GOLDEN_RESPONSE.replace(b">40001<", b">-1<")
    with pytest.raises(MalformedResponse, match="posix-uid"):
        parse_response(bad_uid)
    doubled = GOLDEN_RESPONSE.replace(
        b"</saml:Statement>", b'</saml:Statement><saml:Statement xsi:type="x"/>'
    )
    with pytest.raises(MalformedResponse, match="one decision statement"):
        parse_response(doubled)


def test_response_issue_instant_is_utc() -> None:
    req = parse_request(GOLDEN_REQUEST)
    moment = datetime(2030, 1, 2, 3, 4, 5, tzinfo=UTC)
    root = _xml(build_response(req, Decision.deny(), issuer="scas", now=moment))
    assert root.xpath("//samlp:Response/@IssueInstant", namespaces=NS) == ["2030-01-02T03:04:05Z"]


HOSTILE = 'a&b<c>d"e\'f\ng\rh\ti é ☃ \U0001f600 ]]> &amp; \ue000x\ue001'
_SOAP12_OS = GOLDEN_REQUEST.replace(ids.NS_SOAP11.encode(), ids.NS_SOAP12.encode()).replace(
    ids.NS_XACML_SAMLP_V2.encode(), ids.NS_XACML_SAMLP_OS.encode())  # fmt: skip
_FOREIGN_NS = GOLDEN_REQUEST.replace(
    b"<XACMLcontext:Request>",
    b'<XACMLcontext:Request xmlns:f="urn:example:foreign" f:note="x">'
    b'<f:Extra xmlns:g="urn:example:g" g:a="1">text &amp; more</f:Extra>')  # fmt: skip


@pytest.mark.parametrize("body", [GOLDEN_REQUEST, _SOAP12_OS, _FOREIGN_NS,
                                  _request(ids.MAPPING_OBLIGATIONS, return_context=False),
                                  _request((ids.OBLIG_TICKET, ids.OBLIG_USERNAME))])  # fmt: skip
@pytest.mark.parametrize("decision", [
    MAPPING, Decision.permit(uid=1, gid=2, sgids=(), username=HOSTILE, ticket=HOSTILE),
    Decision.deny(HOSTILE), Decision.indeterminate(ids.STATUS_PROCESSING_ERROR, HOSTILE),
])  # fmt: skip
def test_response_template_is_byte_identical_to_the_lxml_tree(body: bytes,
                                                              decision: Decision) -> None:
    """Responses are filled into a cached template; every shape and every character that
    needs escaping must come out exactly as lxml builds and escapes it."""
    from client.xacml_response import _Answer

    request = parse_request(body.replace(b'ID="ID-1804289383"', b'ID="q&amp;&lt;&quot;\'"'))
    for issuer, legacy in ((HOSTILE, ()), ("scas", ids.MAPPING_OBLIGATIONS)):
        answer = _Answer.of(request, decision, issuer, None, None, None, legacy)
        assert answer.render_template() == answer.render_tree()
        assert answer.render_template() == answer.render_tree()  # the cached template too
    mid_parse = _Answer.of(None, decision, "scas", None, "early&<id", True, ())
    assert mid_parse.render_template() == mid_parse.render_tree()


def test_response_value_xml_cannot_carry_is_refused_as_before() -> None:
    """A control character in a value: lxml's refusal, not a response with it inside."""
    with pytest.raises(ValueError):
        build_response(parse_request(GOLDEN_REQUEST), Decision.deny("bell\x07"), issuer="s\x07")
