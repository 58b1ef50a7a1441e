"""Hostile XML against the live service: each is refused quickly with a SOAP Fault, nothing
is fetched, and the server goes on answering real queries."""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator

import pytest
from lxml import etree
from server_harness import Server, Site

from client import xacml

pytestmark = pytest.mark.slow

SOAP11 = "http://schemas.xmlsoap.org/soap/envelope/"


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(str(tmp_path_factory.mktemp("scas-hardening")))


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Server]:
    srv = Server(site, site.write_config())
    yield srv
    srv.stop()


def _laughs() -> bytes:
    ents = ['<!ENTITY lol0 "lol">'] + [
        f'<!ENTITY lol{i} "{f"&lol{i - 1};" * 10}">' for i in range(1, 10)]
    return (f'<?xml version="1.0"?><!DOCTYPE lolz [{"".join(ents)}]>'
            "<lolz>&lol9;</lolz>").encode()


def _xxe(target: str) -> bytes:
    return (f'<?xml version="1.0"?><!DOCTYPE x [<!ENTITY e SYSTEM "{target}">]>'
            f'<e:Envelope xmlns:e="{SOAP11}"><e:Body>&e;</e:Body></e:Envelope>').encode()


def _fault_string(body: bytes) -> str:
    root = etree.fromstring(body)
    text = root.findtext(f"{{{SOAP11}}}Body/{{{SOAP11}}}Fault/faultstring")
    assert text, body[:400]
    return text


def _refused(server: Server, site: Site, payload: bytes) -> str:
    start = time.monotonic()
    status, body = server.post(payload)
    assert time.monotonic() - start < 2.0
    assert status == 400
    reason = _fault_string(body)
    assert "\n" not in reason
    status, body = server.post(site.query())  # still serving
    assert status == 200 and xacml.parse_response(body).decision == "Permit"
    return reason


def test_server_refuses_billion_laughs(server: Server, site: Site) -> None:
    assert "DTD or entity" in _refused(server, site, _laughs())


def test_server_refuses_xxe_file_and_network(server: Server, site: Site) -> None:
    assert "DTD or entity" in _refused(server, site, _xxe("file:///etc/passwd"))
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        listener.settimeout(0.5)
        port = listener.getsockname()[1]
        _refused(server, site, _xxe(f"http://127.0.0.1:{port}/evil.dtd"))
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody came to fetch it


def test_server_refuses_deep_nesting(server: Server, site: Site) -> None:
    deep = f'<e:Envelope xmlns:e="{SOAP11}"><e:Body>'.encode() + b"<a>" * 10_000 \
        + b"</a>" * 10_000 + b"</e:Body></e:Envelope>"
    assert "deep" in _refused(server, site, deep).lower()


def test_server_refuses_100000_attributes(server: Server, site: Site) -> None:
    attrs = b" ".join(b'a%x=""' % i for i in range(100_000))
    body = f'<e:Envelope xmlns:e="{SOAP11}"><e:Body><q '.encode() + attrs \
        + b"/></e:Body></e:Envelope>"
    assert len(body) < 1 << 20  # under the size cap: the node-count bound must catch it
    _refused(server, site, body)


def test_server_refuses_invalid_utf8(server: Server, site: Site) -> None:
    bad = site.query().replace(b"Carol", b"Car\xff\xfeol")
    assert "utf-8" in _refused(server, site, bad).lower()
