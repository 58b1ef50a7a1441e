"""The client's side of one HTTP/1.1 exchange: write a SOAP POST, read one bounded reply.

In:  the request target, Host and body; a `recv(n)` that returns b"" at end of stream (the
     transport's deadline-keeping socket).
Out: (status, reason, body, close): `close` says the connection cannot carry another
     request. A reply that is not well-formed HTTP/1.1, or larger than the bound, raises
     `ReplyError`; end of stream before the first byte of a reply raises ConnectionResetError
     (the transport's sign that a kept-alive connection was closed by the server).

Why not http.client: it pulls in the email package (27 ms of imports), and glexec, which
starts once per payload, makes one POST. Everything read is bounded: a line to 8 KiB, the
headers to 100, the body to the caller's limit, interim (1xx) replies to 8.
Standard library only (nothing imported at all).
"""

from __future__ import annotations

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable

MAX_LINE = 8 * 1024
MAX_HEADERS = 100
MAX_INTERIM = 8
_CHUNK = 64 * 1024
_SOAP_ACTION = (
    b'"http://www.globus.org/security/XACMLAuthorization/'
    b'XACMLAuthorizationPortType/AuthorizeRequest"'
)


class ReplyError(Exception):
    """The peer's bytes are not a usable HTTP/1.1 reply (malformed, or over a bound)."""


def request(target: str, host: str, body: bytes) -> bytes:
    """The POST of a SOAP 1.1 `body` to `target` (path and query) on `host`, in one piece."""
    head = (
        f"POST {target} HTTP/1.1\r\nHost: {host}\r\n"
        "Content-Type: text/xml; charset=utf-8\r\nSOAPAction: "
    ).encode("ascii")
    return b"%s%s\r\nContent-Length: %d\r\n\r\n%s" % (head, _SOAP_ACTION, len(body), body)


class _Reader:
    """Buffered, bounded reads over `recv`."""

    def __init__(self, recv: Callable[[int], bytes]) -> None:
        self._recv = recv
        self.buffer = bytearray()

    def _fill(self) -> bool:
        chunk = self._recv(_CHUNK)
        self.buffer += chunk
        return bool(chunk)

    def line(self, what: str) -> bytes:
        """One line with its end (b"" at end of stream); ReplyError past MAX_LINE."""
        scanned = 0
        while True:
            end = self.buffer.find(b"\n", scanned)
            if end >= 0:
                if end >= MAX_LINE:
                    break
                line = bytes(self.buffer[: end + 1])
                del self.buffer[: end + 1]
                return line
            scanned = len(self.buffer)
            if scanned > MAX_LINE:
                break
            if not self._fill():
                line = bytes(self.buffer)
                self.buffer.clear()
                return line
        raise ReplyError(f"{what} longer than {MAX_LINE} bytes")

    def exactly(self, size: int) -> bytes:
        while len(self.buffer) < size:
            if not self._fill():
                raise ReplyError(f"reply ended after {len(self.buffer)} of {size} body bytes")
        data = bytes(self.buffer[:size])
        del self.buffer[:size]
        return data

    def until_close(self, limit: int) -> bytes:
        while len(self.buffer) <= limit and self._fill():
            pass
        if len(self.buffer) > limit:
            raise ReplyError(f"reply larger than {limit} bytes")
        data = bytes(self.buffer)
        self.buffer.clear()
        return data


def _status(line: bytes) -> tuple[str, int, str]:
    """(version, status, reason) of a status line."""
    text = line.decode("iso-8859-1").rstrip("\r\n")
    version, _, rest = text.partition(" ")
    code, _, reason = rest.partition(" ")
    if not version.startswith("HTTP/1.") or len(code) != 3 or not (code.isascii()
                                                                    and code.isdigit()):
        raise ReplyError(f"not an HTTP reply: status line {text[:80]!r}")
    return version, int(code), reason.strip()


def _headers(reader: _Reader) -> dict[str, str]:
    """The header fields, names lower-cased; repeated fields joined with ", "."""
    fields: dict[str, str] = {}
    last = ""
    for _ in range(MAX_HEADERS + 1):
        line = reader.line("a header line")
        if line in (b"\r\n", b"\n"):
            return fields
        if not line.endswith(b"\n"):
            raise ReplyError("reply ended inside the headers")
        text = line.decode("iso-8859-1").strip()
        if line[:1] in (b" ", b"\t") and last:  # obsolete line folding: one space (RFC 7230)
            fields[last] += " " + text
            continue
        name, colon, value = text.partition(":")
        name = name.lower()
        if not colon or not name or name != name.strip() or " " in name:
            raise ReplyError(f"malformed header line {text[:80]!r}")
        fields[name] = f"{fields[name]}, {value.strip()}" if name in fields else value.strip()
        last = name
    raise ReplyError(f"more than {MAX_HEADERS} header lines")


def _length(fields: dict[str, str], limit: int) -> int | None:
    """Content-Length, if any; ReplyError when it is not one number or is over `limit`."""
    raw = fields.get("content-length")
    if raw is None:
        return None
    values = {v.strip() for v in raw.split(",")}
    value = values.pop() if len(values) == 1 else ""
    if not (value.isascii() and value.isdigit()):
        raise ReplyError(f"bad Content-Length {raw[:40]!r}")
    if int(value) > limit:
        raise ReplyError(f"reply of {int(value)} bytes is too large")
    return int(value)


def _chunked(reader: _Reader, limit: int) -> bytes:
    body = bytearray()
    while True:
        line = reader.line("a chunk size line")
        size_text = line.split(b";", 1)[0].strip()
        hex_only = bool(size_text) and all(c in b"0123456789abcdefABCDEF" for c in size_text)
        size = int(size_text, 16) if hex_only and len(size_text) <= 16 else -1
        if size < 0 or not line.endswith(b"\n") or size_text.startswith((b"-", b"+", b"0x")):
            raise ReplyError(f"bad chunk size line {line[:40]!r}")
        if size == 0:
            break
        if len(body) + size > limit:
            raise ReplyError(f"reply larger than {limit} bytes")
        body += reader.exactly(size)
        if reader.line("a chunk end") not in (b"\r\n", b"\n"):
            raise ReplyError("chunk not followed by a line end")
    for _ in range(MAX_HEADERS + 1):  # trailer fields, ignored
        if reader.line("a trailer line") in (b"\r\n", b"\n"):
            return bytes(body)
    raise ReplyError(f"more than {MAX_HEADERS} trailer lines")


def read_reply(recv: Callable[[int], bytes], limit: int) -> tuple[int, str, bytes, bool]:
    """(status, reason, body, close) of the next reply; interim 1xx replies are skipped."""
    reader = _Reader(recv)
    for _ in range(MAX_INTERIM):
        line = reader.line("the status line")
        if not line:
            raise ConnectionResetError("the server closed the connection without a reply")
        version, status, reason = _status(line)
        fields = _headers(reader)
        if status >= 200:
            break
    else:
        raise ReplyError(f"more than {MAX_INTERIM} interim (1xx) replies")
    connection = fields.get("connection", "").lower()
    if version == "HTTP/1.0":
        close = "keep-alive" not in connection
    else:
        close = "close" in connection
    if status in (204, 304):
        body = b""
    elif fields.get("transfer-encoding", "").rpartition(",")[2].strip().lower() == "chunked":
        body = _chunked(reader, limit)
    elif "transfer-encoding" in fields:  # another coding: the body ends with the connection
        body, close = reader.until_close(limit), True
    else:
        length = _length(fields, limit)
        if length is None:
            body, close = reader.until_close(limit), True
        else:
            body = reader.exactly(length)
    return status, reason, body, close or bool(reader.buffer)
