"""The request memo (scas_server/request_memo.py) against the full parse.

The memo answers a repeat query without parsing it: it hands back a remembered
AuthzRequest with the new ID and IssueInstant. That is only right if a hit is exactly what
`parse_request` would have returned, so every test here compares the memo's answer with
the reference parser's on the same bytes, and counts the calls of the full parser to tell
a real hit from a miss (a test that only compared results would pass with no memo at all).
"""

from __future__ import annotations

import base64
import re
import string
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import partial
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from client import xacml
from client.xacml import AuthzRequest, MessageTooLarge, ids
from scas_server.request_memo import RequestMemo

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
JURGEN = "/DC=org/DC=example/O=Users/CN=Jürgen Müller"
WN = "/DC=org/DC=example/OU=Hosts/CN=wn01.example.org"
PEM = "-----BEGIN CERTIFICATE-----\nMIIBfakefakefake\n-----END CERTIFICATE-----\n"
NOW = datetime(2024, 5, 6, 7, 8, 9, tzinfo=UTC)
INSTANT = "2024-05-06T07:08:09Z"
MAX_BODY = 1 << 20  # parse_request's default max_bytes
GOLDEN = (Path(__file__).parent / "vectors" / "captured_scas_request.xml").read_bytes()

Q = b"XACMLsamlp:XACMLAuthzDecisionQuery"
_START = re.compile(rb"<XACMLsamlp:XACMLAuthzDecisionQuery\s[^>]*>")
_MARK = re.compile(rb"\{id\}|\{instant\}")
PLAIN_CHARS = string.ascii_letters + string.digits + "_.:+-"

Outcome = AuthzRequest | tuple[type[BaseException], str]


class Counting:
    """parse_request, counting its calls: a call means the memo missed."""

    def __init__(self, max_bytes: int = MAX_BODY) -> None:
        self.calls = 0
        self.max_bytes = max_bytes

    def __call__(self, body: bytes) -> AuthzRequest:
        self.calls += 1
        return xacml.parse_request(body, max_bytes=self.max_bytes)


@dataclass(frozen=True)
class Shape:
    """A query with ``{id}`` and ``{instant}`` where the query element's values go."""

    name: str
    template: bytes

    def body(self, request_id: str = "_one", instant: str = INSTANT) -> bytes:
        values = {b"{id}": request_id.encode(), b"{instant}": instant.encode()}
        return _MARK.sub(lambda m: values[m.group()], self.template)

    def volatile(self, request_id: str, instant: str) -> list[str]:
        """The values this shape actually carries."""
        return [request_id if m == b"{id}" else instant for m in _MARK.findall(self.template)]

    def outside(self, request_id: str, instant: str) -> list[tuple[int, int]]:
        """(start, end) in body(request_id, instant) of the bytes outside the two values."""
        spans, pos, shift = [], 0, 0
        for mark in _MARK.finditer(self.template):
            spans.append((pos + shift, mark.start() + shift))
            value = request_id if mark.group() == b"{id}" else instant
            shift += len(value.encode()) - len(mark.group())
            pos = mark.end()
        spans.append((pos + shift, len(self.template) + shift))
        return spans


def _base(**fields: object) -> bytes:
    kwargs: dict = {"subject_dn": ALICE, "resource": "ce", "action": "queue", **fields}
    return xacml.build_request(request_id="_one", now=NOW, **kwargs)


def _retag(base: bytes, start: bytes, end: bytes | None = None) -> bytes:
    """`base` with its query start tag (and optionally end tag) replaced."""
    found = _START.search(base)
    assert found is not None
    out = base[: found.start()] + start + base[found.end() :]
    if end is not None:
        out = out.replace(b"</" + Q + b">", end)
    return out


DOUBLE = b"<" + Q + b' ID="{id}" Version="2.0" IssueInstant="{instant}" ReturnContext="true">'
SINGLE = b"<" + Q + b" ID='{id}' Version='2.0' IssueInstant='{instant}' ReturnContext='true'>"
HEADER = (
    b'<SOAP-ENV:Header><x:h xmlns:x="urn:x" SOAP-ENV:mustUnderstand="0">note</x:h>'
    b"</SOAP-ENV:Header><SOAP-ENV:Body>"
)


def _golden() -> bytes:
    out = GOLDEN.replace(b'ID="ID-1804289383"', b'ID="{id}"')
    out = out.replace(b'IssueInstant="2026-11-22T07:19:14Z"', b'IssueInstant="{instant}"')
    assert out.count(b"{id}") == 1 and out.count(b"{instant}") == 1
    return out


SHAPES = [
    Shape("double", _retag(_base(), DOUBLE)),
    Shape("single-quoted", _retag(_base(), SINGLE)),
    Shape(
        "reordered",
        _retag(
            _base(),
            b"<"
            + Q
            + (b' IssueInstant="{instant}" ReturnContext="true" Version="2.0" ID="{id}">'),
        ),
    ),
    Shape(
        "spaced",
        _retag(
            _base(),
            b"<"
            + Q
            + (
                b'\n\tID \t=\n \'{id}\'  Version = "2.0"\r\n  IssueInstant= "{instant}"'
                b' ReturnContext ="true"\n>'
            ),
        ),
    ),
    Shape("id-only", _retag(_base(), b"<" + Q + b' ID="{id}" Version="2.0">')),
    Shape(
        "default-namespace",
        _retag(
            _base(),
            b'<XACMLAuthzDecisionQuery xmlns="%s" IssueInstant="{instant}" ID="{id}">'
            % ids.NS_XACML_SAMLP_V2.encode(),
            b"</XACMLAuthzDecisionQuery>",
        ),
    ),
    Shape("ignored-header", _retag(_base(), DOUBLE).replace(b"<SOAP-ENV:Body>", HEADER)),
    Shape(
        "rich-soap12",
        _retag(
            _base(
                subject_dn=JURGEN,
                cert_chain=PEM,
                fqans=["/dteam/Role=NULL/Capability=NULL"],
                pep_dn=WN,
                host="wn01.example.org",
                soap12=True,
                caller_uid=1000,
                extra_attributes=[("resource", "urn:example:x", "y")],
            ),
            DOUBLE,
        ),
    ),
    Shape("golden", _golden()),
]
DOUBLE_SHAPE, SINGLE_SHAPE, HEADER_SHAPE = SHAPES[0], SHAPES[1], SHAPES[6]
assert HEADER_SHAPE.name == "ignored-header"

#: new plain values: other lengths, every plain character, the query's name as a value
NEW_VALUES = [
    ("_two", "2024-05-06T07:08:10Z"),
    ("x", "y"),
    ("a" * 128, "2" * 128),
    ("ID-" + "0123456789abcdef" * 2, "2025-12-31T23:59:59.999+01:00"),
    ("A.b:C+d-E_f9", "-"),
    ("XACMLAuthzDecisionQuery", "XACMLAuthzDecisionQuery"),
    ("_one", INSTANT),
    ("1", INSTANT),
    ("_one", "0"),
]


def _outcome(parse: Callable[[bytes], AuthzRequest], body: bytes) -> Outcome:
    try:
        return parse(body)
    except Exception as exc:  # the memo must refuse exactly as the parser does
        return type(exc), str(exc)


def _assert_agree(got: Outcome, want: Outcome) -> None:
    assert got == want
    if isinstance(want, AuthzRequest):
        assert type(got) is AuthzRequest
        assert isinstance(got, AuthzRequest)
        # fields the comparison covers, spelled out: what a wrong hit gets wrong
        assert (got.request_id, got.issue_instant) == (want.request_id, want.issue_instant)


def _remembering(shape: Shape, max_body: int = MAX_BODY) -> tuple[RequestMemo, Counting]:
    """A memo that has parsed shape.body() once (one call of the full parser)."""
    memo, full = RequestMemo(max_body), Counting(max_body)
    _assert_agree(memo.parse(shape.body(), full), xacml.parse_request(shape.body()))
    assert full.calls == 1
    return memo, full


@pytest.mark.parametrize("shape", SHAPES, ids=lambda s: s.name)
def test_new_id_and_instant_are_a_hit_equal_to_the_full_parse(shape: Shape) -> None:
    memo, full = _remembering(shape)
    for request_id, instant in NEW_VALUES:
        body = shape.body(request_id, instant)
        want = xacml.parse_request(body)
        assert want.request_id == request_id  # the test changed the query's own ID
        _assert_agree(memo.parse(body, full), want)
        assert full.calls == 1, (request_id, instant)


def _bad_values(shape: Shape, quote: str) -> list[tuple[str, bytes, bytes]]:
    """(test id, shape.body(), a body of `shape` whose ID or instant is not plain)."""
    values = [
        "a&amp;b", "a&#65;", "a<b", "a b", " _one", "_one ", "a\tb", "a\nb", "a--b", "--",
        "é", "_oné", "a" * 129, "", "a]]>b", "a>b", "a]b", "a/b", "a=b", "a,b", "a\"b", "a'b",
        "_x" + quote + " InputContextOnly=" + quote + "true",  # well-formed: another attribute
    ]  # fmt: skip
    cases = [(f"{shape.name}-id-{v!r}", shape.body(), shape.body(v)) for v in values]
    cases += [(f"{shape.name}-instant-{v!r}", shape.body(), shape.body("_two", v)) for v in values]
    return cases


def _changed(shape: Shape, old: bytes, new: bytes, request_id: str = "_two") -> bytes:
    body = shape.body(request_id)
    assert body.count(old) == 1
    return body.replace(old, new)


def _edge_positions(shape: Shape, request_id: str, instant: str) -> list[int]:
    """The first and last two bytes of each stretch outside the values: the body's ends
    and the quotes and names right next to the values."""
    spans = shape.outside(request_id, instant)
    return sorted({i for a, b in spans for i in (a, a + 1, b - 2, b - 1) if a <= i < b})


def _edges(shape: Shape) -> list[tuple[str, bytes, bytes]]:
    """shape.body() and a body with new values and one byte changed next to a value or at
    either end of the body."""
    body = shape.body("_two", "later")
    cases = []
    for i in _edge_positions(shape, "_two", "later"):
        new = b"X" if body[i : i + 1] != b"X" else b"Y"
        cases.append((f"{shape.name}-byte-{i}", shape.body(), body[:i] + new + body[i + 1 :]))
    return cases


MISSES = [
    *_bad_values(DOUBLE_SHAPE, '"'),
    *_bad_values(SINGLE_SHAPE, "'"),
    ("subject-dn", DOUBLE_SHAPE.body(), _changed(DOUBLE_SHAPE, b"Alice Smith", b"Alice Smitj")),
    ("subject-dn-new-id", DOUBLE_SHAPE.body(), _changed(DOUBLE_SHAPE, b"Alice", b"Alicf")),
    (
        "resource",
        DOUBLE_SHAPE.body(),
        Shape("wn", _retag(_base(resource="wn"), DOUBLE)).body("_two"),
    ),
    ("version", DOUBLE_SHAPE.body(), _changed(DOUBLE_SHAPE, b'Version="2.0"', b'Version="3.0"')),
    (
        "return-context",
        DOUBLE_SHAPE.body(),
        _changed(DOUBLE_SHAPE, b'ReturnContext="true"', b'ReturnContext="false"'),
    ),
    ("end-tag", DOUBLE_SHAPE.body(), _changed(DOUBLE_SHAPE, b"</" + Q, b"</" + Q[:-1] + b"z")),
    ("trailing-space", DOUBLE_SHAPE.body(), DOUBLE_SHAPE.body("_two") + b" "),
    ("trailing-byte", DOUBLE_SHAPE.body(), DOUBLE_SHAPE.body("_two") + b"x"),
    (
        "header-must-understand",
        HEADER_SHAPE.body(),
        _changed(HEADER_SHAPE, b'mustUnderstand="0"', b'mustUnderstand="1"'),
    ),
    ("header-text", HEADER_SHAPE.body(), _changed(HEADER_SHAPE, b">note<", b">nota<")),
    *_edges(DOUBLE_SHAPE),
    *_edges(SINGLE_SHAPE),
]


@pytest.mark.parametrize(
    ("remembered", "body"), [pytest.param(a, b, id=name) for name, a, b in MISSES]
)
def test_any_other_difference_goes_to_the_full_parse(remembered: bytes, body: bytes) -> None:
    memo, full = RequestMemo(MAX_BODY), Counting()
    memo.parse(remembered, full)
    memo.parse(remembered, full)
    assert full.calls == 1  # remembered
    _assert_agree(_outcome(partial(memo.parse, full=full), body),
                  _outcome(xacml.parse_request, body))  # fmt: skip
    assert full.calls == 2


@pytest.mark.parametrize("extra", [
    b'xmlns:x="urn:x" x:ID="{id}" ID="_real" IssueInstant="{instant}"',
    b'xmlns:x="urn:x" ID="_real" x:ID="{id}" IssueInstant="{instant}"',
    b'xmlns:x="urn:x" x:ID="{id}" IssueInstant="{instant}"',  # no plain ID: refused
    b'ID="_real" IDs="{id}" IssueInstant="{instant}"',
    b'ID="_real" xID="{id}" IssueInstant="{instant}"',
])  # fmt: skip
def test_an_id_with_a_prefix_or_another_name_is_not_the_query_id(extra: bytes) -> None:
    shape = Shape("prefixed", _retag(_base(), b"<" + Q + b" " + extra + b">"))
    memo, full = RequestMemo(MAX_BODY), Counting()
    for calls, request_id in enumerate(["_one", "_two", "_three"], start=1):
        body = shape.body(request_id)
        got = _outcome(partial(memo.parse, full=full), body)
        _assert_agree(got, _outcome(xacml.parse_request, body))
        assert full.calls == calls
        if isinstance(got, AuthzRequest):
            assert got.request_id == "_real"


def test_a_body_longer_than_max_body_goes_to_the_parser() -> None:
    """At the limit a hit; one byte over, the parser's own refusal (no answer from memory)."""
    limit = len(DOUBLE_SHAPE.body("_one"))
    memo, full = _remembering(DOUBLE_SHAPE, max_body=limit)
    _assert_agree(memo.parse(DOUBLE_SHAPE.body("_two"), full),
                  xacml.parse_request(DOUBLE_SHAPE.body("_two")))  # fmt: skip
    assert full.calls == 1
    with pytest.raises(MessageTooLarge):
        memo.parse(DOUBLE_SHAPE.body("_two2"), full)
    assert full.calls == 2


REFUSED = [
    ("version", DOUBLE_SHAPE.template.replace(b'Version="2.0"', b'Version="3.0"')),
    ("return-context", DOUBLE_SHAPE.template.replace(b'xt="true"', b'xt="maybe"')),
    ("must-understand", HEADER_SHAPE.template.replace(b'nd="0"', b'nd="1"')),
    ("no-subject", DOUBLE_SHAPE.template.replace(b"subject-x509-id", b"subject-x509-idx")),
    ("not-well-formed", DOUBLE_SHAPE.template.replace(b"</SOAP-ENV:Envelope>", b"")),
]


@pytest.mark.parametrize("template", [pytest.param(t, id=n) for n, t in REFUSED])
def test_a_refused_body_is_never_remembered(template: bytes) -> None:
    shape = Shape("refused", template)
    memo, full = RequestMemo(MAX_BODY), Counting()
    for calls, request_id in enumerate(["_one", "_one", "_two"], start=1):
        body = shape.body(request_id)
        with pytest.raises(xacml.XacmlError) as raised:
            memo.parse(body, full)
        with pytest.raises(type(raised.value)) as reference:
            xacml.parse_request(body)
        assert str(raised.value) == str(reference.value)
        assert full.calls == calls


FAKES = {
    "comment": b'<!-- <XACMLsamlp:XACMLAuthzDecisionQuery ID="{fake}" IssueInstant="%s"> -->',
    "cdata": b'<x:n xmlns:x="urn:x"><![CDATA[<XACMLAuthzDecisionQuery ID="{fake}">]]></x:n>',
    "pi": b'<?note <XACMLAuthzDecisionQuery ID="{fake}" IssueInstant="%s"> ?>',
    "element": b'<x:XACMLAuthzDecisionQuery xmlns:x="urn:x" ID="{fake}" IssueInstant="%s"/>',
    "escaped-text": b'<x:n xmlns:x="urn:x">&lt;XACMLAuthzDecisionQuery ID="{fake}"&gt;</x:n>',
}


def _with_fake(kind: str, fake_id: str, real_id: str) -> bytes:
    fake = FAKES[kind].replace(b"%s", INSTANT.encode()).replace(b"{fake}", fake_id.encode())
    header = b"<SOAP-ENV:Header>" + fake + b"</SOAP-ENV:Header><SOAP-ENV:Body>"
    return DOUBLE_SHAPE.body(real_id).replace(b"<SOAP-ENV:Body>", header)


@pytest.mark.parametrize("kind", FAKES)
def test_a_fake_query_tag_before_the_real_one_is_never_taken_for_it(kind: str) -> None:
    """The fake tag's ID equals the real one, so the memo cannot tell them apart by the
    parsed ID: if it remembered the body with the fake's spans, changing the fake ID would
    hit and hand back the fake's new ID as the request's."""
    memo, full = RequestMemo(MAX_BODY), Counting()
    assert memo.parse(_with_fake(kind, "_one", "_one"), full).request_id == "_one"
    body = _with_fake(kind, "_two", "_one")
    got = memo.parse(body, full)
    assert got.request_id == "_one"  # the real query's ID, not the fake's
    _assert_agree(got, xacml.parse_request(body))
    assert full.calls == 2
    memo.parse(_with_fake(kind, "_one", "_one"), full)
    assert full.calls == 3  # three occurrences of the name: never remembered
    body = _with_fake(kind, "_one", "_three")
    _assert_agree(memo.parse(body, full), xacml.parse_request(body))
    assert memo.parse(body, full).request_id == "_three"


def test_a_hit_is_a_new_request_and_leaves_the_remembered_one_alone() -> None:
    memo, full = RequestMemo(MAX_BODY), Counting()
    first = memo.parse(DOUBLE_SHAPE.body("_one", INSTANT), full)
    second = memo.parse(DOUBLE_SHAPE.body("_two", "later"), full)
    third = memo.parse(DOUBLE_SHAPE.body("_three", "latest"), full)
    again = memo.parse(DOUBLE_SHAPE.body("_one", INSTANT), full)
    assert full.calls == 1
    assert len({id(first), id(second), id(third), id(again)}) == 4
    assert (first.request_id, first.issue_instant) == ("_one", INSTANT)
    assert (second.request_id, second.issue_instant) == ("_two", "later")
    assert (third.request_id, third.issue_instant) == ("_three", "latest")
    assert again == first and again.request_id == "_one"


def test_old_shapes_are_evicted_least_recently_used_first() -> None:
    shapes = [Shape(n, _retag(_base(subject_dn=f"/CN={n}"), DOUBLE)) for n in "abc"]
    memo, full = RequestMemo(MAX_BODY, max_entries=2), Counting()
    memo.parse(shapes[0].body(), full)
    memo.parse(shapes[1].body(), full)
    memo.parse(shapes[0].body("_two"), full)  # a hit: "a" is now the most recent
    assert full.calls == 2
    memo.parse(shapes[2].body(), full)  # evicts "b"
    assert full.calls == 3
    for shape, calls in [(shapes[0], 3), (shapes[2], 3), (shapes[1], 4)]:
        body = shape.body("_new")
        _assert_agree(memo.parse(body, full), xacml.parse_request(body))
        assert full.calls == calls, shape.name


def test_a_body_larger_than_the_byte_bound_is_not_remembered() -> None:
    body = DOUBLE_SHAPE.body()
    memo, full = RequestMemo(MAX_BODY, max_bytes=len(body) - 1), Counting()
    memo.parse(body, full)
    memo.parse(DOUBLE_SHAPE.body("_two"), full)
    assert full.calls == 2


def _plain(value: str) -> bool:
    return 1 <= len(value) <= 128 and set(value) <= set(PLAIN_CHARS) and "--" not in value


@settings(max_examples=200, deadline=None)
@given(
    shape=st.sampled_from(SHAPES),
    request_id=st.text(PLAIN_CHARS, min_size=1, max_size=130),
    instant=st.text(PLAIN_CHARS, min_size=1, max_size=130),
    mutation=st.none() | st.tuples(st.booleans(), st.integers(0, 1 << 20), st.integers(0, 255)),
)
def test_property_memo_agrees_with_the_parser(
    shape: Shape, request_id: str, instant: str, mutation: tuple[bool, int, int] | None
) -> None:
    """Random plain values, and optionally one byte changed outside them (anywhere, or
    next to a value or at an end of the body, where an off-by-one would hide)."""
    body = bytearray(shape.body(request_id, instant))
    changed = False
    if mutation is not None:
        edge, n, byte = mutation
        if edge:
            edges = _edge_positions(shape, request_id, instant)
            where = edges[n % len(edges)]
        else:
            outside = [i for a, b in shape.outside(request_id, instant) for i in range(a, b)]
            where = outside[n % len(outside)]
        changed = body[where] != byte
        body[where] = byte
    memo, full = _remembering(shape)
    got = _outcome(partial(memo.parse, full=full), bytes(body))
    _assert_agree(got, _outcome(xacml.parse_request, bytes(body)))
    if changed:
        assert full.calls == 2
    elif all(map(_plain, shape.volatile(request_id, instant))):
        assert full.calls == 1


# -- a new certificate chain: a payload's freshly delegated proxy ----------------------------

PEM_CHARS = string.ascii_letters + string.digits + "+/= \n-"


def _pem(body: str) -> str:
    return f"-----BEGIN CERTIFICATE-----\n{body}\n-----END CERTIFICATE-----\n"


CHAINED = _retag(_base(cert_chain=PEM, fqans=["/dteam"], soap12=True), DOUBLE)
#: other chains of plain PEM characters: longer, shorter, two blocks, dashes inside
NEW_CHAINS = [
    _pem("MIIB" + "x" * 3000),
    _pem("A"),
    _pem("MIIBnew") + _pem("MIIBsecond/+=="),
    _pem("MIIB-- --x"),
    "-----BEGIN CERTIFICATE----- x -----END CERTIFICATE-----",
]


def _with_chain(chain: str, request_id: str = "_two") -> bytes:
    body = CHAINED.replace(b"{id}", request_id.encode()).replace(b"{instant}", INSTANT.encode())
    old = PEM.strip().encode()
    assert body.count(old) == 1
    return body.replace(old, chain.strip().encode())


def _echo_part(response: bytes) -> bytes:
    """The echoed Request of a response, which must be the same whoever parsed the query."""
    found = re.search(rb"<(\w+):Request\b.*</\1:Request>", response, re.DOTALL)
    assert found is not None
    return found.group()


@pytest.mark.parametrize("chain", NEW_CHAINS, ids=range(len(NEW_CHAINS)))
def test_a_new_plain_chain_is_a_hit_equal_to_the_full_parse(chain: str) -> None:
    memo, full = RequestMemo(MAX_BODY), Counting()
    memo.parse(_with_chain(PEM, "_one"), full)
    body = _with_chain(chain)
    got = memo.parse(body, full)
    want = xacml.parse_request(body)
    assert full.calls == 1, "a new chain of plain PEM text is a hit"
    _assert_agree(got, want)
    assert got.cert_chain == chain.strip().encode() + b"\n"
    assert got.values("subject", ids.ATTR_CERT_CHAIN) == want.values(
        "subject", ids.ATTR_CERT_CHAIN)
    # the echo (ReturnContext) carries the new chain, as the full parse's does
    decision = xacml.Decision.permit(uid=1000, gid=1000)
    for request in (got, want):
        response = xacml.build_response(request, decision, issuer="scas.test")
        assert chain.strip().encode() in _echo_part(response)
        assert PEM.strip().encode() not in response
    assert _echo_part(xacml.build_response(got, decision, issuer="scas.test")) == _echo_part(
        xacml.build_response(want, decision, issuer="scas.test"))


@pytest.mark.parametrize("chain", [
    _pem("MIIB\rx"),  # a carriage return: the parser turns it into a line feed
    _pem("MIIB&#65;x"),  # an entity
    _pem("MIIB<!-- c -->x"),  # markup inside
    _pem("MIIB<![CDATA[x]]>"),
    _pem("MIIB\tx"),  # a character outside the PEM set
    _pem("MIIB" + "x" * 70000),  # past the 64 KiB bound
], ids=["cr", "entity", "comment", "cdata", "tab", "long"])
def test_a_chain_with_anything_but_pem_text_goes_to_the_full_parse(chain: str) -> None:
    memo, full = RequestMemo(MAX_BODY), Counting()
    memo.parse(_with_chain(PEM, "_one"), full)
    body = _with_chain(chain)
    _assert_agree(_outcome(partial(memo.parse, full=full), body),
                  _outcome(xacml.parse_request, body))
    assert full.calls == 2


def _escape_chain_dash(body: bytes) -> bytes:
    """The cert-chain's BEGIN and END markers each with a dash sent as a reference."""
    for marker in (b"-----BEGIN", b"-----END"):
        at = body.index(marker, body.index(ids.ATTR_CERT_CHAIN.encode()))
        body = body[:at] + b"&#45;" + body[at + 1 :]
    return body


def test_pem_markers_outside_the_chain_keep_it_out_of_the_memo() -> None:
    """PEM text that is not the cert-chain's as sent: an END marker in a processing
    instruction after it, a second copy in another attribute, the chain as base64 of PEM
    or with its markers sent as references. No chain is swapped: each new body is parsed."""
    end_tag = b"</" + Q + b">"
    bodies = [
        _with_chain(PEM, "_one").replace(end_tag, b"<?note -----END X----- ?>" + end_tag),
        _retag(_base(cert_chain=PEM, soap12=True,
                     extra_attributes=[("resource", "urn:example:x", PEM)]), DOUBLE),
        # the only PEM text is another attribute's; the chain is sent as base64 of PEM
        _retag(_base(cert_chain=base64.b64encode(PEM.encode()).decode(), soap12=True,
                     extra_attributes=[("resource", "urn:example:x", PEM)]), DOUBLE),
        # the same, with the chain's markers sent with a character reference each
        _escape_chain_dash(_retag(_base(cert_chain=PEM, soap12=True, extra_attributes=[
            ("resource", "urn:example:x", PEM)]), DOUBLE)),
    ]
    for remembered in bodies:
        remembered = remembered.replace(b"{id}", b"_one").replace(b"{instant}", INSTANT.encode())
        memo, full = RequestMemo(MAX_BODY), Counting()
        _assert_agree(memo.parse(remembered, full), xacml.parse_request(remembered))
        at = remembered.rindex(b"MIIBfakefakefake")  # the last copy: the span's, if any
        body = remembered[:at] + b"MIIBotherother" + remembered[at + 16 :]
        _assert_agree(memo.parse(body, full), xacml.parse_request(body))
        assert full.calls == 2


@settings(max_examples=150, deadline=None)
@given(st.text(alphabet=PEM_CHARS, min_size=1, max_size=400))
def test_property_any_plain_chain_agrees_with_the_parser(text: str) -> None:
    memo, full = RequestMemo(MAX_BODY), Counting()
    memo.parse(_with_chain(PEM, "_one"), full)
    body = _with_chain(_pem(text))
    _assert_agree(_outcome(partial(memo.parse, full=full), body),
                  _outcome(xacml.parse_request, body))
