"""A decision, and the client's reading of the service's reply into one: stdlib only.

In:  the reply bytes (a SOAP-wrapped samlp:Response, or a SOAP Fault), and the ID of the
     query it must answer.
Out: a `Decision` (decision, status, the uid/gid/secondary gids/username/ticket the
     obligations carried, which obligations came), or SoapFaultReceived / ResponseMismatch /
     MalformedResponse, or the parser's refusals (NotSoap, XmlRejected, ...).

Why here and not next to `build_response`: DESIGN §3 keeps the message model lxml-only, but
glexec reads one reply per payload and its start-up time is a product goal, so the client
half of the codec is standard library only (expat, :mod:`client.xacml_expat`). The server
half (:mod:`client.xacml_response`, lxml) builds what this reads; it imports `Decision` and
`parse_response` from here, and tests/test_client_lean.py checks that every reply it can
build reads back as the decision it meant.
"""

from __future__ import annotations

from client import xacml_ids as ids
from client.xacml_errors import MalformedResponse, ResponseMismatch, SoapFaultReceived, status_text
from client.xacml_expat import MAX_BYTES, Element, parse

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Sequence
    from typing import NamedTuple

    class _Fields(NamedTuple):
        decision: str
        status_code: str = ids.STATUS_OK
        status_message: str | None = None
        uid: int | None = None
        gid: int | None = None
        sgids: tuple[int, ...] = ()
        username: str | None = None
        ticket: str | None = None
        in_response_to: str | None = None
        obligations: tuple[str, ...] = ()
else:
    from collections import namedtuple

    _Fields = namedtuple(
        "_Fields",
        "decision status_code status_message uid gid sgids username ticket in_response_to "
        "obligations",
        defaults=(ids.STATUS_OK, None, None, None, (), None, None, None, ()),
    )

_C = f"{{{ids.NS_CONTEXT}}}"
_P = f"{{{ids.NS_POLICY}}}"
_SAML = f"{{{ids.NS_SAML}}}"
_SAMLP = f"{{{ids.NS_SAMLP}}}"


class Decision(_Fields):
    """A decision with its mapping, as the server answers it and the client reads it.

    `obligations` (client side) lists the obligation ids the response carried. Immutable,
    compared and hashed by value; ValueError for a decision not in ``ids.DECISIONS``.
    """

    __slots__ = ()

    if not TYPE_CHECKING:

        def __new__(cls, *args, **kwargs):
            self = super().__new__(cls, *args, **kwargs)
            if self.decision not in ids.DECISIONS:
                raise ValueError(f"unknown decision {self.decision!r}")
            return self

    @classmethod
    def permit(
        cls,
        *,
        uid: int | None = None,
        gid: int | None = None,
        sgids: Sequence[int] = (),
        username: str | None = None,
        ticket: str | None = None,
    ) -> Decision:
        return cls(
            ids.PERMIT, uid=uid, gid=gid, sgids=tuple(sgids), username=username, ticket=ticket
        )

    @classmethod
    def deny(cls, message: str | None = None) -> Decision:
        return cls(ids.DENY, status_message=message)

    @classmethod
    def indeterminate(cls, status_code: str, message: str) -> Decision:
        return cls(ids.INDETERMINATE, status_code=status_code, status_message=message)


def _int(text: str | None, what: str) -> int:
    value = (text or "").strip()
    if not (value.isascii() and value.isdigit()) or len(value) > 10:
        raise MalformedResponse(f"{what} {value!r} is not a decimal id")
    return int(value)


def _statement_results(root: Element) -> tuple[Element, list[Element]]:
    body = next((c for c in root.children if c.localname == "Body"), None)
    if root.namespace not in ids.SOAP_ENVELOPES or body is None:
        raise MalformedResponse("reply is not a SOAP envelope with a Body")
    fault = next((c for c in body.children if c.localname == "Fault"), None)
    if fault is not None:
        text = " ".join(t.strip() for t in fault.itertext() if t.strip())
        raise SoapFaultReceived(f"service answered with a SOAP Fault: {text}")
    response = body.find(_SAMLP + "Response")
    if response is None:
        raise MalformedResponse("SOAP Body holds no samlp:Response")
    statements = [
        el
        for assertion in response.iterpath(_SAML + "Assertion")
        for el in assertion.children
        if el.tag == _SAML + "Statement"
        or (
            el.localname == "XACMLAuthzDecisionStatement"
            and el.namespace in ids.STATEMENT_NAMESPACES
        )
    ]
    if len(statements) != 1:
        raise MalformedResponse(f"expected one decision statement, found {len(statements)}")
    results = list(statements[0].iterpath(_C + "Response", _C + "Result"))
    if len(results) != 1:
        raise MalformedResponse(f"expected one xacml-context:Result, found {len(results)}")
    return response, results


def parse_response(
    body: bytes, *, expect_in_response_to: str | None = None, max_bytes: int = MAX_BYTES
) -> Decision:
    """Read the service's reply into a Decision (the client half of `build_response`).

    Raises SoapFaultReceived for a fault, ResponseMismatch when InResponseTo is not
    `expect_in_response_to`, MalformedResponse for anything else unusable.
    """
    response, results = _statement_results(parse(body, max_bytes=max_bytes))
    reply_to = response.get("InResponseTo")
    if expect_in_response_to is not None and reply_to != expect_in_response_to:
        raise ResponseMismatch(f"reply is for {reply_to!r}, not {expect_in_response_to!r}")
    result = results[0]
    decision = (result.findtext(_C + "Decision") or "").strip()
    if decision not in ids.DECISIONS:
        raise MalformedResponse(f"unknown decision {decision!r}")
    code_el = result.find(_C + "Status", _C + "StatusCode")
    status_code = (code_el.get("Value") or "").strip() if code_el is not None else ids.STATUS_OK
    message = result.findtext(_C + "Status", _C + "StatusMessage")
    fields: dict[str, object] = {}
    seen: list[str] = []
    sgids: list[int] = []
    for obligation in result.iterpath(_P + "Obligations", _P + "Obligation"):
        obligation_id = (obligation.get("ObligationId") or "").strip()
        if (obligation.get("FulfillOn") or ids.PERMIT).strip() != decision:
            continue
        seen.append(obligation_id)
        for assignment in obligation.iterpath(_P + "AttributeAssignment"):
            _assign(
                obligation_id,
                (assignment.get("AttributeId") or "").strip(),
                "".join(assignment.itertext()).strip(),
                fields,
                sgids,
            )
    return Decision(
        decision,
        status_code=status_code,
        status_message=status_text(message) if message and message.strip() else None,
        sgids=tuple(sgids),
        in_response_to=reply_to,
        obligations=tuple(seen),
        **fields,  # type: ignore[arg-type]
    )


def _assign(
    obligation_id: str, attribute_id: str, text: str, fields: dict[str, object], sgids: list[int]
) -> None:
    """One AttributeAssignment into `fields` (uid, gid, username, ticket) or `sgids`."""
    if obligation_id == ids.OBLIG_UIDGID and attribute_id == ids.ATTR_POSIX_UID:
        fields["uid"] = _int(text, "posix-uid")
    elif obligation_id == ids.OBLIG_UIDGID and attribute_id == ids.ATTR_POSIX_GID:
        fields["gid"] = _int(text, "posix-gid")
    elif obligation_id == ids.OBLIG_SECONDARY_GIDS and attribute_id == ids.ATTR_POSIX_GID:
        sgids.append(_int(text, "secondary posix-gid"))
    elif obligation_id == ids.OBLIG_USERNAME and attribute_id == ids.ATTR_USERNAME:
        fields["username"] = text
    elif obligation_id == ids.OBLIG_TICKET and attribute_id == ids.ATTR_TICKET:
        fields["ticket"] = text
