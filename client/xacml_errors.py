"""One exception class per way a SCAS message can be refused.

Each class carries the XACML status code it maps to (`status_code`), whether the reply is a
SOAP Fault rather than an Indeterminate decision (`fault`), the SOAP 1.1 faultcode local name
for a fault (`faultcode`: Client, or MustUnderstand; SOAP 1.2 spells Client as Sender), and a
suggested HTTP status (`http_status`). The message is always one short line, safe to log and
to send back. Standard library only (the client's reply reader imports it; see xacml_expat).
"""

from __future__ import annotations

from client import xacml_ids as ids
from safetext import one_line

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

#: the longest reason a refusal carries, on the wire and in the log
REASON_LIMIT = 200


def status_text(text: str) -> str:
    """A reason as it goes on the wire: one printable line, blanks collapsed, bounded."""
    return one_line(" ".join(text.split()), REASON_LIMIT)


class XacmlError(Exception):
    """Base class: a message that cannot be used, with a one-line reason."""

    status_code: ClassVar[str] = ids.STATUS_SYNTAX_ERROR
    fault: ClassVar[bool] = True
    #: SOAP faultcode local name, used when `fault` is true
    faultcode: ClassVar[str] = "Client"
    http_status: ClassVar[int] = 400

    def __init__(self, reason: str, *, request_id: str | None = None, soap12: bool = False):
        self.reason = status_text(reason)
        #: the query ID when it was readable, so an Indeterminate can still say InResponseTo
        self.request_id = request_id
        #: answer in SOAP 1.2 when the envelope was 1.2
        self.soap12 = soap12
        super().__init__(self.reason)


class MessageTooLarge(XacmlError):
    """Body larger than the configured bound; refused before any parsing."""

    http_status = 413


class InvalidEncoding(XacmlError):
    """Body is not UTF-8 (or declares another encoding)."""


class XmlRejected(XacmlError):
    """The XML uses something we never parse: a DTD, entities, too deep, too many nodes."""


class NotSoap(XacmlError):
    """Not a SOAP envelope with a body, or not XML at all: answered with a SOAP Fault."""

    http_status = 500  # SOAP 1.1 HTTP binding: faults travel with 500


class MustUnderstand(XacmlError):
    """A SOAP header entry says mustUnderstand and we understand no header: the body is not
    processed and the fault code is MustUnderstand (SOAP 1.1 and 1.2 alike)."""

    faultcode = "MustUnderstand"
    http_status = 500  # SOAP 1.1 and 1.2 HTTP bindings: faults travel with 500


class MalformedQuery(XacmlError):
    """A SOAP envelope whose body is not a usable XACMLAuthzDecisionQuery."""

    fault = False
    http_status = 200


class MissingAttribute(MalformedQuery):
    """A well-formed query lacking an attribute needed for a decision."""

    status_code = ids.STATUS_MISSING_ATTRIBUTE


class ConflictingAttribute(MalformedQuery):
    """A single-valued identity attribute (cert-chain, subject-x509-id) sent with two
    different values: answered Indeterminate with syntax-error, never reduced to the first."""

    status_code = ids.STATUS_SYNTAX_ERROR


class MalformedResponse(XacmlError):
    """Client side: the service's reply is not a usable SAML2-XACML2 response."""

    status_code = ids.STATUS_PROCESSING_ERROR


class SoapFaultReceived(XacmlError):
    """Client side: the service answered with a SOAP Fault."""

    status_code = ids.STATUS_PROCESSING_ERROR


class ResponseMismatch(MalformedResponse):
    """Client side: the reply's InResponseTo is not the ID of the query we sent."""
