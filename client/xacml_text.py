"""The client's XACMLAuthzDecisionQuery, written as text: standard library only.

In:  the query's fields (as `build_request` in :mod:`client.xacml_request` always took them).
Out: the SOAP bytes, identical byte for byte to what the lxml builder wrote
     (tests/vectors/request_vectors.json was made with it; tests/test_client_lean.py replays
     it), and the same ValueError (or UnicodeError) for a value XML cannot carry.

Why text and not lxml: DESIGN §3 keeps the message model lxml-only, but glexec builds one
query per payload and its start-up time is a product goal; lxml alone cost 17 ms of imports.
This module is the client half of the codec only: the server parses queries with lxml
(:mod:`client.xacml_request`), and the round-trip tests (the server's parser reading what
this writes) keep the two halves together. `new_id` and `utc_instant` live here for the same
reason (secrets and datetime cost more to import than they do).
"""

from __future__ import annotations

import os
import time

from client import xacml_ids as ids

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from datetime import datetime

CATEGORIES = ("subject", "resource", "action", "environment")
_XML_DECLARATION = b'<?xml version="1.0" encoding="UTF-8"?>\n'
#: the C0 controls XML 1.0 cannot carry (tab, newline and carriage return it can)
_CONTROL = bytes(c for c in range(0x20) if c not in (0x09, 0x0A, 0x0D))
#: U+FFFE and U+FFFF in UTF-8: not XML characters either (libxml2 refuses them too)
_NONCHARACTERS = (b"\xef\xbf\xbe", b"\xef\xbf\xbf")
#: lxml's words for a string it refuses, kept so a caller sees the same error as before
NOT_XML = (
    "All strings must be XML compatible: Unicode or ASCII, no NULL bytes or control characters"
)
_CTX = b"XACMLcontext:"
_ATTRIBUTE = _CTX + b"Attribute"
_VALUE = _CTX + b"AttributeValue"


def utc_instant(now: datetime | None = None) -> str:
    """xsd:dateTime in UTC with second resolution, as the C library writes it."""
    if now is None:
        return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    from datetime import UTC  # already loaded: the caller made `now`

    return now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def new_id() -> str:
    """A fresh xsd:ID (an NCName): the C library's IDs are not unique, ours are."""
    return "ID-" + os.urandom(16).hex()


def utf8(value: str) -> bytes:
    """`value` as UTF-8; ValueError (lxml's message) for a character XML 1.0 cannot hold.

    UnicodeEncodeError (a ValueError) for a lone surrogate, as lxml raised it.
    """
    data = value.encode("utf-8")
    if len(data.translate(None, _CONTROL)) != len(data) or any(
        bad in data for bad in _NONCHARACTERS
    ):
        raise ValueError(NOT_XML)
    return data


def text(value: str) -> bytes:
    """Character data, escaped as libxml2 serializes it."""
    return (
        utf8(value)
        .replace(b"&", b"&amp;")
        .replace(b"<", b"&lt;")
        .replace(b">", b"&gt;")
        .replace(b"\r", b"&#13;")
    )


def attribute(value: str) -> bytes:
    """An attribute value for double quotes, escaped as libxml2 serializes it."""
    return text(value).replace(b'"', b"&quot;").replace(b"\n", b"&#10;").replace(b"\t", b"&#9;")


def envelope_nsmap(soap12: bool, query_ns: str = ids.NS_XACML_SAMLP_V2) -> dict[str, str]:
    """Every prefix a message of ours uses, declared once on the Envelope, in this order.

    The server's lxml `envelope` uses it too, so both halves write the same declarations.
    """
    nsmap = {"SOAP-ENV": ids.NS_SOAP12 if soap12 else ids.NS_SOAP11, **ids.NSMAP}
    nsmap["XACMLsamlp"] = query_ns
    nsmap["XACMLassertion"] = ids.QUERY_NAMESPACES.get(query_ns, ids.NS_XACML_SAML_V2)
    return nsmap


def envelope_open(soap12: bool, query_ns: str) -> bytes:
    """The declaration, the Envelope with every prefix we use, and the Body start tag."""
    nsmap = envelope_nsmap(soap12, query_ns)
    decls = b"".join(b' xmlns:%s="%s"' % (p.encode(), attribute(u)) for p, u in nsmap.items())
    return _XML_DECLARATION + b"<SOAP-ENV:Envelope" + decls + b"><SOAP-ENV:Body>"


ENVELOPE_CLOSE = b"</SOAP-ENV:Body></SOAP-ENV:Envelope>"


def _attribute(attribute_id: str, value: str, data_type: str = ids.DT_STRING) -> bytes:
    """One xacml-context:Attribute with one AttributeValue."""
    raw = value.encode("utf-8", "surrogatepass")
    if len(raw.translate(None, _CONTROL)) != len(raw):
        raise ValueError(f"control character in value of {attribute_id}")
    # the id is checked before the value, as lxml did (the tuple is built left to right)
    return b'<%s AttributeId="%s" DataType="%s"><%s>%s</%s></%s>' % (
        _ATTRIBUTE, attribute(attribute_id), attribute(data_type),
        _VALUE, text(value), _VALUE, _ATTRIBUTE,
    )  # fmt: skip


def _uri(value: str, prefix: str) -> str:
    return value if ":" in value else prefix + value


def _check_uid(caller_uid: int | None) -> None:
    if caller_uid is not None and (
        isinstance(caller_uid, bool) or not isinstance(caller_uid, int)
        or not 0 <= caller_uid <= ids.MAX_UID
    ):  # fmt: skip
        raise ValueError(f"caller_uid must be an integer uid in 0..{ids.MAX_UID}")


def build_request(
    *,
    subject_dn: str | None,
    cert_chain: bytes | str | None = None,
    fqans: Sequence[str] = (),
    vo: str | None = None,
    resource: str = "wn",
    action: str = "execute-now",
    host: str | None = None,
    pep_dn: str | None = None,
    oblig_supported: Sequence[str] = ids.MAPPING_OBLIGATIONS,
    subject_issuer: str | None = None,
    pilot_dn: str | None = None,
    issuer: str | None = None,
    request_id: str | None = None,
    now: datetime | None = None,
    return_context: bool = True,
    extra_attributes: Sequence[tuple[str, str, str]] = (),
    soap12: bool = False,
    query_ns: str = ids.NS_XACML_SAMLP_V2,
    caller_uid: int | None = None,
) -> bytes:
    """A SOAP body asking for a decision, shaped like the C client's (see the golden vector).

    `resource`/`action` are a short type ("wn", "execute-now") or a full URI. The first FQAN
    is sent as voms-primary-fqan and every FQAN (the primary too) as voms-fqan; `vo` defaults
    to the first FQAN's group. `issuer` (saml:Issuer) defaults to `pep_dn`.
    `caller_uid` (glexec: its own real uid) is sent as the x-scas-stack caller-uid
    environment attribute (xs:integer); SCAS binds it into a glexec ticket.
    `extra_attributes` are (category, AttributeId, value) strings appended to their section.
    Raises ValueError for a value XML cannot carry, in the order the fields are written.
    """
    if query_ns not in ids.QUERY_NAMESPACES:
        raise ValueError(f"unknown query namespace {query_ns}")
    _check_uid(caller_uid)
    instant = utc_instant(now)
    query = b"XACMLsamlp:XACMLAuthzDecisionQuery"
    out = [envelope_open(soap12, query_ns)]
    out.append(b'<%s ID="%s" Version="2.0" IssueInstant="%s"' % (
        query, attribute(request_id or new_id()), attribute(instant)
    ))  # fmt: skip
    out.append(b' ReturnContext="true">' if return_context else b">")
    if issuer or pep_dn:
        out.append(b'<saml:Issuer Format="%s">%s</saml:Issuer>' % (
            attribute(ids.NAMEID_X509), text(issuer or pep_dn or "")
        ))  # fmt: skip
    sections = _sections(
        subject_dn, subject_issuer, vo, fqans, cert_chain, resource, host, pep_dn, action,
        pilot_dn, caller_uid,
    )  # fmt: skip
    for category, attribute_id, value in extra_attributes:
        if category not in sections:
            raise ValueError(f"unknown attribute category {category!r}")
        sections[category].append(_attribute(attribute_id, value))
    environment = sections["environment"]
    environment.append(_attribute(ids.ATTR_CURRENT_DATETIME, instant, ids.DT_DATETIME))
    for obligation in dict.fromkeys(oblig_supported):
        environment.append(_attribute(ids.ATTR_OBLIG_SUPPORTED, obligation))
    if not sections["subject"]:
        raise ValueError("a request needs subject_dn or cert_chain")
    out.append(b"<%sRequest>" % _CTX)
    for name in CATEGORIES:
        tag = _CTX + name.capitalize().encode()
        out.append(b"<%s>%s</%s>" % (tag, b"".join(sections[name]), tag))
    out.append(b"</%sRequest></%s>%s" % (_CTX, query, ENVELOPE_CLOSE))
    return b"".join(out)


def _sections(
    subject_dn: str | None,
    subject_issuer: str | None,
    vo: str | None,
    fqans: Sequence[str],
    cert_chain: bytes | str | None,
    resource: str,
    host: str | None,
    pep_dn: str | None,
    action: str,
    pilot_dn: str | None,
    caller_uid: int | None,
) -> dict[str, list[bytes]]:
    """The Attribute elements of each category, written (and checked) in document order."""
    subject: list[bytes] = []
    if subject_dn:
        subject.append(_attribute(ids.ATTR_SUBJECT_DN, subject_dn))
    if subject_issuer:
        subject.append(_attribute(ids.ATTR_SUBJECT_ISSUER, subject_issuer))
    if vo is None and fqans:
        vo = fqans[0].strip("/").split("/")[0] or None
    if vo:
        subject.append(_attribute(ids.ATTR_VO, vo))
    if fqans:
        subject.append(_attribute(ids.ATTR_PRIMARY_FQAN, fqans[0]))
    for fqan in fqans:
        subject.append(_attribute(ids.ATTR_FQAN, fqan))
    if cert_chain:
        chain = cert_chain.decode("ascii") if isinstance(cert_chain, bytes) else cert_chain
        subject.append(_attribute(ids.ATTR_CERT_CHAIN, chain, ids.DT_BASE64))
    resources = [_attribute(ids.ATTR_RESOURCE_ID, _uri(resource, ids.RESOURCE_TYPE_PREFIX))]
    if host:
        resources.append(_attribute(ids.ATTR_HOST, host))
    if pep_dn:
        resources.append(_attribute(ids.ATTR_RESOURCE_DN, pep_dn))
    actions = [_attribute(ids.ATTR_ACTION_ID, _uri(action, ids.ACTION_TYPE_PREFIX))]
    environment: list[bytes] = []
    if pilot_dn:
        environment.append(_attribute(ids.ATTR_PILOT_DN, pilot_dn))
    if caller_uid is not None:
        environment.append(_attribute(ids.ATTR_CALLER_UID, str(caller_uid), ids.DT_INTEGER))
    return {"subject": subject, "resource": resources, "action": actions,
            "environment": environment}  # fmt: skip
