"""Parsing and building XACMLAuthzDecisionQuery messages (client/xacml_request.py)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime
from pathlib import Path

import pytest
from lxml import etree

from client.xacml import (
    MalformedQuery,
    MissingAttribute,
    NotSoap,
    build_request,
    ids,
    parse_request,
)

VECTORS = Path(__file__).parent / "vectors"
GOLDEN = (VECTORS / "captured_scas_request.xml").read_bytes()
JANE = "/DC=org/DC=example/OU=People/CN=Jane Doe 12345"
CA = "/DC=org/DC=example/CN=Example Test CA"
WN = "/DC=org/DC=example/OU=Hosts/CN=wn01.example.org"
VOMS = "/DC=org/DC=example/OU=Hosts/CN=voms.example.org"
FQANS = ("/dteam/Role=NULL/Capability=NULL", "/dteam/NL/Role=NULL/Capability=NULL")


def _golden_chain() -> bytes:
    root = etree.fromstring(GOLDEN)
    for attribute in root.iter(f"{{{ids.NS_CONTEXT}}}Attribute"):
        if attribute.get("AttributeId") == ids.ATTR_CERT_CHAIN:
            return "".join(attribute.itertext()).encode()
    raise AssertionError("golden vector has no cert-chain")


def test_request_golden_vector_parses_to_expected_values() -> None:
    req = parse_request(GOLDEN)
    assert req.request_id == "ID-1804289383"
    assert req.issue_instant == "2026-11-22T07:19:14Z"
    assert req.issuer == WN
    assert req.subject_dn == JANE
    assert req.subject_issuer == CA
    assert req.vo == "dteam"
    assert req.primary_fqan == FQANS[0]
    assert req.fqans == FQANS
    assert req.resource_type == "wn"
    assert req.resource_id == ids.RESOURCE_TYPE_PREFIX + "wn"
    assert req.action_type == "execute-now"
    assert req.host == "wn01.example.org"
    assert req.pep_dn == WN
    assert req.pilot_dn == "/DC=org/DC=example/OU=Robots/CN=pilot robot"  # typo spelling
    assert req.pep_oblig_supported == (
        ids.OBLIG_SECONDARY_GIDS,
        ids.OBLIG_UIDGID,
        ids.OBLIG_USERNAME,
    )
    assert req.return_context is True and req.input_context_only is False
    assert req.soap12 is False and req.query_ns == ids.NS_XACML_SAMLP_V2
    assert req.cert_chain is not None
    assert req.cert_chain.count(b"-----BEGIN CERTIFICATE-----") == 2
    assert req.request_element is not None
    assert etree.QName(req.request_element).localname == "Request"
    assert len(req.values("subject", ids.ATTR_FQAN)) == 2


def test_request_built_equals_golden() -> None:
    moment = datetime(2026, 11, 22, 7, 19, 14, tzinfo=UTC)
    extra = [
        ("subject", ids.ATTR_VOMS_SIGNING_SUBJECT, VOMS),
        ("subject", ids.ATTR_VOMS_SIGNING_ISSUER, CA),
        ("resource", ids.ATTR_RESOURCE_ISSUER, CA),
        ("environment", ids.ATTR_PILOT_DN_TYPO, "/DC=org/DC=example/OU=Robots/CN=pilot robot"),
        ("environment", ids.ATTR_PILOT_PRIMARY_FQAN, "/dteam/Role=pilot/Capability=NULL"),
    ]
    body = build_request(
        subject_dn=JANE,
        subject_issuer=CA,
        cert_chain=_golden_chain(),
        fqans=FQANS,
        resource="wn",
        action="execute-now",
        host="wn01.example.org",
        pep_dn=WN,
        oblig_supported=(ids.OBLIG_SECONDARY_GIDS, ids.OBLIG_UIDGID, ids.OBLIG_USERNAME),
        request_id="ID-1804289383",
        now=moment,
        extra_attributes=extra,
    )
    ours, golden = parse_request(body), parse_request(GOLDEN)
    assert sorted(ours.attributes) == sorted(golden.attributes)
    strip = {"attributes": ()}
    assert ours.__class__(**{**ours.__dict__, **strip}) == golden.__class__(
        **{**golden.__dict__, **strip}
    )


def test_request_built_defaults_roundtrip() -> None:
    body = build_request(subject_dn=JANE, fqans=["/atlas/Role=pilot"], host="wn02.example.org")
    req = parse_request(body)
    assert req.subject_dn == JANE and req.vo == "atlas"
    assert req.fqans == ("/atlas/Role=pilot",)
    assert req.pep_oblig_supported == ids.MAPPING_OBLIGATIONS
    assert req.return_context is True and req.request_id.startswith("ID-")
    assert req.resource_type == "wn" and req.action_type == "execute-now"


def test_request_soap12_envelope_accepted() -> None:
    body = GOLDEN.replace(ids.NS_SOAP11.encode(), ids.NS_SOAP12.encode())
    req = parse_request(body)
    assert req.soap12 is True and req.subject_dn == JANE


def test_request_os_protocol_namespace_accepted() -> None:
    body = GOLDEN.replace(ids.NS_XACML_SAMLP_V2.encode(), ids.NS_XACML_SAMLP_OS.encode())
    req = parse_request(body)
    assert req.query_ns == ids.NS_XACML_SAMLP_OS and req.fqans == FQANS


def test_request_prefixes_do_not_matter() -> None:
    body = (
        GOLDEN.replace(b"XACMLcontext", b"xacml-context")
        .replace(b"SOAP-ENV", b"soapenv")
        .replace(b"XACMLsamlp", b"q")
    )
    assert parse_request(body) == parse_request(GOLDEN)


def test_request_wrong_namespace_with_right_prefix_refused() -> None:
    body = GOLDEN.replace(ids.NS_CONTEXT.encode(), b"urn:example:not-xacml")
    with pytest.raises(MalformedQuery) as info:
        parse_request(body)
    assert info.value.request_id == "ID-1804289383"


def test_request_correct_pilot_spelling_accepted() -> None:
    body = GOLDEN.replace(ids.ATTR_PILOT_DN_TYPO.encode(), ids.ATTR_PILOT_DN.encode())
    assert parse_request(body).pilot_dn == "/DC=org/DC=example/OU=Robots/CN=pilot robot"


def test_request_base64_wrapped_pem_chain_accepted() -> None:
    chain = _golden_chain()
    body = build_request(subject_dn=None, cert_chain=base64.b64encode(chain))
    req = parse_request(body)
    assert req.cert_chain == chain.strip() + b"\n"
    assert req.subject_dn is None


def test_request_garbage_cert_chain_is_malformed() -> None:
    body = build_request(subject_dn=JANE, cert_chain="not a certificate")
    with pytest.raises(MalformedQuery, match="cert-chain"):
        parse_request(body)


def test_request_without_subject_is_missing_attribute() -> None:
    body = GOLDEN.replace(ids.ATTR_SUBJECT_DN.encode(), b"urn:x:other").replace(
        ids.ATTR_CERT_CHAIN.encode(), b"urn:x:other2"
    )
    with pytest.raises(MissingAttribute) as info:
        parse_request(body)
    assert info.value.status_code == ids.STATUS_MISSING_ATTRIBUTE
    assert info.value.request_id == "ID-1804289383"
    assert info.value.fault is False


def test_request_without_id_is_syntax_error() -> None:
    with pytest.raises(MalformedQuery) as info:
        parse_request(GOLDEN.replace(b'ID="ID-1804289383" ', b""))
    assert info.value.status_code == ids.STATUS_SYNTAX_ERROR
    assert "no ID" in info.value.reason


def test_request_bad_boolean_is_syntax_error() -> None:
    with pytest.raises(MalformedQuery, match="ReturnContext"):
        parse_request(GOLDEN.replace(b'ReturnContext="true"', b'ReturnContext="yes"'))


def test_request_other_body_element_is_syntax_error() -> None:
    body = (
        b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
        b'<x:Hello xmlns:x="urn:x"/></e:Body></e:Envelope>'
    )
    with pytest.raises(MalformedQuery, match="Hello"):
        parse_request(body)


def test_request_envelope_without_body_is_not_soap() -> None:
    body = b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"/>'
    with pytest.raises(NotSoap, match="Body"):
        parse_request(body)


def test_request_intermediary_subject_not_interpreted() -> None:
    body = GOLDEN.replace(
        b"<XACMLcontext:Subject>",
        b'<XACMLcontext:Subject SubjectCategory="urn:oasis:names:tc:xacml:1.0:'
        b'subject-category:intermediary-subject">',
    )
    with pytest.raises(MissingAttribute):
        parse_request(body)


def test_request_builder_refuses_control_characters() -> None:
    with pytest.raises(ValueError, match="control character"):
        build_request(subject_dn="/CN=evil\x01")


@pytest.mark.parametrize("inner", [
    "/DC=org/DC=example/<!-- a comment -->OU=People/CN=Jane Doe 12345",
    "/DC=org/DC=example/<![CDATA[OU=People]]>/CN=Jane Doe 12345",
    "/DC=org/DC=example/<x:part xmlns:x='urn:x'>OU=People</x:part>/CN=Jane Doe 12345",
])  # fmt: skip
def test_request_attribute_value_is_all_its_character_data(inner: str) -> None:
    """A value split by a comment, a CDATA section or a child element reads as one string
    (the one-text-node fast path must not drop the rest)."""
    body = build_request(subject_dn="PLACEHOLDER-DN", request_id="_mixed")
    req = parse_request(body.replace(b"PLACEHOLDER-DN", inner.encode()))
    assert req.subject_dn == "/DC=org/DC=example/OU=People/CN=Jane Doe 12345"
