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
- **Cheap to import**: glexec starts once per payload. The HTTP exchange is
  :mod:`client.http11` (http.client would bring the email package), the URL parser is the
  few lines below (urllib.parse), and ssl is imported only for an https endpoint.

Standard library (socket; ssl for https) and :mod:`client.failures`, :mod:`client.http11`.
"""

from __future__ import annotations

import _thread
import os
import socket
import sys
import time

from client import http11
from client.failures import AttemptError, ClientConfigError

TYPE_CHECKING = False
if TYPE_CHECKING:
    import ssl
    from typing import NamedTuple

    class _EndpointFields(NamedTuple):
        url: str
        scheme: str  # "https" or "unix"
        host: str
        port: int | None
        path: str

    class _CredentialFields(NamedTuple):
        cert: str
        key: str | None
        certdir: str

    _PoolKey = tuple[str, "TlsCredentials | None"]
else:
    from collections import namedtuple

    _EndpointFields = namedtuple("_EndpointFields", "url scheme host port path")
    _CredentialFields = namedtuple("_CredentialFields", "cert key certdir")

DEFAULT_PORT = 8443
#: the largest reply read (the server's own request limit is 1 MiB too)
MAX_REPLY = 1 << 20
_SHAPE = "expected https://HOST[:PORT][/PATH] or unix:/PATH"
_HOST_CHARS = frozenset("abcdefghijklmnopqrstuvwxyz0123456789-._")
_IPV6_CHARS = frozenset("0123456789abcdef:.")


class Endpoint(_EndpointFields):
    """A parsed endpoint URL. For ``unix`` endpoints `path` is the socket's path."""

    __slots__ = ()


def parse_endpoint(url: str) -> Endpoint:
    """``https://HOST[:PORT][/PATH][?QUERY]`` (port 8443 by default) or ``unix:/PATH``.

    Plain http is refused: the server only speaks mutual TLS on the network. So are a user,
    a password or a #fragment, and spaces, control or non-ASCII characters (percent- or
    IDNA-encode them). HOST may be a name, an IPv4 address or a [bracketed] IPv6 address.
    """
    text = url.strip()
    if text.startswith("unix:"):
        path = text[5:]
        path = path[2:] if path.startswith("//") else path
        if not path.startswith("/"):
            raise ClientConfigError(f"endpoint {url!r}: a unix endpoint is unix:/absolute/path")
        return Endpoint(text, "unix", "localhost", None, path)
    scheme, sep, rest = text.partition("://")
    if not sep or scheme.lower() != "https":
        raise ClientConfigError(f"endpoint {url!r}: {_SHAPE}")
    if not text.isascii() or not text.isprintable() or " " in text:
        raise ClientConfigError(f"endpoint {url!r}: spaces, control or non-ASCII characters")
    cut = min((i for i in (rest.find("/"), rest.find("?"), rest.find("#")) if i >= 0),
              default=len(rest))  # fmt: skip
    authority, target = rest[:cut], rest[cut:]
    if "@" in authority or "#" in target:
        raise ClientConfigError(f"endpoint {url!r}: no user, password or #fragment allowed")
    host, port = _host_port(url, authority)
    path, _, query = target.partition("?")
    return Endpoint(text, "https", host, port, (path or "/") + (f"?{query}" if query else ""))


def _host_port(url: str, authority: str) -> tuple[str, int]:
    """(lower-cased host without brackets, port) of ``HOST[:PORT]``."""
    if authority.startswith("["):
        host, bracket, after = authority[1:].partition("]")
        host = host.lower()
        if not bracket or ":" not in host or not _IPV6_CHARS.issuperset(host):
            raise ClientConfigError(f"endpoint {url!r}: not a [bracketed] IPv6 address")
        if after and not after.startswith(":"):
            raise ClientConfigError(f"endpoint {url!r}: {_SHAPE}")
        port = after[1:]
    else:
        host, _, port = authority.partition(":")
        host = host.lower()
        if not host:
            raise ClientConfigError(f"endpoint {url!r}: {_SHAPE}")
        if not _HOST_CHARS.issuperset(host):
            raise ClientConfigError(f"endpoint {url!r}: {host!r} is not a host name")
    if not port:
        return host, DEFAULT_PORT
    if not port.isdigit():
        raise ClientConfigError(f"endpoint {url!r}: port {port!r} is not a number")
    if not 0 < int(port) <= 65535:
        raise ClientConfigError(f"endpoint {url!r}: port {int(port)} is out of range 1-65535")
    return host, int(port)


class TlsCredentials(_CredentialFields):
    """Who the client is on TLS and whom it trusts.

    `cert` is a PEM certificate followed by its chain; `key` its key, or None when the key
    is inside `cert` (a proxy file, like ``X509_USER_PROXY``). `certdir` is the hashed CA
    directory the server's certificate must chain to.
    """

    __slots__ = ()


_LOCK = _thread.allocate_lock()  # threading's Lock, without importing threading
_CONTEXTS: dict[TlsCredentials, tuple[tuple[object, ...], ssl.SSLContext]] = {}
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
    import ssl

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


def _stale() -> tuple[type[BaseException], ...]:
    """How a kept connection fails, before any reply byte, when the server has closed it."""
    ssl = sys.modules.get("ssl")  # only an https exchange has loaded it
    if ssl is None:
        return (ConnectionError,)
    return (ConnectionError, ssl.SSLEOFError, ssl.SSLZeroReturnError)


class _TimedSocket:
    """The connection's socket: every send and read ends by `end` (time.monotonic)."""

    def __init__(self, raw: socket.socket) -> None:
        self.raw = raw
        self.end = float("inf")

    def _left(self) -> float:
        left = self.end - time.monotonic()
        if left <= 0:
            raise TimeoutError("time is up")
        return left

    def sendall(self, data: bytes) -> None:
        self.raw.settimeout(self._left())
        self.raw.sendall(data)

    def recv(self, size: int) -> bytes:
        self.raw.settimeout(self._left())
        return self.raw.recv(size)

    def close(self) -> None:
        self.raw.close()


class _Connection:
    """An HTTP/1.1 connection to one endpoint, over TLS or a Unix socket, opened on demand."""

    def __init__(self, endpoint: Endpoint, ctx: ssl.SSLContext | None) -> None:
        self.endpoint = endpoint
        self.ctx = ctx
        self.sock: _TimedSocket | None = None
        host = f"[{endpoint.host}]" if ":" in endpoint.host else endpoint.host
        port = endpoint.port
        self.host_header = host if port in (None, 443) else f"{host}:{port}"

    def open(self, timeout: float, session: ssl.SSLSession | None) -> None:
        """Connect (and finish the TLS handshake) within `timeout` seconds."""
        start = time.monotonic()
        endpoint = self.endpoint
        if endpoint.scheme == "unix":
            raw = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            try:
                raw.settimeout(timeout)
                raw.connect(endpoint.path)
            except BaseException:
                raw.close()
                raise
        else:
            assert self.ctx is not None
            raw = socket.create_connection((endpoint.host, endpoint.port), timeout)
            try:
                raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                raw.setsockopt(socket.SOL_SOCKET, socket.SO_KEEPALIVE, 1)
                raw.settimeout(max(timeout - (time.monotonic() - start), 0.001))
                # `session` comes from this same context (the caller checks): resumption
                raw = self.ctx.wrap_socket(raw, server_hostname=endpoint.host, session=session)
            except BaseException:
                raw.close()
                raise
        self.sock = _TimedSocket(raw)

    def close(self) -> None:
        sock, self.sock = self.sock, None
        if sock is not None:
            sock.close()


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
    ssl = sys.modules.get("ssl")  # only an https exchange has loaded it
    if ssl is not None and isinstance(exc, ssl.SSLCertVerificationError):
        return AttemptError("tls", f"server certificate refused: {exc.verify_message}")
    if isinstance(exc, _stale()):
        where = "during the TLS handshake" if phase == "connect" else "before the reply"
        return AttemptError("closed", f"connection closed {where}: {exc}")
    if ssl is not None and isinstance(exc, ssl.SSLError):
        return AttemptError("tls", f"TLS failed: {exc.reason or exc}")
    if isinstance(exc, http11.ReplyError):
        return AttemptError("garbage", str(exc))
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
    timed = conn.sock
    assert timed is not None
    start = time.monotonic()
    timed.end = min(start + read_timeout, deadline_at)
    limit = timed.end - start
    if limit <= 0:
        raise AttemptError("timeout", "no time left for the reply")
    try:
        return _reply(conn, key, body)
    except AttemptError:
        raise
    except Exception as exc:
        if isinstance(exc, _stale()):
            raise  # a stale kept connection is the caller's to retry
        raise _classify(exc, "reply", limit) from None


def _reply(conn: _Connection, key: _PoolKey, body: bytes) -> tuple[int, bytes]:
    timed = conn.sock
    assert timed is not None
    timed.sendall(http11.request(conn.endpoint.path, conn.host_header, body))
    status, reason, data, close = http11.read_reply(timed.recv, MAX_REPLY)
    if conn.ctx is not None:  # TLS: keep the session for the next handshake
        session = getattr(timed.raw, "session", None)
        if session is not None:
            _SESSIONS[key] = (conn.ctx, session)
    if close:  # "Connection: close", or a body that ended with the connection
        conn.close()
    if status != 200:
        snippet = data[:120].decode("utf-8", "replace")
        raise AttemptError(f"http-{status}", f"{reason}: {snippet}".strip(": "))
    return status, data


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
        except _stale() as exc:
            if not reused:
                raise _classify(exc, "reply", 0.0) from None
            conn.close()  # the server dropped the idle connection: once more, afresh
            result = _round_trip(conn, key, body, connect_timeout, read_timeout, deadline_at)
        keep = True
        return result
    except AttemptError as exc:
        keep = exc.outcome.startswith("http-")  # the reply was read whole: still usable
        raise
    except _stale() as exc:
        raise _classify(exc, "reply", 0.0) from None
    finally:
        if keep and conn.sock is not None:
            _checkin(key, conn)
        else:
            conn.close()
