"""The transport's own HTTP/1.1 (client/http11.py) and URL parser, against real sockets.

A scripted server on a Unix socket answers each request with chosen bytes: every way a
reply may be framed (length, chunked, until close, interim 100, HTTP/1.0), every way it may
be malformed or too large, and connections the server closes. The client must read a good
reply whole, reuse the connection only when HTTP allows it, and file everything else under
one outcome class ("garbage", "closed") instead of hanging or crashing.
"""

from __future__ import annotations

import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import http11, transport, xacml
from client.failures import AttemptError, ClientConfigError
from client.transport import parse_endpoint

Script = Callable[[bytes], bytes | None]  # request body -> raw reply bytes, None: hang up


def _permit(body: bytes) -> bytes:
    request = xacml.parse_request(body)
    return xacml.build_response(request, xacml.Decision.permit(uid=7, gid=8), issuer="raw")


def _framed(head: str, payload: bytes) -> bytes:
    return head.replace("\n", "\r\n").encode() + b"\r\n" + payload


class RawServer:
    """A Unix-socket server that answers each request with `script(body)`; counts accepts."""

    def __init__(self, path: str, script: Script, hangup: bool) -> None:
        self.script = script
        self.hangup = hangup  # close the connection after each reply
        self.accepts = 0
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        self.sock.bind(path)
        self.sock.listen(8)
        self.url = f"unix:{path}"
        self.heads: list[bytes] = []
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            data = b""
            while True:
                while b"\r\n\r\n" not in data:
                    chunk = conn.recv(65536)
                    if not chunk:
                        return
                    data += chunk
                head, _, data = data.partition(b"\r\n\r\n")
                self.heads.append(head)
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                while len(data) < length:
                    data += conn.recv(65536)
                body, data = data[:length], data[length:]
                reply = self.script(body)
                if reply is None:
                    return
                conn.sendall(reply)
                if self.hangup:
                    return

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def raw(tmp_path: Path) -> Iterator[Callable[..., RawServer]]:
    made: list[RawServer] = []

    def make(script: Script, hangup: bool = False) -> RawServer:
        made.append(RawServer(str(tmp_path / f"raw{len(made)}.sock"), script, hangup))
        return made[-1]

    yield make
    transport.close_all()
    for server in made:
        server.close()


QUERY = xacml.build_request(subject_dn="/CN=raw", request_id="Q-raw")


def _ask(server: RawServer) -> tuple[int, bytes]:
    return transport.exchange(
        parse_endpoint(server.url), QUERY, tls=None, connect_timeout=1.0, read_timeout=2.0,
        deadline_at=time.monotonic() + 3.0,
    )  # fmt: skip


def _chunked(payload: bytes) -> bytes:
    pieces = [payload[i : i + 700] for i in range(0, len(payload), 700)]
    body = b"".join(b"%x;ext=1\r\n%s\r\n" % (len(p), p) for p in pieces)
    return body + b"0\r\nX-Trailer: yes\r\n\r\n"


GOOD = {
    "length": lambda p: _framed(f"HTTP/1.1 200 OK\nContent-Length: {len(p)}\n", p),
    "chunked": lambda p: _framed("HTTP/1.1 200 OK\nTransfer-Encoding: chunked\n", _chunked(p)),
    "interim-100": lambda p: (
        b"HTTP/1.1 100 Continue\r\n\r\n"
        + _framed(f"HTTP/1.1 200 OK\nContent-Length: {len(p)}\n", p)
    ),
    "folded-header": lambda p: _framed(
        f"HTTP/1.1 200 OK\nX-Long: a\n  b\nContent-Length: {len(p)}\n", p
    ),
    "lf-only": lambda p: f"HTTP/1.1 200 OK\nContent-Length: {len(p)}\n\n".encode() + p,
}
CLOSING = {
    "connection-close": lambda p: _framed(
        f"HTTP/1.1 200 OK\nConnection: close\nContent-Length: {len(p)}\n", p
    ),
    "http-1.0": lambda p: _framed(f"HTTP/1.0 200 OK\nContent-Length: {len(p)}\n", p),
    "until-close": lambda p: _framed("HTTP/1.1 200 OK\nConnection: close\n", p),
    "extra-bytes": lambda p: _framed(f"HTTP/1.1 200 OK\nContent-Length: {len(p)}\n", p) + b"x",
}


@pytest.mark.parametrize("kind", sorted(GOOD))
def test_http_good_reply_read_whole_and_kept(raw: Callable[..., RawServer], kind: str) -> None:
    server = raw(lambda body: GOOD[kind](_permit(body)))
    for _ in range(3):
        status, data = _ask(server)
        assert status == 200 and xacml.parse_response(data, expect_in_response_to="Q-raw").uid == 7
    assert server.accepts == 1 and transport.pooled(server.url) == 1
    head = server.heads[0].decode()
    assert head.startswith(f"POST {server.url[5:]} HTTP/1.1\r\nHost: localhost\r\n")
    assert f"Content-Length: {len(QUERY)}" in head and 'SOAPAction: "http://www.globus' in head


@pytest.mark.parametrize("kind", sorted(CLOSING))
def test_http_reply_that_ends_the_connection_is_not_reused(
    raw: Callable[..., RawServer], kind: str
) -> None:
    """`Connection: close`, HTTP/1.0, a body ended by close, stray bytes: a new connection."""
    # the server keeps the connection open unless the framing needs the close
    server = raw(lambda body: CLOSING[kind](_permit(body)), hangup=kind == "until-close")
    for _ in range(2):
        status, data = _ask(server)
        assert status == 200 and xacml.parse_response(data).uid == 7
        assert transport.pooled(server.url) == 0
    assert server.accepts == 2


# fmt: off
BAD = {
    "not-http": (b"SSH-2.0-OpenSSH_9.6\r\n\r\n", "status line"),
    "bad-status": (b"HTTP/1.1 2000 OK\r\n\r\n", "status line"),
    "superscript-digit": ("HTTP/1.1 2\u00b20 OK\r\n\r\n".encode("latin-1"), "status line"),
    "chunk-underscore": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n1_0\r\n"
                         + b"x" * 16 + b"\r\n0\r\n\r\n", "chunk size"),
    "no-colon": (b"HTTP/1.1 200 OK\r\nContent-Length 5\r\n\r\nhello", "malformed header"),
    "long-line": (b"HTTP/1.1 200 OK\r\nX: " + b"a" * 9000 + b"\r\n\r\n", "longer than 8192"),
    "many-headers": (b"HTTP/1.1 200 OK\r\n" + b"X: y\r\n" * 101 + b"\r\n", "more than 100"),
    "bad-length": (b"HTTP/1.1 200 OK\r\nContent-Length: -5\r\n\r\n", "Content-Length"),
    "two-lengths": (b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\nContent-Length: 6\r\n\r\n",
                    "Content-Length"),
    "huge-length": (b"HTTP/1.1 200 OK\r\nContent-Length: 1048577\r\n\r\n",
                    "reply of 1048577 bytes is too large"),
    "huge-chunks": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n80000\r\n"
                    + b"x" * 0x80000 + b"\r\n80001\r\n", "larger than"),
    "huge-until-close": (b"HTTP/1.1 200 OK\r\n\r\n" + b"x" * (1 << 20) + b"y", "larger than"),
    "bad-chunk": (b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n", "chunk size"),
    "short-body": (b"HTTP/1.1 200 OK\r\nContent-Length: 50\r\n\r\nonly this", "after 9 of 50"),
    "cut-headers": (b"HTTP/1.1 200 OK\r\nContent-Le", "inside the headers"),
    "endless-100": (b"HTTP/1.1 100 Continue\r\n\r\n" * 9, "interim"),
}
# fmt: on


@pytest.mark.parametrize("kind", sorted(BAD))
def test_http_malformed_reply_is_garbage(raw: Callable[..., RawServer], kind: str) -> None:
    reply, words = BAD[kind]
    server = raw(lambda body: reply, hangup=True)  # some end only with the connection
    with pytest.raises(AttemptError) as info:
        _ask(server)
    assert info.value.outcome == "garbage" and words in info.value.detail, info.value.detail
    assert transport.pooled(server.url) == 0


def test_http_status_other_than_200_keeps_the_connection(
    raw: Callable[..., RawServer],
) -> None:
    server = raw(lambda body: _framed("HTTP/1.1 503 Busy\nContent-Length: 9\n", b"try later"))
    for _ in range(2):
        with pytest.raises(AttemptError) as info:
            _ask(server)
        assert (info.value.outcome, info.value.detail) == ("http-503", "Busy: try later")
    assert server.accepts == 1


def test_http_hangup_before_reply_is_closed_and_kept_one_retried(
    raw: Callable[..., RawServer],
) -> None:
    """A fresh connection closed without a reply is "closed"; a kept one is retried afresh."""
    hangup = raw(lambda body: None)
    with pytest.raises(AttemptError) as info:
        _ask(hangup)
    assert info.value.outcome == "closed" and "without a reply" in info.value.detail
    answered: list[int] = []

    def every_other(body: bytes) -> bytes | None:  # answers, then closes the kept connection
        answered.append(1)
        return GOOD["length"](_permit(body)) if len(answered) % 2 else None

    flaky = raw(every_other)
    for _ in range(3):
        assert _ask(flaky)[0] == 200
    assert flaky.accepts == 3  # each kept connection found closed was replaced, not failed


def test_http_reader_byte_by_byte() -> None:
    """A reply trickling in one byte per read gives the same result as one in one piece."""
    payload = b"<x>" + "ü".encode() * 3000 + b"</x>"
    for reply in (GOOD["chunked"](payload), CLOSING["until-close"](payload)):
        pieces = iter([reply[i : i + 1] for i in range(len(reply))] + [b""])
        status, reason, body, _ = http11.read_reply(lambda n, it=pieces: next(it), 1 << 20)
        assert (status, reason, body) == (200, "OK", payload)


# -- endpoint URLs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "url,parsed",
    [
        ("https://SCAS.Example.org", ("scas.example.org", 8443, "/")),
        ("https://scas:9443", ("scas", 9443, "/")),
        ("https://scas?x=1", ("scas", 8443, "/?x=1")),
        ("https://scas/p/q?a=b&c=%20", ("scas", 8443, "/p/q?a=b&c=%20")),
        ("https://scas/p?", ("scas", 8443, "/p")),
        ("  https://192.0.2.7:443/x  ", ("192.0.2.7", 443, "/x")),
        ("https://[2001:DB8::1]:9443/x", ("2001:db8::1", 9443, "/x")),
        ("https://[::ffff:192.0.2.7]", ("::ffff:192.0.2.7", 8443, "/")),
        ("HTTPS://under_score.example", ("under_score.example", 8443, "/")),
    ],
)
def test_http_endpoint_parsed(url: str, parsed: tuple[object, ...]) -> None:
    ep = parse_endpoint(url)
    assert (ep.scheme, ep.host, ep.port, ep.path) == ("https", *parsed)
    assert ep == parse_endpoint(url) and hash(ep) == hash(parse_endpoint(url))


@pytest.mark.parametrize(
    "url,words",
    [
        ("https://user@scas/", "no user, password or #fragment"),
        ("https://user:pw@scas:8443/", "no user, password or #fragment"),
        ("https://scas/#frag", "no user, password or #fragment"),
        ("https://scas#", "no user, password or #fragment"),
        ("https://sc as/", "spaces, control or non-ASCII"),
        ("https://scas/a\tb", "spaces, control or non-ASCII"),
        ("https://scäs/", "spaces, control or non-ASCII"),
        ("https://scas:0", "out of range"),
        ("https://scas:65536", "out of range"),
        ("https://scas:84x3", "not a number"),
        ("https://scas:1:2", "not a number"),
        ("https://[::1", "IPv6"),
        ("https://[scas]/", "IPv6"),
        ("https://[::1]x/", "expected https://HOST"),
        ("https://:8443/", "expected https://HOST"),
        ("https://sc*as/", "not a host name"),
        ("https//scas", "expected https://HOST"),
    ],
)
def test_http_bad_endpoint_refused(url: str, words: str) -> None:
    with pytest.raises(ClientConfigError, match="endpoint") as info:
        parse_endpoint(url)
    assert words in info.value.message
