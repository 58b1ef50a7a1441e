"""The SAML2-XACML2 answer: build one (server side, lxml); `Decision` and the reader are
re-exported from :mod:`client.xacml_decision`, the standard-library client half (glexec's
start-up time: see that module).

What we emit follows the strictest reading of the real C client (reference notes §1.8):
one samlp:Response with InResponseTo, one Assertion holding one saml:Statement that carries
xsi:type, and a Result that always has Decision and Status/StatusCode; an obligation only
when the PEP listed it in pep-oblig-supported (another client aborts on an unknown one).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from datetime import datetime

from lxml import etree

from client import xacml_ids as ids
from client.xacml_decision import Decision, parse_response
from client.xacml_errors import XacmlError, status_text
from client.xacml_request import AuthzRequest, envelope, new_id, serialize, utc_instant

__all__ = ["Decision", "build_response", "error_response", "parse_response", "soap_fault"]

_C = f"{{{ids.NS_CONTEXT}}}"
_P = f"{{{ids.NS_POLICY}}}"
_SAML = f"{{{ids.NS_SAML}}}"
_SAMLP = f"{{{ids.NS_SAMLP}}}"
_XSI_TYPE = f"{{{ids.NS_XSI}}}type"


def _assign(obligation: etree._Element, attribute_id: str, data_type: str, text: str) -> None:
    etree.SubElement(
        obligation, _P + "AttributeAssignment", AttributeId=attribute_id, DataType=data_type
    ).text = text


_Assignments = list[tuple[str, str, str]]  # (attribute id, data type, text)


def _obligations(decision: Decision, wanted: Sequence[str]) -> list[tuple[str, _Assignments]]:
    """(obligation id, assignments) for each obligation both known and wanted."""
    out: list[tuple[str, _Assignments]] = []
    if decision.decision != ids.PERMIT:
        return out
    if ids.OBLIG_UIDGID in wanted and decision.uid is not None and decision.gid is not None:
        out.append(
            (
                ids.OBLIG_UIDGID,
                [
                    (ids.ATTR_POSIX_UID, ids.DT_INTEGER, str(int(decision.uid))),
                    (ids.ATTR_POSIX_GID, ids.DT_INTEGER, str(int(decision.gid))),
                ],
            )
        )
    if ids.OBLIG_SECONDARY_GIDS in wanted and decision.sgids:
        gids = [(ids.ATTR_POSIX_GID, ids.DT_INTEGER, str(int(g))) for g in decision.sgids]
        out.append((ids.OBLIG_SECONDARY_GIDS, gids))
    if ids.OBLIG_USERNAME in wanted and decision.username:
        out.append((ids.OBLIG_USERNAME, [(ids.ATTR_USERNAME, ids.DT_STRING, decision.username)]))
    if ids.OBLIG_TICKET in wanted and decision.ticket:
        out.append((ids.OBLIG_TICKET, [(ids.ATTR_TICKET, ids.DT_STRING, decision.ticket)]))
    return out


def build_response(
    request: AuthzRequest | None,
    decision: Decision,
    *,
    issuer: str,
    now: datetime | None = None,
    in_response_to: str | None = None,
    soap12: bool | None = None,
    when_none_advertised: Sequence[str] = (),
) -> bytes:
    """The SOAP body answering `request` with `decision`.

    Obligations: only those in `request.pep_oblig_supported`; a PEP that advertised none gets
    `when_none_advertised` (default none; SCAS-era servers sent uidgid + secondary-gids, so a
    server may pass those for old clients). The ticket obligation is only ever sent when
    advertised. The query's xacml-context:Request is echoed when it asked ReturnContext.
    `in_response_to`/`soap12` override what `request` says (for errors raised mid-parse).
    """
    instant = utc_instant(now)
    query_ns = request.query_ns if request else ids.NS_XACML_SAMLP_V2
    use12 = soap12 if soap12 is not None else bool(request and request.soap12)
    env, body = envelope(use12, query_ns)
    response = etree.SubElement(
        body, _SAMLP + "Response", ID=new_id(), Version="2.0", IssueInstant=instant
    )
    reply_to = in_response_to or (request.request_id if request else None)
    if reply_to:
        response.set("InResponseTo", reply_to)
    etree.SubElement(response, _SAML + "Issuer", Format=ids.NAMEID_ENTITY).text = issuer
    saml_status = etree.SubElement(response, _SAMLP + "Status")
    etree.SubElement(saml_status, _SAMLP + "StatusCode", Value=ids.SAML_SUCCESS)
    assertion = etree.SubElement(
        response, _SAML + "Assertion", ID=new_id(), Version="2.0", IssueInstant=instant
    )
    etree.SubElement(assertion, _SAML + "Issuer", Format=ids.NAMEID_ENTITY).text = issuer
    statement = etree.SubElement(assertion, _SAML + "Statement")
    # envelope() binds XACMLassertion to the assertion namespace matching the query's
    statement.set(_XSI_TYPE, "XACMLassertion:XACMLAuthzDecisionStatementType")
    result = etree.SubElement(etree.SubElement(statement, _C + "Response"), _C + "Result")
    etree.SubElement(result, _C + "Decision").text = decision.decision
    status = etree.SubElement(result, _C + "Status")
    etree.SubElement(status, _C + "StatusCode", Value=decision.status_code)
    if decision.status_message:
        message = status_text(decision.status_message)
        etree.SubElement(status, _C + "StatusMessage").text = message
    advertised = request.pep_oblig_supported if request else ()
    wanted = advertised or tuple(o for o in when_none_advertised if o != ids.OBLIG_TICKET)
    chosen = _obligations(decision, wanted)
    if chosen:
        obligations = etree.SubElement(result, _P + "Obligations")
        for obligation_id, assignments in chosen:
            obligation = etree.SubElement(
                obligations, _P + "Obligation", ObligationId=obligation_id, FulfillOn=ids.PERMIT
            )
            for attribute_id, data_type, text in assignments:
                _assign(obligation, attribute_id, data_type, text)
    if request is not None and request.return_context and request.request_element is not None:
        statement.append(copy.deepcopy(request.request_element))
    return serialize(env)


def soap_fault(message: str, *, soap12: bool = False, code: str = "Client") -> bytes:
    """A SOAP Fault for a body we could not treat as a query.

    `code` is Client, Server or MustUnderstand (SOAP 1.2: Sender, Receiver, MustUnderstand).
    """
    env, body = envelope(soap12)
    soap_ns = etree.QName(env).namespace
    fault = etree.SubElement(body, f"{{{soap_ns}}}Fault")
    text = status_text(message)
    if soap12:
        value = {"Client": "Sender", "Server": "Receiver"}.get(code, code)
        code_el = etree.SubElement(fault, f"{{{soap_ns}}}Code")
        etree.SubElement(code_el, f"{{{soap_ns}}}Value").text = f"SOAP-ENV:{value}"
        reason = etree.SubElement(fault, f"{{{soap_ns}}}Reason")
        reason_text = etree.SubElement(reason, f"{{{soap_ns}}}Text")
        reason_text.set("{http://www.w3.org/XML/1998/namespace}lang", "en")
        reason_text.text = text
    else:
        etree.SubElement(fault, "faultcode").text = f"SOAP-ENV:{code}"
        etree.SubElement(fault, "faultstring").text = text
    return serialize(env)


def error_response(error: XacmlError, *, issuer: str, now: datetime | None = None) -> bytes:
    """The reply for a refused message: a SOAP Fault or an Indeterminate, per the error's kind."""
    if error.fault:
        return soap_fault(error.reason, soap12=error.soap12, code=error.faultcode)
    decision = Decision.indeterminate(error.status_code, error.reason)
    return build_response(
        None,
        decision,
        issuer=issuer,
        now=now,
        in_response_to=error.request_id,
        soap12=error.soap12,
    )
