"""The XACMLAuthzDecisionQuery: parse one (server side, lxml); the client's builder
(`build_request`, with `new_id` and `utc_instant`) is re-exported from :mod:`client.xacml_text`,
which writes the same bytes as text with the standard library (glexec's start-up time).

Everything is matched by namespace URI, never by prefix: the C library, OpenSAML and our own
builder all use different prefixes. Both SOAP 1.1 and 1.2 envelopes and both generations of
the SAML-XACML protocol namespace are accepted.

We understand no SOAP header entry, so any header entry whose mustUnderstand (in the
envelope's own namespace) is "1" or "true" is refused with a MustUnderstand fault before the
body is looked at; "0", "false" or no attribute leaves the header ignored.
A cert-chain or subject-x509-id sent more than once is used once if every copy is the same
text after stripping surrounding whitespace, and refused as ConflictingAttribute
(Indeterminate, syntax-error) if two copies differ, never silently reduced to the first.
The stated caller uid (x-scas-stack/caller-uid, Environment) is read the same way and must
be plain decimal, 0..4294967294, no sign, no leading zero; anything else is a MalformedQuery.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass, field

from lxml import etree

from client import xacml_ids as ids
from client.xacml_errors import (
    ConflictingAttribute,
    MalformedQuery,
    MissingAttribute,
    MustUnderstand,
    NotSoap,
    XacmlError,
)
from client.xacml_safe import Limits, parse_xml
from client.xacml_text import CATEGORIES, build_request, envelope_nsmap, new_id, utc_instant
from safetext import one_line

__all__ = [
    "CATEGORIES", "AuthzRequest", "build_request", "envelope", "new_id", "parse_request",
    "serialize", "utc_instant",
]  # fmt: skip

_SECTION = {
    f"{{{ids.NS_CONTEXT}}}Subject": "subject",
    f"{{{ids.NS_CONTEXT}}}Resource": "resource",
    f"{{{ids.NS_CONTEXT}}}Action": "action",
    f"{{{ids.NS_CONTEXT}}}Environment": "environment",
}
_ATTRIBUTE = f"{{{ids.NS_CONTEXT}}}Attribute"
_VALUE = f"{{{ids.NS_CONTEXT}}}AttributeValue"
_REQUEST = f"{{{ids.NS_CONTEXT}}}Request"
_ISSUER = f"{{{ids.NS_SAML}}}Issuer"
#: mustUnderstand spellings: SOAP 1.1 writes 1/0, SOAP 1.2 true/false/1/0; accept all in both
_MUST = ("1", "true")
_MAY_IGNORE = ("0", "false")
#: how much of a header's {namespace}name goes into the fault string
_NAME_LIMIT = 150


@dataclass(frozen=True)
class AuthzRequest:
    """What a PEP asked, as plain values.

    `fqans` lists the primary FQAN first, then the others in the order sent (no duplicates).
    `attributes` keeps every (category, AttributeId, value) in document order, so nothing
    the PEP sent is lost. `request_element` is the original xacml-context:Request, for the
    ReturnContext echo; it and ``echo_edit`` are excluded from comparisons.
    """

    request_id: str
    issue_instant: str | None = None
    issuer: str | None = None
    subject_dn: str | None = None
    subject_issuer: str | None = None
    cert_chain: bytes | None = None
    vo: str | None = None
    primary_fqan: str | None = None
    fqans: tuple[str, ...] = ()
    resource_id: str | None = None
    resource_type: str | None = None  # "wn", "ce", "se" when resource_id uses the AI prefix
    action_id: str | None = None
    action_type: str | None = None  # "execute-now", "queue", "access" likewise
    host: str | None = None
    pep_dn: str | None = None
    pilot_dn: str | None = None
    pep_oblig_supported: tuple[str, ...] = ()
    caller_uid: int | None = None  # the stated uid of the asking process (x-scas-stack)
    return_context: bool = False
    input_context_only: bool = False
    soap12: bool = False
    query_ns: str = ids.NS_XACML_SAMLP_V2
    attributes: tuple[tuple[str, str, str], ...] = ()
    request_element: etree._Element | None = field(default=None, compare=False, repr=False)
    #: (old, new): the echo is ``request_element``'s with this one text replaced (a
    #: remembered request with a new cert-chain, :mod:`scas_server.request_memo`)
    echo_edit: tuple[str, str] | None = field(default=None, compare=False, repr=False)

    def values(self, category: str, attribute_id: str) -> tuple[str, ...]:
        """All values of one attribute in one category, in the order sent."""
        return tuple(v for c, a, v in self.attributes if c == category and a == attribute_id)


def _bool_attr(query: etree._Element, name: str, request_id: str) -> bool:
    raw = query.get(name)
    if raw is None:
        return False
    value = raw.strip()
    if value in ("true", "1"):
        return True
    if value in ("false", "0"):
        return False
    raise MalformedQuery(f"{name}={raw!r} is not a boolean", request_id=request_id)


def _find_query(root: etree._Element) -> tuple[etree._Element, bool]:
    """The query element inside a SOAP envelope; NotSoap if there is no envelope/body."""
    tag = etree.QName(root)
    if tag.localname != "Envelope" or tag.namespace not in ids.SOAP_ENVELOPES:
        name = f"{{{tag.namespace or ''}}}{tag.localname}"
        raise NotSoap(f"root element is {name}, not a SOAP Envelope")
    soap_ns = tag.namespace
    bodies = root.findall(f"{{{soap_ns}}}Body")
    if len(bodies) != 1:
        raise NotSoap("SOAP envelope must hold exactly one Body")
    soap12 = soap_ns == ids.NS_SOAP12
    _refuse_mandatory_headers(root, soap_ns, soap12)
    children = [c for c in bodies[0] if isinstance(c.tag, str)]
    if not children:
        raise MalformedQuery("SOAP Body is empty", soap12=soap12)
    query = children[0]
    qname = etree.QName(query)
    if qname.localname != "XACMLAuthzDecisionQuery" or qname.namespace not in ids.QUERY_NAMESPACES:
        raise MalformedQuery(
            f"SOAP Body holds {{{qname.namespace or ''}}}{qname.localname}, "
            "expected XACMLAuthzDecisionQuery",
            soap12=soap12,
        )
    if len(children) > 1:
        raise MalformedQuery("SOAP Body holds more than one element", soap12=soap12)
    return query, soap12


def _clark(element: etree._Element) -> str:
    """{namespace}localname of an element, one printable line, bounded for a fault string."""
    qname = etree.QName(element)
    return one_line(f"{{{qname.namespace or ''}}}{qname.localname}", _NAME_LIMIT)


def _refuse_mandatory_headers(root: etree._Element, soap_ns: str, soap12: bool) -> None:
    """MustUnderstand if any header entry carries mustUnderstand true: we understand none.

    Every entry is checked whatever its actor/role: refusing a mandatory header meant for
    someone else is safer than ignoring one meant for us.
    """
    attribute = f"{{{soap_ns}}}mustUnderstand"
    refused: list[str] = []
    for header in root.iterchildren(f"{{{soap_ns}}}Header"):
        for entry in header:
            if not isinstance(entry.tag, str):
                continue
            raw = entry.get(attribute)
            if raw is None or raw.strip() in _MAY_IGNORE:
                continue
            if raw.strip() not in _MUST:
                raise NotSoap(
                    f"mustUnderstand={one_line(raw, 20)!r} is not a boolean on header "
                    f"{_clark(entry)}",
                    soap12=soap12,
                )
            refused.append(_clark(entry))
    if refused:
        more = f" (and {len(refused) - 1} more)" if len(refused) > 1 else ""
        raise MustUnderstand(
            f"mandatory SOAP header not understood{more}: {refused[0]}", soap12=soap12
        )


def _collect(request: etree._Element, request_id: str) -> list[tuple[str, str, str]]:
    found: list[tuple[str, str, str]] = []
    for section in request:
        category = _SECTION.get(section.tag) if isinstance(section.tag, str) else None
        if category is None:
            continue
        if category == "subject":
            kind = section.get("SubjectCategory", ids.SUBJECT_CATEGORY_ACCESS).strip()
            if kind != ids.SUBJECT_CATEGORY_ACCESS:
                continue  # intermediaries and the like: kept in the echo, not interpreted
        for attribute in section.iterchildren(_ATTRIBUTE):
            attribute_id = (attribute.get("AttributeId") or "").strip()
            if not attribute_id:
                raise MalformedQuery("Attribute without AttributeId", request_id=request_id)
            for value in attribute.iterchildren(_VALUE):
                found.append((category, attribute_id, _text(value)))
    return found


def _text(element: etree._Element) -> str:
    """All character data of an element (AttributeValue is mixed content)."""
    if not len(element):  # the usual case: one text node (comments are dropped at parse)
        return element.text or ""
    return "".join(str(t) for t in element.itertext())


def _pem(value: str, request_id: str) -> bytes:
    """The cert-chain is PEM text despite its base64Binary type; tolerate real base64 of PEM."""
    if "-----BEGIN" in value:
        return value.strip().encode("utf-8") + b"\n"
    try:
        decoded = base64.b64decode("".join(value.split()), validate=True)
    except (binascii.Error, ValueError):
        decoded = b""
    if b"-----BEGIN" not in decoded:
        raise MalformedQuery("cert-chain is neither PEM nor base64 of PEM", request_id=request_id)
    return decoded.strip() + b"\n"


def _uid(value: str | None, request_id: str) -> int | None:
    """A stated uid: `0` or `[1-9][0-9]*` up to MAX_UID, nothing else (no sign, no spaces)."""
    if value is None:
        return None
    digits = value.isascii() and value.isdigit() and (value == "0" or value[0] != "0")
    if not digits or len(value) > 10 or int(value) > ids.MAX_UID:
        raise MalformedQuery(
            f"caller-uid {one_line(value, 20)!r} is not a decimal uid (0..{ids.MAX_UID})",
            request_id=request_id,
        )
    return int(value)


def _suffix(value: str | None, prefix: str) -> str | None:
    if value is not None and value.startswith(prefix) and len(value) > len(prefix):
        return value[len(prefix) :]
    return None


def parse_request(
    body: bytes,
    *,
    max_bytes: int = 1 << 20,
    max_depth: int = 32,
    max_elements: int = 10_000,
) -> AuthzRequest:
    """Parse a SOAP-wrapped XACMLAuthzDecisionQuery into an AuthzRequest.

    Raises a subclass of XacmlError: MessageTooLarge / InvalidEncoding / XmlRejected / NotSoap
    / MustUnderstand (answer with a SOAP Fault whose code is the exception's `faultcode`),
    MalformedQuery / MissingAttribute / ConflictingAttribute (answer Indeterminate with the
    exception's `status_code`; `error_response` does the right thing for all of them).
    A query naming neither subject-x509-id nor cert-chain is a MissingAttribute; one naming
    two different values of either is a ConflictingAttribute.
    """
    root = parse_xml(body, Limits(max_bytes, max_depth, max_elements))
    query, soap12 = _find_query(root)
    request_id = (query.get("ID") or "").strip()
    try:
        return _interpret(query, request_id, soap12)
    except XacmlError as exc:
        exc.request_id = exc.request_id or request_id or None
        exc.soap12 = soap12
        raise


def _interpret(query: etree._Element, request_id: str, soap12: bool) -> AuthzRequest:
    if not request_id:
        raise MalformedQuery("XACMLAuthzDecisionQuery has no ID")
    version = query.get("Version")
    if version is not None and version.strip() != "2.0":
        raise MalformedQuery(f"unsupported query Version {version!r}")
    requests = query.findall(_REQUEST)
    if len(requests) != 1:
        raise MalformedQuery("query must hold exactly one xacml-context:Request")
    issuer_el = query.find(_ISSUER)
    issuer = (issuer_el.text or "").strip() or None if issuer_el is not None else None
    attributes = _collect(requests[0], request_id)
    named: dict[tuple[str, str], list[str]] = {}  # the stripped, non-empty values, in order
    for c, a, v in attributes:
        if v.strip():
            named.setdefault((c, a), []).append(v.strip())

    def first(category: str, *names: str) -> str | None:
        if len(names) > 1:  # the earliest in the document among several names
            for c, a, v in attributes:
                if c == category and a in names and v.strip():
                    return v.strip()
            return None
        values = named.get((category, names[0]))
        return values[0] if values else None

    def every(category: str, name: str) -> list[str]:
        return named.get((category, name), [])

    def single(category: str, name: str, what: str) -> str | None:
        """The one value of an identity attribute; copies must agree (ConflictingAttribute)."""
        distinct = dict.fromkeys(every(category, name))
        if len(distinct) > 1:
            raise ConflictingAttribute(f"two different {what} values", request_id=request_id)
        return next(iter(distinct), None)

    chain_value = single("subject", ids.ATTR_CERT_CHAIN, "cert-chain")
    cert_chain = _pem(chain_value, request_id) if chain_value is not None else None
    subject_dn = single("subject", ids.ATTR_SUBJECT_DN, "subject-x509-id")
    if subject_dn is None and cert_chain is None:
        raise MissingAttribute("request names neither subject-x509-id nor cert-chain")
    others = every("subject", ids.ATTR_FQAN)
    primary = first("subject", ids.ATTR_PRIMARY_FQAN) or (others[0] if others else None)
    fqans = list(dict.fromkeys(([primary] if primary else []) + others))
    resource_id = first("resource", ids.ATTR_RESOURCE_ID)
    action_id = first("action", ids.ATTR_ACTION_ID)
    caller_uid = _uid(single("environment", ids.ATTR_CALLER_UID, "caller-uid"), request_id)
    if caller_uid is None and any(
        c == "environment" and a == ids.ATTR_CALLER_UID for c, a, _ in attributes
    ):
        raise MalformedQuery("caller-uid is empty", request_id=request_id)
    return AuthzRequest(
        request_id=request_id,
        issue_instant=(query.get("IssueInstant") or "").strip() or None,
        issuer=issuer,
        subject_dn=subject_dn,
        subject_issuer=first("subject", ids.ATTR_SUBJECT_ISSUER),
        cert_chain=cert_chain,
        vo=first("subject", ids.ATTR_VO),
        primary_fqan=primary,
        fqans=tuple(fqans),
        resource_id=resource_id,
        resource_type=_suffix(resource_id, ids.RESOURCE_TYPE_PREFIX),
        action_id=action_id,
        action_type=_suffix(action_id, ids.ACTION_TYPE_PREFIX),
        host=first("resource", ids.ATTR_HOST),
        pep_dn=first("resource", ids.ATTR_RESOURCE_DN),
        pilot_dn=first("environment", ids.ATTR_PILOT_DN, ids.ATTR_PILOT_DN_TYPO),
        pep_oblig_supported=tuple(dict.fromkeys(every("environment", ids.ATTR_OBLIG_SUPPORTED))),
        caller_uid=caller_uid,
        return_context=_bool_attr(query, "ReturnContext", request_id),
        input_context_only=_bool_attr(query, "InputContextOnly", request_id),
        soap12=soap12,
        query_ns=etree.QName(query).namespace or ids.NS_XACML_SAMLP_V2,
        attributes=tuple(attributes),
        request_element=requests[0],
    )


def envelope(
    soap12: bool, query_ns: str = ids.NS_XACML_SAMLP_V2
) -> tuple[etree._Element, etree._Element]:
    """A SOAP Envelope and its Body, with every prefix we use declared once on the Envelope."""
    nsmap = envelope_nsmap(soap12, query_ns)
    soap_ns = nsmap["SOAP-ENV"]
    env = etree.Element(f"{{{soap_ns}}}Envelope", nsmap=nsmap)
    return env, etree.SubElement(env, f"{{{soap_ns}}}Body")


def serialize(env: etree._Element) -> bytes:
    """One line of UTF-8 with a double-quoted XML declaration, like gSOAP writes."""
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + etree.tostring(
        env, encoding="UTF-8", xml_declaration=False
    )
