"""The client's stdlib-only codec and glexec's lean import path.

glexec starts once per payload, so the client half of the wire codec (client/xacml_text.py
writes queries, client/xacml_expat.py + client/xacml_decision.py read replies) avoids lxml,
and the transport avoids http.client. These tests tie that half to the lxml server half:
frozen bytes of the old lxml builder, the server's parser reading what the client writes,
the client's reader reading what the server builds, and the modules a real query loads.
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import sys
import sysconfig
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from server_harness import Server, Site

from client import xacml
from client.endpoint_memory import EndpointMemory
from client.xacml import Decision, ids
from client.xacml_errors import (
    InvalidEncoding,
    MalformedQuery,
    MalformedResponse,
    MessageTooLarge,
    NotSoap,
    SoapFaultReceived,
    XacmlError,
    XmlRejected,
    status_text,
)
from client.xacml_expat import Element, parse

REPO = Path(__file__).resolve().parent.parent
VECTORS = Path(__file__).parent / "vectors"
sys.path.insert(0, str(VECTORS))
from make_request_vectors import arguments  # noqa: E402

#: what one glexec query must not load (each costs it milliseconds of start-up)
HEAVY = ("lxml", "dataclasses", "typing", "http", "email", "urllib", "secrets", "hmac",
         "hashlib", "inspect", "ast", "dis", "tokenize", "threading")  # fmt: skip


# -- the request builder: byte for byte what the lxml builder wrote ------------------------


def _vectors() -> list[dict[str, object]]:
    data: list[dict[str, object]] = json.loads((VECTORS / "request_vectors.json").read_text())
    return data


@pytest.mark.parametrize("vector", _vectors(), ids=lambda v: str(v["name"]))
def test_lean_request_vector_reproduced(vector: dict[str, object]) -> None:
    """Each frozen output of the lxml builder, or its exact exception (class and message)."""
    kwargs = arguments(vector["kwargs"])  # type: ignore[arg-type]
    if "error" in vector:
        with pytest.raises(ValueError) as info:
            xacml.build_request(**kwargs)  # type: ignore[arg-type]
        assert (type(info.value).__name__, str(info.value)) == (vector["error"], vector["message"])
    else:
        body = xacml.build_request(**kwargs)  # type: ignore[arg-type]
        assert body == base64.b64decode(str(vector["output"]))


def test_lean_vectors_cover_what_they_claim() -> None:
    vectors = _vectors()
    assert len(vectors) >= 30 and sum("error" in v for v in vectors) >= 15
    outputs = [base64.b64decode(str(v["output"])) for v in vectors if "output" in v]
    assert any(ids.NS_SOAP12.encode() in o for o in outputs)
    assert any(ids.NS_XACML_SAMLP_OS.encode() in o for o in outputs)
    assert any(b"&amp;" in o and b"&lt;" in o and b"&quot;" in o for o in outputs)
    assert any("Ελλάδα".encode() in o for o in outputs)


_XML_TEXT = st.text(
    st.characters(
        blacklist_categories=("Cs",),
        blacklist_characters="".join(map(chr, [*range(9), 11, 12, *range(14, 32)]))
        + "\ufffe\uffff",
    ),
    min_size=1,
    max_size=40,
).filter(lambda v: bool(v.strip()))


@settings(max_examples=150, deadline=None)
@given(dn=_XML_TEXT, fqans=st.lists(_XML_TEXT, min_size=1, max_size=3), host=_XML_TEXT,
       pilot=_XML_TEXT, rid=_XML_TEXT, extra=_XML_TEXT,
       uid=st.integers(0, ids.MAX_UID))  # fmt: skip
def test_lean_server_reads_what_the_client_writes(
    dn: str, fqans: list[str], host: str, pilot: str, rid: str, extra: str, uid: int
) -> None:
    """Markup, blanks, CR/LF/tab and any Unicode survive into the server's lxml parser."""
    body = xacml.build_request(
        subject_dn=dn, fqans=fqans, host=host, pilot_dn=pilot, request_id=rid,
        caller_uid=uid, extra_attributes=[("action", "urn:x:extra", extra)], soap12=True,
    )  # fmt: skip
    req = xacml.parse_request(body)
    assert (req.request_id, req.subject_dn) == (rid.strip(), dn.strip())
    assert req.fqans == tuple(dict.fromkeys(f.strip() for f in fqans if f.strip()))
    assert (req.host, req.pilot_dn, req.caller_uid) == (host.strip(), pilot.strip(), uid)
    assert req.values("action", "urn:x:extra") == (extra,)
    assert req.soap12 is True


# -- the reply reader: what the server meant, read with expat ------------------------------

_MAPPING = (*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET)
_DECISIONS = [
    Decision.permit(uid=40001, gid=4000, sgids=(4001, 4002), username="dteam001", ticket="a.b"),
    Decision.permit(uid=0, gid=0, username="r<&>'\"oot", ticket="dGV4dA==.c2ln"),
    Decision.permit(uid=1, gid=2, sgids=range(3, 40), username="Zoë 日本"),
    Decision.permit(username="only-a-name"),
    Decision.permit(),
    Decision.deny(),
    Decision.deny("banned: <b>&amp;</b> \"quoted\" 'single'"),
    Decision.deny("a\n  multi-line\r\n\treason ]]> " + "x" * 300),
    Decision.deny("   "),
    Decision.indeterminate(ids.STATUS_PROCESSING_ERROR, "lease store unusable"),
    Decision.indeterminate(ids.STATUS_MISSING_ATTRIBUTE, "no cert-chain"),
    Decision.indeterminate(ids.STATUS_SYNTAX_ERROR, "bad <query>"),
    Decision(ids.NOT_APPLICABLE),
    Decision(ids.NOT_APPLICABLE, status_message="no policy for ce/queue"),
]
_ADVERTISED = [(), ids.MAPPING_OBLIGATIONS, _MAPPING, (ids.OBLIG_TICKET,), (ids.OBLIG_USERNAME,)]


def _intended(decision: Decision, wanted: tuple[str, ...], reply_to: str | None) -> Decision:
    """The Decision a client should read: the obligations the PEP wanted and can be filled."""
    sent: list[str] = []
    fields: dict[str, object] = {}
    if decision.decision == ids.PERMIT:
        if ids.OBLIG_UIDGID in wanted and None not in (decision.uid, decision.gid):
            sent.append(ids.OBLIG_UIDGID)
            fields.update(uid=decision.uid, gid=decision.gid)
        if ids.OBLIG_SECONDARY_GIDS in wanted and decision.sgids:
            sent.append(ids.OBLIG_SECONDARY_GIDS)
            fields["sgids"] = decision.sgids
        for obligation, name in ((ids.OBLIG_USERNAME, "username"), (ids.OBLIG_TICKET, "ticket")):
            if obligation in wanted and getattr(decision, name):
                sent.append(obligation)
                fields[name] = getattr(decision, name)
    message = status_text(decision.status_message or "") or None
    return Decision(decision.decision, status_code=decision.status_code, status_message=message,
                    in_response_to=reply_to, obligations=tuple(sent), **fields)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("soap12", [False, True])
@pytest.mark.parametrize("query_ns", [ids.NS_XACML_SAMLP_V2, ids.NS_XACML_SAMLP_OS])
@pytest.mark.parametrize("return_context", [False, True])
def test_lean_reader_reads_what_the_server_meant(
    soap12: bool, query_ns: str, return_context: bool
) -> None:
    for advertised in _ADVERTISED:
        body = xacml.build_request(
            subject_dn="/CN=J <&> \"x\"", fqans=["/dteam/Role=<p>"], oblig_supported=advertised,
            soap12=soap12, query_ns=query_ns, return_context=return_context, request_id="Q-1",
        )  # fmt: skip
        request = xacml.parse_request(body)
        for decision in _DECISIONS:
            reply = xacml.build_response(request, decision, issuer="scas <&>")
            read = xacml.parse_response(reply, expect_in_response_to="Q-1")
            assert read == _intended(decision, advertised, "Q-1"), (advertised, decision)


def test_lean_reader_old_clients_and_errors() -> None:
    """No advertised obligations (SCAS-era defaults), error replies, and both SOAP faults."""
    request = xacml.parse_request(xacml.build_request(subject_dn="/CN=J", oblig_supported=()))
    old = xacml.build_response(request, _DECISIONS[0], issuer="s",
                               when_none_advertised=_MAPPING)  # fmt: skip
    expected = _intended(_DECISIONS[0], ids.MAPPING_OBLIGATIONS, request.request_id)
    assert xacml.parse_response(old) == expected  # never a ticket nobody asked for
    error = MalformedQuery('no <ID> & no "Version"', request_id="Q-9", soap12=True)
    read = xacml.parse_response(xacml.error_response(error, issuer="s"))
    assert (read.decision, read.status_code, read.in_response_to) == (
        ids.INDETERMINATE, ids.STATUS_SYNTAX_ERROR, "Q-9")  # fmt: skip
    assert read.status_message == 'no <ID> & no "Version"'
    for soap12 in (False, True):
        fault = xacml.soap_fault("not a <SOAP> & message", soap12=soap12)
        with pytest.raises(SoapFaultReceived, match="not a <SOAP> & message"):
            xacml.parse_response(fault)


def test_lean_decision_record_semantics() -> None:
    d = Decision.permit(uid=1, gid=2, sgids=[3])
    assert d == Decision("Permit", uid=1, gid=2, sgids=(3,)) and d.sgids == (3,)
    assert {d: "ok"}[Decision("Permit", uid=1, gid=2, sgids=(3,))] == "ok"
    assert d != Decision.permit(uid=1, gid=2) and d != Decision.deny()
    assert repr(Decision.deny("no")).startswith("Decision(decision='Deny', status_code=")
    with pytest.raises(AttributeError):
        d.uid = 5  # type: ignore[misc]
    with pytest.raises(ValueError, match="unknown decision 'Maybe'"):
        Decision("Maybe")


def test_lean_memory_file_gone_once_nothing_is_remembered(tmp_path: Path) -> None:
    """No failure left to remember, no file: the next glexec reads nothing, imports no json."""
    path = tmp_path / "scas-client" / "endpoints.json"
    memory = EndpointMemory(str(path), hold=60, clock=lambda: 1000.0)
    memory.record(failed=["unix:/a", "unix:/b"])
    assert json.loads(path.read_text())["failed"] == {"unix:/a": 1000.0, "unix:/b": 1000.0}
    memory.record(answered=["unix:/a"])
    assert list(json.loads(path.read_text())["failed"]) == ["unix:/b"]
    memory.record(answered=["unix:/b"])
    assert not path.exists() and memory.problem is None
    assert memory.order(["unix:/b", "unix:/a"]) == ["unix:/b", "unix:/a"]
    assert os.listdir(path.parent) == []  # no temporary file either


GOLDEN_RESPONSE = (VECTORS / "captured_scas_response.xml").read_bytes()
_PROLOGUE, _REST = GOLDEN_RESPONSE.split(b"?>", 1)


def _lol() -> bytes:
    lol = b'<!DOCTYPE lolz [<!ENTITY lol "lol">'
    for i in range(1, 10):
        prev = b"&lol%d;" % (i - 1) if i > 1 else b"&lol;"
        lol += b'<!ENTITY lol%d "%s">' % (i, prev * 10)
    return lol + b"]>" + _REST.replace(b">dteam001<", b">&lol9;<")


def _nested(levels: int) -> bytes:
    """The golden reply nested `levels` deep (its saml:Issuer is on level 4)."""
    extra = levels - 4
    return _REST.replace(b">XACMLService<", b">" + b"<a>" * extra + b"</a>" * extra + b"<")


def _nodes(element: Element) -> int:
    return 1 + len(element.attrib) + sum(_nodes(child) for child in element.children)


def _with_nodes(total: int) -> bytes:
    """The golden reply padded to `total` elements plus attributes."""
    extra = total - _nodes(parse(_REST))
    pad = b"<a b='1'/>" * (extra // 2) + b"<a/>" * (extra % 2)
    return _REST.replace(b">XACMLService<", b">" + pad + b"<")


# fmt: off
_HOSTILE = [
    ("billion-laughs", _lol, XmlRejected, "DTD"),
    ("doctype-only", lambda: b"<!DOCTYPE x>" + _REST, XmlRejected, "DTD"),
    ("xxe", lambda: b'<!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     + _REST.replace(b">dteam001<", b">&x;<"), XmlRejected, "DTD"),
    ("too-deep", lambda: _nested(33), XmlRejected, "deeper than 32"),
    ("much-too-deep", lambda: _nested(100_000), XmlRejected, "deeper than 32"),
    ("too-many", lambda: _with_nodes(10_001), XmlRejected, "more than 10000"),
    ("latin-1", lambda: b'<?xml version="1.0" encoding="ISO-8859-1"?>' + _REST,
     InvalidEncoding, "ISO-8859-1"),
    ("not-utf8", lambda: GOLDEN_RESPONSE.replace(b"dteam001", b"dteam\xff"), InvalidEncoding,
     "byte offset"),
    ("nul", lambda: GOLDEN_RESPONSE.replace(b"dteam001", b"d\x00"), InvalidEncoding, "NUL"),
    ("huge", lambda: GOLDEN_RESPONSE + b" " * (1 << 20), MessageTooLarge, "limit"),
    ("empty", lambda: b" \r\n\t", NotSoap, "empty body"),
    ("unclosed", lambda: GOLDEN_RESPONSE[:-30], NotSoap, "not well-formed"),
    ("undefined-entity", lambda: _REST.replace(b">dteam001<", b">&x;<"), NotSoap, "entity"),
    ("arabic-digit-uid-text", lambda: GOLDEN_RESPONSE.replace(b">40001<", ">٣<".encode()),
     MalformedResponse, "posix-uid"),
]
# fmt: on


@pytest.mark.parametrize(
    "make,kind,words", [h[1:] for h in _HOSTILE], ids=[h[0] for h in _HOSTILE]
)
def test_lean_reader_refuses_hostile_replies(
    make: Callable[[], bytes], kind: type[XacmlError], words: str
) -> None:
    body = make()
    start = time.perf_counter()
    with pytest.raises(kind) as info:
        xacml.parse_response(body)
    assert time.perf_counter() - start < 1.0
    assert words in info.value.reason and "\n" not in info.value.reason
    assert "root:" not in info.value.reason  # nothing of /etc/passwd was read


def test_lean_reader_limits_are_exact() -> None:
    """32 levels and 10,000 elements plus attributes pass; one more does not."""
    for body in (_nested(32), _with_nodes(10_000)):
        assert xacml.parse_response(body).uid == 40001
    assert xacml.parse_response(b'<?xml version="1.0" encoding="utf8"?>' + _REST).uid == 40001


# -- what one glexec query loads -------------------------------------------------------------

QUERY = """
import json, os, sys
sys.path[:0] = sys.argv[1:3]
import glexec.cli, glexec.handover, glexec.inputs, glexec.scas
from client import xacml_ids as ids
from client.failover import FailoverClient
from client.failures import AllEndpointsFailed
from client.query import build_query, read_chain
from client.transport import TlsCredentials, tls_context
endpoints, cert, key, certdir, chain = json.loads(sys.argv[3])
if cert:
    tls_context(TlsCredentials(cert, key, certdir))  # as glexec checks the pilot's proxy
query = build_query(read_chain(chain), host="wn1.example.org", caller_uid=os.getuid(),
                    obligations=(*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET))
client = FailoverClient(endpoints, cert=cert, key=key, certdir=certdir, strategy="round-robin")
try:
    outcome = client.ask(query).decision.decision
except AllEndpointsFailed as exc:
    outcome = [a.outcome for a in exc.attempts]
heavy = json.loads(sys.argv[4])
print(json.dumps({"outcome": outcome, "ssl": "ssl" in sys.modules,
                  "offenders": sorted(m for m in sys.modules if m.split(".")[0] in heavy)}))
"""


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://localhost:{s.getsockname()[1]}"


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Server]]:
    from client import transport

    site = Site(str(tmp_path_factory.mktemp("client-lean")))
    srv = Server(site, site.write_config(workers=1))
    yield site, srv
    transport.close_all()
    srv.stop()


def _query_in_child(tmp_path: Path, endpoints: list[str], cert: str | None, key: str | None,
                    certdir: str | None, chain: str) -> dict[str, object]:  # fmt: skip
    """Run one glexec-style query in `python -S` (no site: nothing preloaded) and report."""
    args = [str(REPO), sysconfig.get_paths()["purelib"],
            json.dumps([endpoints, cert, key, certdir, chain]), json.dumps(HEAVY)]  # fmt: skip
    env = {**os.environ, "XDG_RUNTIME_DIR": str(tmp_path)}
    out = subprocess.run([sys.executable, "-S", "-c", QUERY, *args], capture_output=True,
                         text=True, timeout=60, cwd=tmp_path, env=env)  # fmt: skip
    assert out.returncode == 0, out.stderr
    result: dict[str, object] = json.loads(out.stdout)
    return result


def test_lean_glexec_query_over_tls_loads_nothing_heavy(
    server: tuple[Site, Server], tmp_path: Path
) -> None:
    """A real query (a dead replica, then the real scas-server over mutual TLS): a Permit,
    with none of lxml, dataclasses, typing, http.client, email, urllib, secrets... loaded."""
    site, srv = server
    url = f"https://localhost:{srv.port}"
    report = _query_in_child(tmp_path, [_closed_url(), url], site.pep.cert_path,
                             site.pep.key_path, site.pki.certdir, site.user.cert_path)  # fmt: skip
    assert report["outcome"] == "Permit", report
    assert report["offenders"] == [], f"glexec's query path loaded {report['offenders']}"


def test_lean_unix_socket_query_loads_no_ssl(tmp_path: Path) -> None:
    """The node-local socket path needs no TLS stack: ssl is not even imported."""
    chain = tmp_path / "chain.pem"
    chain.write_bytes(b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n")
    report = _query_in_child(tmp_path, [f"unix:{tmp_path}/no.sock"], None, None, None,
                             str(chain))  # fmt: skip
    assert report["outcome"] == ["network"], report
    assert report["ssl"] is False and report["offenders"] == [], report
