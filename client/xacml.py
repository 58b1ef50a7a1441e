"""The SAML2-XACML2 (SCAS / authz-interop) wire protocol, shared by server and client.

The server half is lxml; the client half is standard library only (glexec's start-up time,
a deliberate exception to DESIGN §3; the round-trip tests tie the halves together). This
module gathers both. The pieces live in:
  xacml_ids       namespaces, attribute and obligation ids, status codes
  xacml_errors    one exception per kind of refusal (each knows its XACML status code)
  xacml_safe      hardened lxml parsing (size, encoding, DTD, depth, count): the server's
  xacml_expat     the same bounds for the client's expat reader
  xacml_request   AuthzRequest, parse_request (server, lxml)
  xacml_text      build_request, new_id, utc_instant (client, text)
  xacml_response  build_response / soap_fault / error_response (server, lxml)
  xacml_decision  Decision, parse_response (client, expat)
  xacml_wsdl      wsdl(location): the WSDL 1.1 of the one Authorize operation, and
                  zeep_arguments / zeep_result_xml to use it from zeep

Server use::

    try:
        req = parse_request(body)
    except XacmlError as exc:
        return exc.http_status, error_response(exc, issuer=ME)
    return 200, build_response(req, Decision.permit(uid=..., gid=...), issuer=ME)
"""

from __future__ import annotations

from client import xacml_ids as ids
from client.xacml_errors import (
    ConflictingAttribute,
    InvalidEncoding,
    MalformedQuery,
    MalformedResponse,
    MessageTooLarge,
    MissingAttribute,
    MustUnderstand,
    NotSoap,
    ResponseMismatch,
    SoapFaultReceived,
    XacmlError,
    XmlRejected,
)
from client.xacml_request import AuthzRequest, build_request, parse_request
from client.xacml_response import (
    Decision,
    build_response,
    error_response,
    parse_response,
    soap_fault,
)
from client.xacml_safe import DEFAULT_LIMITS, Limits, parse_xml
from client.xacml_wsdl import wsdl, zeep_arguments, zeep_result_xml

CONTENT_TYPE_SOAP11 = "text/xml; charset=utf-8"
CONTENT_TYPE_SOAP12 = "application/soap+xml; charset=utf-8"

__all__ = [
    "CONTENT_TYPE_SOAP11",
    "CONTENT_TYPE_SOAP12",
    "DEFAULT_LIMITS",
    "AuthzRequest",
    "ConflictingAttribute",
    "Decision",
    "InvalidEncoding",
    "Limits",
    "MalformedQuery",
    "MalformedResponse",
    "MessageTooLarge",
    "MissingAttribute",
    "MustUnderstand",
    "NotSoap",
    "ResponseMismatch",
    "SoapFaultReceived",
    "XacmlError",
    "XmlRejected",
    "build_request",
    "build_response",
    "error_response",
    "ids",
    "parse_request",
    "parse_response",
    "parse_xml",
    "soap_fault",
    "wsdl",
    "zeep_arguments",
    "zeep_result_xml",
]
