"""Hostile input to the query parser: each is refused quickly, with the right kind of error."""

from __future__ import annotations

import http.server
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client.xacml import (
    InvalidEncoding,
    MessageTooLarge,
    NotSoap,
    XacmlError,
    XmlRejected,
    error_response,
    ids,
    parse_request,
)

GOLDEN = (Path(__file__).parent / "vectors" / "captured_scas_request.xml").read_bytes()
SOAP_OPEN = b'<e:Envelope xmlns:e="http://schemas.xmlsoap.org/soap/envelope/"><e:Body>'
SOAP_CLOSE = b"</e:Body></e:Envelope>"


def _refused(body: bytes, kind: type[XacmlError], **limits: int) -> XacmlError:
    """Assert parse_request refuses `body` with `kind` in under a second; return the error."""
    start = time.perf_counter()
    with pytest.raises(kind) as info:
        parse_request(body, **limits)
    elapsed = time.perf_counter() - start
    assert elapsed < 1.0, f"took {elapsed:.2f} s"
    assert "\n" not in info.value.reason and len(info.value.reason) <= 200
    error_response(info.value, issuer="scas")  # the reply can always be built
    return info.value


def test_hardening_billion_laughs() -> None:
    lol = b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
    for i in range(1, 10):
        prev = b"&lol%d;" % (i - 1) if i > 1 else b"&lol;"
        lol += b'<!ENTITY lol%d "%s">' % (i, prev * 10)
    body = b'<?xml version="1.0"?>' + lol + b"]>" + SOAP_OPEN + b"<x>&lol9;</x>" + SOAP_CLOSE
    error = _refused(body, XmlRejected)
    assert "DTD" in error.reason
    assert error.fault is True


def test_hardening_xxe_file(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    body = (
        f'<!DOCTYPE d [<!ENTITY x SYSTEM "file://{secret}">]>'.encode()
        + GOLDEN.split(b"?>", 1)[1].replace(b">dteam<", b">&x;<")
    )
    error = _refused(body, XmlRejected)
    assert "TOP-SECRET" not in error.reason


@pytest.fixture
def listener() -> Iterator[tuple[str, list[str]]]:
    """A local HTTP server recording every path requested from it."""
    hits: list[str] = []

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            hits.append(self.path)
            self.send_response(200)
            self.end_headers()
            self.wfile.write(b'<!ENTITY y "pwned">')

        def log_message(self, *args: object) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", hits
    server.shutdown()
    server.server_close()


def test_hardening_xxe_network(listener: tuple[str, list[str]]) -> None:
    url, hits = listener
    variants = [
        f'<!DOCTYPE d [<!ENTITY x SYSTEM "{url}/entity">]>',
        f'<!DOCTYPE d [<!ENTITY % p SYSTEM "{url}/param"> %p;]>',
        f'<!DOCTYPE d SYSTEM "{url}/dtd">',
    ]
    for doctype in variants:
        body = doctype.encode() + SOAP_OPEN + b"<x>&x;</x>" + SOAP_CLOSE
        _refused(body, XmlRejected)
    assert hits == []


def test_hardening_xinclude_not_processed(tmp_path: Path) -> None:
    secret = tmp_path / "secret.txt"
    secret.write_text("TOP-SECRET-VALUE")
    xi = "http://www.w3.org/2001/XInclude"
    include = f'<xi:include xmlns:xi="{xi}" href="{secret}" parse="text"/>'
    body = GOLDEN.replace(b">dteam<", b">" + include.encode() + b"<")
    req = parse_request(body)
    assert req.vo is None
    assert all("TOP-SECRET" not in v for _, _, v in req.attributes)


def test_hardening_50_mib_body() -> None:
    body = GOLDEN[:-30] + b" " * (50 << 20) + GOLDEN[-30:]
    error = _refused(body, MessageTooLarge)
    assert error.http_status == 413
    assert "limit is 1048576" in error.reason


def test_hardening_size_limit_is_configurable() -> None:
    _refused(GOLDEN, MessageTooLarge, max_bytes=4096)
    assert parse_request(GOLDEN, max_bytes=len(GOLDEN)).subject_dn


def test_hardening_100000_attributes_on_one_element() -> None:
    attrs = b" ".join(b'a%d="1"' % i for i in range(100_000))
    body = SOAP_OPEN.replace(b"<e:Body>", b"<e:Body " + attrs + b">") + SOAP_CLOSE
    assert len(body) > 1 << 20
    _refused(body, MessageTooLarge)
    # raise the size bound: the element/attribute count still stops it
    assert "elements and attributes" in _refused(body, XmlRejected, max_bytes=2 << 20).reason


def test_hardening_100000_xacml_attributes() -> None:
    one = (
        b'<XACMLcontext:Attribute AttributeId="urn:x" DataType="x"><XACMLcontext:AttributeValue>'
        b"v</XACMLcontext:AttributeValue></XACMLcontext:Attribute>"
    )
    body = GOLDEN.replace(b"</XACMLcontext:Subject>", one * 100_000 + b"</XACMLcontext:Subject>")
    _refused(body, MessageTooLarge)  # 12 MB: refused before parsing
    compact = b'<c:Attribute AttributeId="u"/>'
    body = GOLDEN.replace(
        b"</XACMLcontext:Subject>",
        b'<c:x xmlns:c="%s">' % ids.NS_CONTEXT.encode()
        + compact * 30_000
        + b"</c:x></XACMLcontext:Subject>",
    )
    assert len(body) < 1 << 20
    error = _refused(body, XmlRejected)
    assert "elements and attributes" in error.reason


def test_hardening_10000_deep_nesting() -> None:
    body = SOAP_OPEN + b"<a>" * 10_000 + b"</a>" * 10_000 + SOAP_CLOSE
    error = _refused(body, XmlRejected)
    assert "deeper than 32" in error.reason


def test_hardening_depth_limit_is_configurable() -> None:
    _refused(GOLDEN, XmlRejected, max_depth=5)
    assert parse_request(GOLDEN, max_depth=7).subject_dn


@pytest.mark.parametrize(
    ("body", "where"),
    [
        (GOLDEN.replace(b"Jane Doe", b"Jane \xff\xfe"), "byte offset"),
        (b"\xc3\x28" + GOLDEN, "byte offset"),
        (GOLDEN.decode().encode("utf-16"), "byte offset"),
        (GOLDEN.replace(b"Jane", b"Ja\x00ne"), "NUL"),
    ],
)
def test_hardening_invalid_utf8(body: bytes, where: str) -> None:
    error = _refused(body, InvalidEncoding)
    assert where in error.reason


def test_hardening_declared_foreign_encoding() -> None:
    body = GOLDEN.replace(b'encoding="UTF-8"', b'encoding="ISO-8859-1"')
    assert "ISO-8859-1" in _refused(body, InvalidEncoding).reason


@pytest.mark.parametrize("body", [b"", b"   \r\n\t "])
def test_hardening_empty_body(body: bytes) -> None:
    assert _refused(body, NotSoap).reason == "empty body"


@pytest.mark.parametrize(
    "body",
    [
        b"<html><body>hello</body></html>",
        b'{"json": true}',
        b"<unclosed>",
        b"<Envelope><Body/></Envelope>",  # right names, no namespace
        b'<e:Envelope xmlns:e="urn:not-soap"><e:Body/></e:Envelope>',
    ],
)
def test_hardening_non_soap(body: bytes) -> None:
    error = _refused(body, NotSoap)
    assert error.fault is True and error.status_code == ids.STATUS_SYNTAX_ERROR


@pytest.mark.parametrize(
    "make",
    [
        lambda: b"<!doctype x>" + GOLDEN.split(b"?>", 1)[1],
        lambda: GOLDEN.replace(b"<SOAP-ENV:Body>", b"<SOAP-ENV:Body><!-- <!ENTITY -->"),
        lambda: GOLDEN.split(b"?>", 1)[0] + b"?><!DOCTYPE\n x>" + GOLDEN.split(b"?>", 1)[1],
    ],
)
def test_hardening_any_dtd_spelling_refused(make: Callable[[], bytes]) -> None:
    _refused(make(), XmlRejected)
