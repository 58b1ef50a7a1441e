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
import re
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

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
    answer = _Answer.of(request, decision, issuer, now, in_response_to, soap12,
                        when_none_advertised)  # fmt: skip
    if _XML_BAD.search("".join(answer.values.values())):
        return answer.render_tree()  # lxml refuses the value, with its own error
    return answer.render_template()


_Shape = tuple[Any, ...]
_ATTR_SLOTS = frozenset({"rid", "aid", "instant", "reply_to", "code"})
# the characters XML 1.0 cannot carry: lxml refuses them, so the template path must too
_XML_BAD = re.compile("[^\t\n\r\x20-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")
_SLOT = re.compile(b"(?:<!--)?\xee\x80\x80(\\w+)\xee\x80\x81(?:-->)?")
_ATTR_ESC = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;",
                           "\n": "&#10;", "\r": "&#13;", "\t": "&#9;"})  # fmt: skip
_TEXT_ESC = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "\r": "&#13;"})


def _mark(name: str) -> str:
    return f"\ue000{name}\ue001"


@dataclass
class _Answer:
    """One response as a shape (what elements there are) and the values that fill it.

    The shape's serialised form is built once with lxml, with markers where the values
    go, and cached; a response is then the template with the values escaped as libxml2
    escapes them (tests compare both renderings byte for byte).
    """

    use12: bool
    query_ns: str
    with_reply_to: bool
    with_message: bool
    obligations: tuple[tuple[str, tuple[tuple[str, str], ...]], ...]
    values: dict[str, str]
    echo: etree._Element | None
    echo_edit: tuple[str, str] | None = None  # see AuthzRequest.echo_edit

    @classmethod
    def of(cls, request: AuthzRequest | None, decision: Decision, issuer: str,
           now: datetime | None, in_response_to: str | None, soap12: bool | None,
           when_none_advertised: Sequence[str]) -> _Answer:  # fmt: skip
        instant = utc_instant(now)
        reply_to = in_response_to or (request.request_id if request else None)
        values = {"rid": new_id(), "aid": new_id(), "instant": instant, "issuer": issuer,
                  "decision": decision.decision, "code": decision.status_code}  # fmt: skip
        if reply_to:
            values["reply_to"] = reply_to
        if decision.status_message:
            values["message"] = status_text(decision.status_message)
        advertised = request.pep_oblig_supported if request else ()
        wanted = advertised or tuple(o for o in when_none_advertised if o != ids.OBLIG_TICKET)
        chosen = _obligations(decision, wanted)
        shape = [(oid, tuple((a, t) for a, t, _ in assigned)) for oid, assigned in chosen]
        texts = [text for _, assigned in chosen for _, _, text in assigned]
        values.update((f"o{i}", text) for i, text in enumerate(texts))
        echo = None
        if request is not None and request.return_context:
            echo = request.request_element
        use12 = soap12 if soap12 is not None else bool(request and request.soap12)
        return cls(use12, request.query_ns if request else ids.NS_XACML_SAMLP_V2,
                   bool(reply_to), bool(decision.status_message), tuple(shape), values, echo,
                   request.echo_edit if echo is not None and request is not None else None)

    def shape(self) -> _Shape:
        return (self.use12, self.query_ns, self.with_reply_to, self.with_message,
                self.obligations, self.echo is not None)  # fmt: skip

    def render_tree(self, values: dict[str, str] | None = None) -> bytes:
        """The response built element by element with lxml (the reference rendering)."""
        v = self.values if values is None else values
        env, body = envelope(self.use12, self.query_ns)
        response = etree.SubElement(
            body, _SAMLP + "Response", ID=v["rid"], Version="2.0", IssueInstant=v["instant"]
        )
        if self.with_reply_to:
            response.set("InResponseTo", v["reply_to"])
        etree.SubElement(response, _SAML + "Issuer", Format=ids.NAMEID_ENTITY).text = v["issuer"]
        saml_status = etree.SubElement(response, _SAMLP + "Status")
        etree.SubElement(saml_status, _SAMLP + "StatusCode", Value=ids.SAML_SUCCESS)
        assertion = etree.SubElement(
            response, _SAML + "Assertion", ID=v["aid"], Version="2.0", IssueInstant=v["instant"]
        )
        etree.SubElement(assertion, _SAML + "Issuer", Format=ids.NAMEID_ENTITY).text = v["issuer"]
        statement = etree.SubElement(assertion, _SAML + "Statement")
        # envelope() binds XACMLassertion to the assertion namespace matching the query's
        statement.set(_XSI_TYPE, "XACMLassertion:XACMLAuthzDecisionStatementType")
        result = etree.SubElement(etree.SubElement(statement, _C + "Response"), _C + "Result")
        etree.SubElement(result, _C + "Decision").text = v["decision"]
        status = etree.SubElement(result, _C + "Status")
        etree.SubElement(status, _C + "StatusCode", Value=v["code"])
        if self.with_message:
            etree.SubElement(status, _C + "StatusMessage").text = v["message"]
        texts = (f"o{i}" for i in range(len(v)))
        if self.obligations:
            obligations = etree.SubElement(result, _P + "Obligations")
            for obligation_id, assignments in self.obligations:
                obligation = etree.SubElement(
                    obligations, _P + "Obligation", ObligationId=obligation_id,
                    FulfillOn=ids.PERMIT,
                )  # fmt: skip
                for attribute_id, data_type in assignments:
                    _assign(obligation, attribute_id, data_type, v[next(texts)])
        if values is not None and self.echo is not None:  # the template's echo slot
            statement.append(etree.Comment(_mark("echo")))
        elif self.echo is not None:
            statement.append(_edited(self.echo, self.echo_edit))
        return serialize(env)

    def render_template(self) -> bytes:
        pieces = _template(self.shape(), self)
        out = []
        for i, piece in enumerate(pieces):
            if not i % 2:
                out.append(piece)
            elif piece == "echo":
                out.append(_echo(self))
            else:
                table = _ATTR_ESC if piece in _ATTR_SLOTS else _TEXT_ESC
                out.append(self.values[piece].translate(table).encode())
        return b"".join(out)


_templates: dict[_Shape, list[Any]] = {}
_local = threading.local()


def _template(shape: _Shape, answer: _Answer) -> list[Any]:
    """[bytes, slot, bytes, slot, ..., bytes] for a shape, built once."""
    found = _templates.get(shape)
    if found is None:
        marked = answer.render_tree({k: _mark(k) for k in answer.values})
        found = _SLOT.split(marked)
        found[1::2] = [name.decode() for name in found[1::2]]
        if len(_templates) < 256:
            _templates[shape] = found
    return found


#: echoes already serialised, by (SOAP 1.2?, query namespace, Request element): a server
#: that remembers parsed requests (scas_server.request_memo) hands back the same element
_echoed: dict[tuple[bool, str, etree._Element], bytes] = {}
_ECHOES_KEPT = 256


def _echo(answer: _Answer) -> bytes:
    """The echoed Request as it serialises below the response's Statement (an element is
    never changed after its parse, so its echo is serialised once), edited as asked."""
    assert answer.echo is not None
    key = (answer.use12, answer.query_ns, answer.echo)
    found = _echoed.get(key)
    if found is None:
        found = _serialise_echo(answer)
        if len(_echoed) >= _ECHOES_KEPT:
            _echoed.clear()
        _echoed[key] = found
    if answer.echo_edit is None:
        return found
    old, new = (text.encode() for text in answer.echo_edit)
    if found.count(old) != 1:  # the memo's texts are plain PEM: never seen, fail closed
        raise ValueError("the echo edit does not apply to the echoed Request")
    return found.replace(old, new)


def _edited(element: etree._Element, edit: tuple[str, str] | None) -> etree._Element:
    """A copy of ``element`` with the edit's old text replaced in the one text holding it."""
    copied = copy.deepcopy(element)
    if edit is not None:
        holders = [e for e in copied.iter() if e.text is not None and edit[0] in e.text]
        if len(holders) != 1:
            raise ValueError("the echo edit does not apply to the echoed Request")
        holders[0].text = holders[0].text.replace(*edit)  # type: ignore[union-attr]
    return copied


def _serialise_echo(answer: _Answer) -> bytes:
    """A copy is placed under an envelope with the response's namespace declarations (kept
    per thread), so lxml reconciles its namespaces exactly as in the full tree."""
    key = (answer.use12, answer.query_ns)
    holders = getattr(_local, "holders", None)
    if holders is None:
        holders = _local.holders = {}
    holder = holders.get(key)
    if holder is None:
        env, body = envelope(*key)
        holder = holders[key] = (env, etree.SubElement(body, "S"))
    env, slot = holder
    assert answer.echo is not None
    echoed = copy.deepcopy(answer.echo)
    slot.append(echoed)
    try:
        text: bytes = etree.tostring(env, encoding="UTF-8")
    finally:
        slot.remove(echoed)
    return text[text.index(b"<S>") + 3 : text.rindex(b"</S>")]


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
