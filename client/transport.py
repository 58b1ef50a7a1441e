"""One SCAS round trip: HTTP/1.1 POST over mutual TLS or the node-local Unix socket.

In:  an endpoint (``https://host[:port][/path]`` or ``unix:/path``), the query bytes, the TLS
     credential (a host cert + key, or a proxy file holding cert, key and chain) and a hashed
     CA directory, and the attempt's time limits.
Out: (HTTP status, reply bytes), or an `AttemptError` whose outcome class says what went
     wrong (refused, timeout, tls, closed, garbage, http-NNN...).

Why it is built this way:

- **Kept-alive connections, one per endpoint per process.** A TLS handshake with an RSA-2048
  host key costs more than the decision itself; a CE or a pilot asks many times. The module
  pool is keyed by endpoint and credential files. A kept connection the server has dropped
  (its idle timeout) is retried once on a fresh connection before the attempt counts as
  failed. A fresh connection offers the last TLS session, so even a reconnect is cheap.
- **Hard time limits.** The connect phase (TCP + TLS handshake) has its own limit; the reply
  must be *complete* by its limit: each read gets only the time left, so a server that
  trickles one byte at a time cannot stretch an attempt (per-read socket timeouts would
  let it). The caller shrinks both limits to its overall deadline.
- **Verification as the old C client did it**: the server certificate against a hashed CA
  directory (``-capath``), and the host name from the URL. A proxy file is loaded with
  ``load_cert_chain(proxy)``, which also sends the chain behind the proxy so the server can
  verify it.
- A renewed credential file (new mtime/size) gets a new TLS context and new connections.
- After ``fork()``, the child never reuses the parent's TLS connections.

Standard library (ssl, http.client, socket) and :mod:`client.failures` only.
"""

from __future__ import annotations

import http.client
import io
import math
import os
import socket
import ssl
import threading
import time
from dataclasses import dataclass
from typing import TYPE_CHECKING
from urllib.parse import urlsplit

from client.failures import AttemptError, ClientConfigError

if TYPE_CHECKING:
    from _typeshed import WriteableBuffer

DEFAULT_PORT = 8443
#: the largest reply read (the server's own request limit is 1 MiB too)
MAX_REPLY = 1 << 20
_SOAP_ACTION = (
    '"http://www.globus.org/security/XACMLAuthorization/'
    'XACMLAuthorizationPortType/AuthorizeRequest"'
)
_HEADERS = {"Content-Type": "text/xml; charset=utf-8", "SOAPAction": _SOAP_ACTION}
#: a kept connection failing like this, before any reply byte, was closed by the server
_STALE = (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


@dataclass(frozen=True)
class Endpoint:
    """A parsed endpoint URL. For ``unix`` endpoints `path` is the socket's path."""

    url: str
    scheme: str  # "https" or "unix"
    host: str
    port: int | None
    path: str


def parse_endpoint(url: str) -> Endpoint:
    """``https://HOST[:PORT][/PATH]`` (port 8443 by default) or ``unix:/PATH``.

    Plain http is refused: the server only speaks mutual TLS on the network.
    """
    text = url.strip()
    if text.startswith("unix:"):
        path = text[5:]
        path = path[2:] if path.startswith("//") else path
        if not path.startswith("/"):
            raise ClientConfigError(f"endpoint {url!r}: a unix endpoint is unix:/absolute/path")
        return Endpoint(text, "unix", "localhost", None, path)
    try:
        parts = urlsplit(text)
        port = parts.port
    except ValueError as exc:
        raise ClientConfigError(f"endpoint {url!r}: {exc}") from None
    if parts.scheme != "https" or not parts.hostname:
        raise ClientConfigError(
            f"endpoint {url!r}: expected https://HOST[:PORT][/PATH] or unix:/PATH"
        )
    if parts.username or parts.password or parts.fragment:
        raise ClientConfigError(f"endpoint {url!r}: no user, password or #fragment allowed")
    path = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
    return Endpoint(text, "https", parts.hostname, port or DEFAULT_PORT, path)


@dataclass(frozen=True)
class TlsCredentials:
    """Who the client is on TLS and whom it trusts.

    `cert` is a PEM certificate followed by its chain; `key` its key, or None when the key
    is inside `cert` (a proxy file, like ``X509_USER_PROXY``). `certdir` is the hashed CA
    directory the server's certificate must chain to.
    """

    cert: str
    key: str | None
    certdir: str


_LOCK = threading.Lock()
_CONTEXTS: dict[TlsCredentials, tuple[tuple[object, ...], ssl.SSLContext]] = {}
_PoolKey = tuple[str, TlsCredentials | None]
_POOL: dict[_PoolKey, _Connection] = {}
_SESSIONS: dict[_PoolKey, tuple[ssl.SSLContext, ssl.SSLSession]] = {}
_PID = [os.getpid()]


def _file_state(creds: TlsCredentials) -> tuple[object, ...]:
    state: list[object] = []
    for path in (creds.cert, creds.key):
        if path is None:
            continue
        try:
            st = os.stat(path)
        except OSError as exc:
            raise ClientConfigError(f"client credential {path}: {exc.strerror}") from None
        state.append((path, st.st_ino, st.st_mtime_ns, st.st_size))
    return tuple(state)


def tls_context(creds: TlsCredentials) -> ssl.SSLContext:
    """The (cached) client context for `creds`; rebuilt when a credential file changes.

    Raises ClientConfigError for a missing CA directory or an unusable cert/key.
    """
    state = _file_state(creds)
    with _LOCK:
        cached = _CONTEXTS.get(creds)
    if cached is not None and cached[0] == state:
        return cached[1]
    if not os.path.isdir(creds.certdir):
        raise ClientConfigError(f"CA directory {creds.certdir}: not a directory")
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # check_hostname and CERT_REQUIRED
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_verify_locations(capath=creds.certdir)
    try:
        ctx.load_cert_chain(creds.cert, creds.key)
    except OSError as exc:  # ssl.SSLError is an OSError too
        names = creds.cert + (f" + {creds.key}" if creds.key else "")
        reason = getattr(exc, "reason", None) or exc.strerror or str(exc)
        raise ClientConfigError(f"cannot use client credential {names}: {reason}") from None
    with _LOCK:
        _CONTEXTS[creds] = (state, ctx)
    return ctx


class _DeadlineReader(io.RawIOBase):
    """Reads from a `_TimedSocket`, each read getting only the time left before its end."""

    def __init__(self, owner: _TimedSocket) -> None:
        super().__init__()
        self._owner = owner

    def readable(self) -> bool:
        return True

    def readinto(self, buffer: WriteableBuffer) -> int:
        return self._owner.recv_into(buffer)

    def close(self) -> None:
        if not self.closed:
            self._owner.reader_closed()
        super().close()


class _TimedSocket:
    """The socket http.client sees: every send and read ends by `end` (time.monotonic).

    Closing is deferred while a response still reads from it, as socket.makefile does.
    """

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self.end = math.inf
        self._readers = 0
        self._closing = False

    def _left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("time is up")
        return left

    def sendall(self, data: bytes) -> None:
        self.raw.settimeout(self._left())
        self.raw.sendall(data)

    def recv_into(self, buffer: WriteableBuffer) -> int:
        self.raw.settimeout(self._left())
        return self.raw.recv_into(buffer)

    def makefile(self, mode: str = "rb") -> io.BufferedReader:
        self._readers += 1
        return io.BufferedReader(_DeadlineReader(self))

    def reader_closed(self) -> None:
        self._readers -= 1
        if self._closing and self._readers <= 0:
            self.raw.close()

    def close(self) -> None:
        self._closing = True
        if self._readers <= 0:
            self.raw.close()


class _Connection(http.client.HTTPConnection):
    """An HTTP/1.1 connection to one endpoint, over TLS or a Unix socket, opened on demand."""

    def __init__(self, endpoint: Endpoint, ctx: ssl.SSLContext | None) -> None:
        super().__init__(endpoint.host, endpoint.port)
        self.endpoint = endpoint
        self.ctx = ctx

    def open(self, timeout: float, session: ssl.SSLSession | None) -> None:
        """Connect (and finish the TLS handshake) within `timeout` seconds."""
        start = time.monotonic()
        if self.endpoint.scheme == "unix":
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                raw.settimeout(timeout)
                raw.connect(self.endpoint.path)
            except BaseException:
                raw.close()
                raise
        else:
            assert self.ctx is not None
            raw = socket.create_connection((self.host, self.port), timeout)
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                raw.settimeout(max(timeout - (time.monotonic() - start), 0.001))
                # `session` comes from this same context (the caller checks): resumption
                raw = self.ctx.wrap_socket(raw, server_hostname=self.host, session=session)
            except BaseException:
                raw.close()
                raise
        self.sock = _TimedSocket(raw)

    def connect(self) -> None:  # http.client's auto-open; we always open() first
        self.open(self.timeout if isinstance(self.timeout, float | int) else 30.0, None)

    @property
    def timed(self) -> _TimedSocket | None:
        sock: object = self.sock
        return sock if isinstance(sock, _TimedSocket) else None


def _checkout(key: _PoolKey, endpoint: Endpoint, ctx: ssl.SSLContext | None) -> _Connection:
    with _LOCK:
        if _PID[0] != os.getpid():  # forked: the parent's connections are not ours
            for stale in _POOL.values():
                stale.close()
            _POOL.clear()
            _SESSIONS.clear()
            _PID[0] = os.getpid()
        conn = _POOL.pop(key, None)
    if conn is not None and conn.ctx is ctx:
        return conn
    if conn is not None:  # the credential changed: do not reuse the old identity
        conn.close()
    return _Connection(endpoint, ctx)


def _checkin(key: _PoolKey, conn: _Connection) -> None:
    with _LOCK:
        if key not in _POOL:
            _POOL[key] = conn
            return
    conn.close()  # another thread kept one meanwhile: one per endpoint is enough


def close_all(*, keep_sessions: bool = False, keep_contexts: bool = False) -> None:
    """Close every kept connection (before a fork, in tests and benchmarks).

    Also forgets the TLS sessions (so the next handshake is a full one) unless
    `keep_sessions`, and the TLS contexts (reloading the credential) unless `keep_contexts`
    or `keep_sessions` (a session belongs to its context).
    """
    with _LOCK:
        conns = list(_POOL.values())
        _POOL.clear()
        if not keep_sessions:
            _SESSIONS.clear()
            if not keep_contexts:
                _CONTEXTS.clear()
    for conn in conns:
        conn.close()


def pooled(endpoint: str) -> int:
    """How many kept connections the pool holds for `endpoint` (for tests)."""
    with _LOCK:
        return sum(1 for (url, _), c in _POOL.items() if url == endpoint and c.sock is not None)


def _classify(exc: BaseException, phase: str, limit: float) -> AttemptError:
    """An exception from one phase ("connect" or "reply") as an outcome class."""
    if isinstance(exc, AttemptError):
        return exc
    if isinstance(exc, ConnectionRefusedError):
        return AttemptError("refused", "connection refused")
    if isinstance(exc, socket.gaierror):
        return AttemptError("dns", f"host name does not resolve: {exc.strerror}")
    if isinstance(exc, TimeoutError):
        if phase == "connect":
            return AttemptError("timeout", f"no connection and TLS handshake within {limit:.2f} s")
        return AttemptError("timeout", f"no complete reply within {limit:.2f} s")
    if isinstance(exc, ssl.SSLCertVerificationError):
        return AttemptError("tls", f"server certificate refused: {exc.verify_message}")
    if isinstance(exc, _STALE):
        where = "during the TLS handshake" if phase == "connect" else "before the reply"
        return AttemptError("closed", f"connection closed {where}: {exc}")
    if isinstance(exc, ssl.SSLError):
        return AttemptError("tls", f"TLS failed: {exc.reason or exc}")
    if isinstance(exc, http.client.HTTPException):
        return AttemptError("garbage", f"not an HTTP reply: {type(exc).__name__} {exc}")
    if isinstance(exc, OSError):
        return AttemptError("network", exc.strerror or str(exc))
    return AttemptError("network", f"{type(exc).__name__}: {exc}")


def _round_trip(
    conn: _Connection,
    key: _PoolKey,
    body: bytes,
    connect_timeout: float,
    read_timeout: float,
    deadline_at: float,
) -> tuple[int, bytes]:
    if conn.sock is None:
        limit = min(connect_timeout, deadline_at - time.monotonic())
        if limit <= 0:
            raise AttemptError("timeout", "no time left to connect")
        session = _SESSIONS.get(key)
        try:
            conn.open(limit, session[1] if session and session[0] is conn.ctx else None)
        except Exception as exc:
            raise _classify(exc, "connect", limit) from None
    timed = conn.timed
    assert timed is not None
    start = time.monotonic()
    timed.end = min(start + read_timeout, deadline_at)
    limit = timed.end - start
    if limit <= 0:
        raise AttemptError("timeout", "no time left for the reply")
    try:
        return _reply(conn, key, body)
    except (AttemptError, *_STALE):
        raise  # a stale kept connection is the caller's to retry
    except Exception as exc:
        raise _classify(exc, "reply", limit) from None


def _reply(conn: _Connection, key: _PoolKey, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", conn.endpoint.path, body=body, headers=_HEADERS)
    resp = conn.getresponse()
    if resp.length is not None and resp.length > MAX_REPLY:
        raise AttemptError("garbage", f"reply of {resp.length} bytes is too large")
    data = resp.read(MAX_REPLY + 1)
    if len(data) > MAX_REPLY or not resp.isclosed():
        raise AttemptError("garbage", f"reply larger than {MAX_REPLY} bytes")
    timed = conn.timed
    if timed is not None and isinstance(timed.raw, ssl.SSLSocket) and conn.ctx is not None:
        session = timed.raw.session
        if session is not None:
            _SESSIONS[key] = (conn.ctx, session)
    if resp.status != 200:
        snippet = data[:120].decode("utf-8", "replace")
        raise AttemptError(f"http-{resp.status}", f"{resp.reason}: {snippet}".strip(": "))
    return resp.status, data


def exchange(
    endpoint: Endpoint,
    body: bytes,
    *,
    tls: TlsCredentials | None,
    connect_timeout: float,
    read_timeout: float,
    deadline_at: float,
) -> tuple[int, bytes]:
    """POST `body`; (200, reply bytes) or AttemptError. Ends by `deadline_at` (monotonic).

    A kept connection that turns out closed is retried once on a fresh one. Raises
    ClientConfigError (before any connection) when `tls` is unusable.
    """
    if endpoint.scheme == "https":
        if tls is None:
            raise ClientConfigError(f"{endpoint.url}: a TLS endpoint needs a client credential")
        ctx: ssl.SSLContext | None = tls_context(tls)
        key: _PoolKey = (endpoint.url, tls)
    else:
        ctx, key = None, (endpoint.url, None)
    conn = _checkout(key, endpoint, ctx)
    keep = False
    try:
        reused = conn.sock is not None
        try:
            result = _round_trip(conn, key, body, connect_timeout, read_timeout, deadline_at)
        except _STALE as exc:
            if not reused:
                raise _classify(exc, "reply", 0.0) from None
            conn.close()  # the server dropped the idle connection: once more, afresh
            result = _round_trip(conn, key, body, connect_timeout, read_timeout, deadline_at)
        keep = True
        return result
    except AttemptError as exc:
        keep = exc.outcome.startswith("http-")  # the reply was read whole: still usable
        raise
    except _STALE as exc:
        raise _classify(exc, "reply", 0.0) from None
    finally:
        if keep and conn.sock is not None:
            _checkin(key, conn)
        else:
            conn.close()
