"""Strict parsing: mandatory SOAP headers are refused, conflicting identity attributes too.

Each case starts from real bytes (the golden vector, or build_request) edited with lxml, goes
through parse_request, and then through error_response, the reply the server sends.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from lxml import etree

from client.xacml import (
    ConflictingAttribute,
    MalformedQuery,
    MustUnderstand,
    NotSoap,
    XacmlError,
    build_request,
    error_response,
    ids,
    parse_request,
    parse_response,
    soap_fault,
)

GOLDEN = (Path(__file__).parent / "vectors" / "captured_scas_request.xml").read_bytes()
JANE = "/DC=org/DC=example/OU=People/CN=Jane Doe 12345"
NS = {"s11": ids.NS_SOAP11, "s12": ids.NS_SOAP12, "ctx": ids.NS_CONTEXT}
HEADER_NS = "urn:example:wss"


def _xml(body: bytes) -> etree._Element:
    return etree.fromstring(body)


def _with_header(body: bytes, must_understand: str | None, *, entries: int = 1) -> bytes:
    """`body` with a SOAP Header (in the envelope's namespace) holding `entries` entries."""
    root = _xml(body)
    soap_ns = etree.QName(root).namespace
    header = etree.Element(f"{{{soap_ns}}}Header")
    for n in range(entries):
        entry = etree.SubElement(header, f"{{{HEADER_NS}}}Security{n or ''}")
        entry.text = "opaque"
        if must_understand is not None:
            entry.set(f"{{{soap_ns}}}mustUnderstand", must_understand)
    root.insert(0, header)  # SOAP: the Header comes before the Body
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _soap12_request() -> bytes:
    return build_request(subject_dn=JANE, request_id="ID-12", soap12=True)


def _refused(body: bytes, kind: type[XacmlError]) -> XacmlError:
    with pytest.raises(kind) as info:
        parse_request(body)
    assert "\n" not in info.value.reason and len(info.value.reason) <= 200
    return info.value


# --- mustUnderstand ------------------------------------------------------------------------


def test_strict_must_understand_1_soap11_is_fault() -> None:
    error = _refused(_with_header(GOLDEN, "1"), MustUnderstand)
    assert error.fault is True and error.http_status == 500
    assert error.faultcode == "MustUnderstand"
    assert error.soap12 is False and error.request_id is None  # body not processed
    assert f"{{{HEADER_NS}}}Security" in error.reason
    root = _xml(error_response(error, issuer="scas"))
    assert root.xpath("/s11:Envelope/s11:Body/s11:Fault", namespaces=NS)
    assert not root.xpath("//ctx:Decision", namespaces=NS)  # a Fault, not an Indeterminate
    assert root.xpath("//faultstring/text()") == [error.reason]


def test_strict_must_understand_true_soap12_is_fault() -> None:
    error = _refused(_with_header(_soap12_request(), "true"), MustUnderstand)
    assert error.soap12 is True and error.http_status == 500
    root = _xml(error_response(error, issuer="scas"))
    assert root.xpath("/s12:Envelope/s12:Body/s12:Fault", namespaces=NS)
    texts = root.xpath("//s12:Fault/s12:Reason/s12:Text/text()", namespaces=NS)
    assert texts == [error.reason]


@pytest.mark.parametrize(
    ("body", "soap_ns"),
    [(GOLDEN, ids.NS_SOAP11), (_soap12_request(), ids.NS_SOAP12)],
    ids=["soap11", "soap12"],
)
def test_strict_must_understand_faultcode_from_exception(body: bytes, soap_ns: str) -> None:
    """The fault code is the exception's: {envelope ns}MustUnderstand in 1.1 and 1.2."""
    error = _refused(_with_header(body, "1"), MustUnderstand)
    root = _xml(soap_fault(error.reason, soap12=error.soap12, code=error.faultcode))
    code = root.xpath("//faultcode | //s12:Code/s12:Value", namespaces=NS)[0]
    prefix, _, local = code.text.partition(":")
    assert (code.nsmap[prefix], local) == (soap_ns, "MustUnderstand")


@pytest.mark.parametrize(
    ("body", "soap_ns"),
    [(GOLDEN, ids.NS_SOAP11), (_soap12_request(), ids.NS_SOAP12)],
    ids=["soap11", "soap12"],
)
def test_strict_error_response_says_must_understand(body: bytes, soap_ns: str) -> None:
    error = _refused(_with_header(body, "1"), MustUnderstand)
    root = _xml(error_response(error, issuer="scas"))
    code = root.xpath("//faultcode | //s12:Code/s12:Value", namespaces=NS)[0]
    prefix, _, local = code.text.partition(":")
    assert (code.nsmap[prefix], local) == (soap_ns, "MustUnderstand")


def test_strict_must_understand_names_first_of_several() -> None:
    error = _refused(_with_header(GOLDEN, " 1 ", entries=3), MustUnderstand)
    assert error.reason.endswith(f"{{{HEADER_NS}}}Security")
    assert "(and 2 more)" in error.reason


def test_strict_must_understand_long_namespace_is_bounded() -> None:
    body = _with_header(GOLDEN, "1").replace(HEADER_NS.encode(), b"urn:x:" + b"n" * 5000)
    error = _refused(body, MustUnderstand)
    assert "not understood" in error.reason and len(error.reason) <= 200


@pytest.mark.parametrize("value", ["0", "false", " false "])
def test_strict_must_understand_false_is_ignored(value: str) -> None:
    assert parse_request(_with_header(GOLDEN, value)) == parse_request(GOLDEN)
    soap12 = parse_request(_with_header(_soap12_request(), value))
    assert soap12.soap12 is True and soap12.subject_dn == JANE


def test_strict_header_without_must_understand_is_ignored() -> None:
    assert parse_request(_with_header(GOLDEN, None, entries=2)) == parse_request(GOLDEN)
    assert parse_request(_with_header(_soap12_request(), None)).request_id == "ID-12"


def test_strict_must_understand_in_other_namespace_is_ignored() -> None:
    """Only the envelope's own mustUnderstand counts: a 1.2 attribute in a 1.1 envelope is
    just a foreign attribute."""
    root = _xml(_with_header(GOLDEN, None))
    root[0][0].set(f"{{{ids.NS_SOAP12}}}mustUnderstand", "true")
    root[0][0].set("mustUnderstand", "1")  # unqualified: not the SOAP attribute either
    assert parse_request(etree.tostring(root)) == parse_request(GOLDEN)


def test_strict_must_understand_not_boolean_is_client_fault() -> None:
    error = _refused(_with_header(GOLDEN, "yes"), NotSoap)
    assert error.faultcode == "Client" and "mustUnderstand" in error.reason
    root = _xml(error_response(error, issuer="scas"))
    assert root.xpath("//faultcode/text()") == ["SOAP-ENV:Client"]


def test_strict_must_understand_checked_before_body() -> None:
    """A mandatory header is refused even when the body would be refused too."""
    root = _xml(_with_header(GOLDEN, "1"))
    body_el = root.find(f"{{{ids.NS_SOAP11}}}Body")
    assert body_el is not None
    body_el.clear()
    _refused(etree.tostring(root), MustUnderstand)


# --- conflicting identity attributes ----------------------------------------------------------


def _duplicate(body: bytes, attribute_id: str, value: str | None) -> bytes:
    """`body` with a second subject Attribute `attribute_id`, holding `value` (None: a copy)."""
    root = _xml(body)
    original = next(
        a
        for a in root.iter(f"{{{ids.NS_CONTEXT}}}Attribute")
        if a.get("AttributeId") == attribute_id
    )
    twin = etree.fromstring(etree.tostring(original))
    if value is not None:
        twin[0].text = value
    original.addnext(twin)
    return etree.tostring(root, xml_declaration=True, encoding="UTF-8")


def _other_chain() -> str:
    chain = "".join(
        next(
            a
            for a in _xml(GOLDEN).iter(f"{{{ids.NS_CONTEXT}}}Attribute")
            if a.get("AttributeId") == ids.ATTR_CERT_CHAIN
        ).itertext()
    )
    first_end = chain.index("-----END CERTIFICATE-----") + len("-----END CERTIFICATE-----")
    return chain[:first_end] + "\n"  # a real PEM, but not the same chain


@pytest.mark.parametrize(
    ("attribute_id", "value", "named"),
    [
        (ids.ATTR_CERT_CHAIN, _other_chain(), "cert-chain"),
        (ids.ATTR_SUBJECT_DN, "/DC=org/DC=example/OU=People/CN=Mallory", "subject-x509-id"),
    ],
    ids=["cert-chain", "subject-x509-id"],
)
def test_strict_two_different_values_is_syntax_error(
    attribute_id: str, value: str, named: str
) -> None:
    error = _refused(_duplicate(GOLDEN, attribute_id, value), ConflictingAttribute)
    assert isinstance(error, MalformedQuery)
    assert error.fault is False and error.http_status == 200
    assert error.status_code == ids.STATUS_SYNTAX_ERROR
    assert error.reason == f"two different {named} values"
    assert error.request_id == "ID-1804289383"
    reply = error_response(error, issuer="scas")
    root = _xml(reply)
    assert not root.xpath("//s11:Fault", namespaces=NS)
    assert root.xpath("//ctx:Decision/text()", namespaces=NS) == ["Indeterminate"]
    decision = parse_response(reply, expect_in_response_to="ID-1804289383")
    assert decision.decision == "Indeterminate"
    assert decision.status_code == ids.STATUS_SYNTAX_ERROR
    assert decision.status_message == error.reason


def test_strict_two_different_cert_chains_soap12_answers_soap12() -> None:
    body = _duplicate(
        GOLDEN.replace(ids.NS_SOAP11.encode(), ids.NS_SOAP12.encode()),
        ids.ATTR_CERT_CHAIN,
        _other_chain(),
    )
    error = _refused(body, ConflictingAttribute)
    assert error.soap12 is True
    root = _xml(error_response(error, issuer="scas"))
    assert root.xpath("/s12:Envelope/s12:Body", namespaces=NS)
    assert root.xpath("//ctx:Decision/text()", namespaces=NS) == ["Indeterminate"]


@pytest.mark.parametrize("attribute_id", [ids.ATTR_CERT_CHAIN, ids.ATTR_SUBJECT_DN])
def test_strict_two_identical_values_accepted_as_one(attribute_id: str) -> None:
    assert parse_request(_duplicate(GOLDEN, attribute_id, None)).cert_chain is not None
    golden = parse_request(GOLDEN)
    got = parse_request(_duplicate(GOLDEN, attribute_id, None))
    assert (got.cert_chain, got.subject_dn) == (golden.cert_chain, golden.subject_dn)


def test_strict_identical_after_stripping_surrounding_whitespace() -> None:
    body = _duplicate(GOLDEN, ids.ATTR_SUBJECT_DN, f"\n   {JANE}\t ")
    assert parse_request(body).subject_dn == JANE
    chain = "".join(
        next(
            a
            for a in _xml(GOLDEN).iter(f"{{{ids.NS_CONTEXT}}}Attribute")
            if a.get("AttributeId") == ids.ATTR_CERT_CHAIN
        ).itertext()
    )
    body = _duplicate(GOLDEN, ids.ATTR_CERT_CHAIN, "\n\n" + chain.strip() + "   \n")
    assert parse_request(body).cert_chain == parse_request(GOLDEN).cert_chain


def test_strict_inner_whitespace_difference_is_a_conflict() -> None:
    """Same identity, other bytes inside: not the same value (no DN or PEM normalisation)."""
    body = _duplicate(GOLDEN, ids.ATTR_SUBJECT_DN, JANE.replace("Jane Doe", "Jane  Doe"))
    _refused(body, ConflictingAttribute)


def test_strict_empty_copy_is_not_a_conflict() -> None:
    """A blank copy carries no value (as before): the real one is used."""
    body = _duplicate(GOLDEN, ids.ATTR_CERT_CHAIN, "   ")
    assert parse_request(body).cert_chain == parse_request(GOLDEN).cert_chain


def test_strict_two_values_in_one_attribute_element_conflict() -> None:
    root = _xml(GOLDEN)
    attribute = next(
        a
        for a in root.iter(f"{{{ids.NS_CONTEXT}}}Attribute")
        if a.get("AttributeId") == ids.ATTR_SUBJECT_DN
    )
    etree.SubElement(attribute, f"{{{ids.NS_CONTEXT}}}AttributeValue").text = "/CN=other"
    _refused(etree.tostring(root), ConflictingAttribute)
