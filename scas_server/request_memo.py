"""Repeat queries without a second XML parse: bytes equal but for the query's ID and
instant, and the certificate chain.

A PEP that asks again for the same user sends the same bytes but for two attribute values
of the query element: ``ID`` (new per query) and ``IssueInstant``; and when the user's
payload brings a newly delegated proxy, the PEM text of the cert-chain. Parsing the 10 KB
envelope and walking its attributes costs about a quarter of a warm decision and a sixth
of a cold one, so the parsed :class:`~client.xacml_request.AuthzRequest` is remembered
under the query's *skeleton*: the bytes around those values.

Why a hit is exact (the tests check it against the full parse):

* A skeleton is only remembered from a body the full parser accepted, and only when the
  name ``XACMLAuthzDecisionQuery`` occurs exactly twice in it: the query's start and end
  tags. So the first ``<...XACMLAuthzDecisionQuery`` is the real start tag, not text in a
  comment, a CDATA section or a header.
* Its attributes are read with the XML grammar for a well-formed start tag (``S Name Eq
  AttValue``); the spans are the values of the unprefixed ``ID`` and ``IssueInstant``.
* A new body matches only if every byte outside those spans is equal, piece by piece, and
  each new value is 1-128 characters of ``[A-Za-z0-9_.:+-]`` without ``--``: characters
  that mean the same inside an attribute value as anywhere else (no quote, ``<``, ``&``,
  ``>``, ``]`` or comment end). The new body is then the old one with two attribute
  values changed, and parses to the old request with those two fields changed.

The chain is the span from the body's first ``-----BEGIN`` after the query tag to the end
of its last ``-----END ...-----`` marker. It is volatile only when it is at most 64 KiB of
PEM characters (``[A-Za-z0-9+/= \n-]``: no markup, so the span is one run of character
data), the body holds no ``&``, CDATA section or carriage return (so every text the parser
returns is the bytes as sent), and the parsed cert-chain value, stripped, is exactly the
span, as is the cert-chain's text as sent (not base64 of PEM). The cert-chain's text then
holds a ``-----BEGIN`` as sent, so it is the span's text: were it another, the span would
reach across markup from one to the other. A new span of the same characters, starting
with ``-----BEGIN`` and ending with ``-----``, changes that text and nothing else: the
request's ``cert_chain`` and its entry in ``attributes`` change, and the echoed Request
(``ReturnContext``) carries the new text in place of the old (``echo_edit``).

Anything else (another prefix, a third occurrence, a value with other characters, a
body the parser refused) goes through the full parse, as before.
"""

from __future__ import annotations

import re
from collections.abc import Callable

from client import xacml_ids as ids
from client.xacml_request import AuthzRequest
from credentials.lru import BoundedLRU

__all__ = ["RequestMemo"]

_QUERY = re.compile(rb"<(?:[A-Za-z_][\w.\-]*:)?XACMLAuthzDecisionQuery(?=[\s/>])")
_ATTR = re.compile(rb"""\s+([^\s=/>"'<]+)\s*=\s*(?:"([^"<]*)"|'([^'<]*)')""")
_TAG_END = re.compile(rb"\s*/?>")
_SAFE = re.compile(rb"[A-Za-z0-9_.:+\-]{1,128}")
_PEM_CHARS = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/= \n-"
_PEM_MAX = 65536
_NAME = b"XACMLAuthzDecisionQuery"
_VOLATILE = {b"ID": "request_id", b"IssueInstant": "issue_instant"}
_CHAIN = b"chain"
_BEGIN, _END = b"-----BEGIN", b"-----END"

_Skeleton = tuple[bytes, ...]  # (attribute names in order, then the pieces around them)


def _split(body: bytes) -> tuple[_Skeleton, list[bytes]] | None:
    """(skeleton, the volatile values in document order), or None if the tag is not plain."""
    found = _QUERY.search(body)
    if found is None:
        return None
    pos, spans = found.end(), []
    while (attr := _ATTR.match(body, pos)) is not None:
        if attr.group(1) in _VOLATILE:
            group = 2 if attr.group(2) is not None else 3
            spans.append((attr.group(1), attr.start(group), attr.end(group)))
        pos = attr.end()
    if _TAG_END.match(body, pos) is None or not spans:
        return None
    chain = _chain_span(body, pos)
    if chain is not None and _pem_text(body[chain[0] : chain[1]]) and _literal(body):
        spans.append((_CHAIN, *chain))
    names = b" ".join(name for name, _, _ in spans)
    pieces, values, start = [names], [], 0
    for _, begin, end in spans:
        pieces.append(body[start:begin])
        values.append(body[begin:end])
        start = end
    pieces.append(body[start:])
    return tuple(pieces), values


def _chain_span(body: bytes, after: int) -> tuple[int, int] | None:
    """(start, end) of the first ``-----BEGIN`` to the end of the last END marker."""
    start = body.find(_BEGIN, after)
    last = body.rfind(_END)
    if start == -1 or last < start:
        return None
    end = body.find(b"-----", last + len(_END))
    return None if end == -1 else (start, end + 5)


def _pem_text(span: bytes) -> bool:
    """``-----BEGIN `` ... ``-----``, at most 64 KiB, of PEM characters only (a regular
    expression says the same at three times the cost)."""
    return (len(span) <= _PEM_MAX and span.startswith(b"-----BEGIN ") and span.endswith(b"-----")
            and not span.translate(None, _PEM_CHARS))


def _literal(body: bytes) -> bool:
    """No reference, CDATA section or carriage return anywhere: every text the parser
    returns is then the very bytes between the tags."""
    return b"&" not in body and b"<![CDATA[" not in body and b"\r" not in body


def _plain(value: bytes) -> bool:
    return _SAFE.fullmatch(value) is not None and b"--" not in value


def _plain_values(split: tuple[_Skeleton, list[bytes]]) -> bool:
    """Every volatile value may be swapped in (a chain span was checked by ``_split``)."""
    names = split[0][0].split(b" ")
    return all(n == _CHAIN or _plain(v) for n, v in zip(names, split[1], strict=True))


class RequestMemo:
    """Parsed requests by skeleton; bounded (an entry holds about one body)."""

    def __init__(self, max_body: int, max_entries: int = 2048, max_bytes: int = 32 << 20) -> None:
        self.max_body = max_body  # the parser's size limit: a longer body goes to the parser
        self._known: BoundedLRU[_Skeleton, AuthzRequest] = BoundedLRU(max_entries, max_bytes)

    def parse(self, body: bytes, full: Callable[[bytes], AuthzRequest]) -> AuthzRequest:
        """``full(body)``, or the remembered request with this body's ID and instant.

        ``full`` raises for a body it refuses; nothing is remembered then.
        """
        split = _split(body) if len(body) <= self.max_body else None
        if split is not None:
            known = self._known.get(split[0])
            if known is not None and _plain_values(split):
                return self._with(known, split)
        request = full(body)
        if split is not None and self._rememberable(body, request, split):
            self._known.put(split[0], request, len(body))
        return request

    @staticmethod
    def _rememberable(body: bytes, request: AuthzRequest,
                      split: tuple[_Skeleton, list[bytes]]) -> bool:  # fmt: skip
        if body.count(_NAME) != 2 or not _plain_values(split):
            return False
        fields = _fields(split)
        chain = fields.get("cert_chain")
        if chain is not None and (
                request.cert_chain != chain.encode() + b"\n"
                or {v.strip() for v in request.values("subject", ids.ATTR_CERT_CHAIN)}
                != {chain}):
            return False  # the span is not (all of) the cert-chain's text as sent
        return request.request_id == fields.get("request_id")  # the tag is the parsed one

    @staticmethod
    def _with(known: AuthzRequest, split: tuple[_Skeleton, list[bytes]]) -> AuthzRequest:
        """A copy with the new values (what ``dataclasses.replace`` does, without running
        ``__init__`` again on fields that are already checked: a tenth of the time)."""
        fresh = object.__new__(AuthzRequest)
        fields: dict[str, object] = dict(_fields(split))
        chain = fields.pop("cert_chain", None)
        old = known.cert_chain[:-1].decode("latin-1") if known.cert_chain else None
        if isinstance(chain, str) and old is not None and chain != old:
            fields["cert_chain"] = chain.encode() + b"\n"
            fields["attributes"] = tuple(
                (c, a, v.replace(old, chain, 1) if a == ids.ATTR_CERT_CHAIN else v)
                for c, a, v in known.attributes)
            fields["echo_edit"] = (old, chain)
        fresh.__dict__.update(known.__dict__, **fields)
        return fresh


def _fields(split: tuple[_Skeleton, list[bytes]]) -> dict[str, str]:
    """The request fields the volatile values stand for (ASCII: they passed the checks)."""
    names = split[0][0].split(b" ")
    return {_VOLATILE.get(n, "cert_chain"): v.decode("latin-1")
            for n, v in zip(names, split[1], strict=True)}
