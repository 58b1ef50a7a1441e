"""Connections that idle, stall or trickle cannot stop the service (default configuration).

Against a real ``scas-server`` with its defaults (gevent workers; deadlines for the TLS
handshake, the headers and the body), the test holds 1,000 stalled ClientHellos, 1,000 idle
TLS connections and 200 slowloris clients open while it times legitimate queries, then checks
that the server dropped each kind within its deadline. Also here: TLS session resumption
(the PEP keeps its identity) and CRLs replaced on disk while the server runs.
"""

from __future__ import annotations

import http.client
import os
import resource
import shutil
import socket
import ssl
import statistics
import subprocess
import threading
import time
from collections.abc import Callable, Iterator

import pytest
import yaml
from cryptography import x509
from server_harness import PEP_DN, USER_DN, Server, Site

from client import xacml

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(str(tmp_path_factory.mktemp("scas-conn")))


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Server]:
    srv = Server(site, site.write_config())
    yield srv
    srv.stop()


@pytest.fixture(autouse=True, scope="module")
def many_descriptors() -> None:
    _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < 5000:
        pytest.skip(f"needs 5,000 open files, the hard limit is {hard}")
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def client_hello() -> bytes:
    """The bytes of a real TLS ClientHello, from an in-memory handshake."""
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname, ctx.verify_mode = False, ssl.CERT_NONE
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    obj = ctx.wrap_bio(incoming, outgoing, server_hostname="localhost")
    with pytest.raises(ssl.SSLWantReadError):
        obj.do_handshake()
    return outgoing.read()


def timed_queries(server: Server, site: Site, n: int) -> list[float]:
    """Seconds per query, each on a new connection (the C clients' way)."""
    out = []
    for _ in range(n):
        t0 = time.perf_counter()
        status, body = server.post(site.query())
        assert status == 200 and xacml.parse_response(body).decision == "Permit"
        out.append(time.perf_counter() - t0)
    return out


def open_plain(port: int, n: int, first: bytes = b"") -> list[socket.socket]:
    socks = []
    for _ in range(n):
        s = socket.create_connection(("127.0.0.1", port))
        if first:
            s.sendall(first)
        socks.append(s)
    return socks


def open_tls(server: Server, n: int) -> list[ssl.SSLSocket]:
    ctx = server.client_context()
    socks = []
    for _ in range(n):
        raw = socket.create_connection(("127.0.0.1", server.port))
        socks.append(ctx.wrap_socket(raw, server_hostname="localhost"))
    return socks


def closed_by_server(sock: socket.socket, within: float) -> bool:
    """Whether the server closes ``sock`` within ``within`` seconds (what it sent first, a
    ServerHello for instance, is read and ignored)."""
    deadline = time.monotonic() + within
    try:
        while (left := deadline - time.monotonic()) > 0:
            sock.settimeout(left)
            if sock.recv(65536) == b"":
                return True
    except (ConnectionError, ssl.SSLError):
        return True
    except TimeoutError:
        pass
    return False


def test_idle_stalled_and_slow_clients_do_not_delay_queries(server: Server, site: Site) -> None:
    baseline = timed_queries(server, site, 10)
    hello = client_hello()
    stalled = open_plain(server.port, 1000, hello)
    idle = open_tls(server, 1000)
    slow = open_tls(server, 200)
    stop = threading.Event()

    def trickle() -> None:  # slowloris: a header byte now and then, never a whole request
        for s in slow:
            s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\n")
        while not stop.wait(0.5):
            for s in slow:
                try:
                    s.sendall(b"X")
                except OSError:
                    pass

    t = threading.Thread(target=trickle, daemon=True)
    t.start()
    try:
        during = timed_queries(server, site, 20)
        assert max(during) - statistics.median(baseline) < 0.5, (baseline, during)
        # each kind is dropped within its deadline (handshake 5 s, headers 5 s) plus slack
        assert all(closed_by_server(s, 10) for s in stalled)
        assert all(closed_by_server(s, 10) for s in idle)
        assert all(closed_by_server(s, 10) for s in slow)
    finally:
        stop.set()
        for s in (*stalled, *idle, *slow):
            s.close()
    assert timed_queries(server, site, 3)
    assert server.proc.poll() is None


def test_slow_body_is_dropped(server: Server, site: Site) -> None:
    """Headers promptly, then the body a byte at a time: 408 after body_timeout, and the
    worker is free for others meanwhile."""
    body = site.query()
    s = open_tls(server, 1)[0]
    s.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
              b"Content-Length: %d\r\n\r\n" % len(body) + body[:10])
    t0 = time.monotonic()
    assert timed_queries(server, site, 3)
    s.settimeout(20)
    reply = s.recv(4096)
    s.close()
    assert reply.startswith(b"HTTP/1.1 408") and 9 < time.monotonic() - t0 < 15


def test_resumed_session_keeps_the_pep_identity(server: Server, site: Site) -> None:
    """A client that resumes its TLS session (curl does by default) is the same PEP."""
    for cert, identity in (((site.pep.cert_path, site.pep.key_path), PEP_DN),
                           (site.pki.proxy(site.user), USER_DN)):
        ctx = server.client_context(cert)
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2  # session-ID resumption
        sessions: list[ssl.SSLSession] = []
        # the session cache is per worker: a connection the kernel hands to another worker
        # than the one that made the session cannot resume. Under load the workers take
        # turns, so offer the last session and the one before it by turns, enough times
        for attempt in range(24):
            session = sessions[-1 - attempt % 2] if len(sessions) > 1 else (
                sessions[-1] if sessions else None)
            raw = socket.create_connection(("127.0.0.1", server.port))
            conn = ctx.wrap_socket(raw, server_hostname="localhost", session=session)
            body = site.query()
            conn.sendall(b"POST / HTTP/1.1\r\nHost: x\r\nContent-Type: text/xml\r\n"
                         b"Connection: close\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            reply = b""
            while chunk := conn.recv(65536):
                reply += chunk
            resumed = conn.session_reused
            if conn.session is not None:
                sessions.append(conn.session)
            conn.close()
            assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
            assert site.audit_lines()[-1]["pep"] == identity
            if attempt and resumed:
                break
        assert resumed, "the server never resumed a session"


def test_curl_with_resumption(
    server: Server, site: Site, tmp_path_factory: pytest.TempPathFactory
) -> None:
    """curl resumes TLS sessions by default; every one of its queries is answered."""
    curl = shutil.which("curl")
    if curl is None:
        pytest.skip("curl not installed")
    query = tmp_path_factory.mktemp("curl") / "q.xml"
    query.write_bytes(site.query())
    url = f"https://localhost:{server.port}/"
    n = 20
    per_url = [arg for _ in range(n) for arg in ("-o", "/dev/null", url)]
    proc = subprocess.run(
        [curl, "-s", "--cert", site.pep.cert_path, "--key", site.pep.key_path, "--cacert",
         site.ca_file, "-H", "Content-Type: text/xml", "-H", "Connection: close",
         "--data-binary", f"@{query}", "-w", "%{http_code}\n", *per_url],
        capture_output=True, text=True, timeout=120)
    assert proc.stdout.split() == ["200"] * n, proc.stderr


def _crl_round_trip(srv: Server, site: Site, name: str, settle: float) -> None:
    """Revoke a PEP by rewriting the CRL in place, then restore it fetch-crl style (a new
    file renamed over the old one): the open connection and the next one see each change
    within ``settle`` seconds (0: at the very next query), with no reload."""
    pep = site.pki.host(f"{name}.example.org", f"/DC=org/DC=example/CN=pep.{name}.example.org")
    cert = (pep.cert_path, pep.key_path)
    conn = http.client.HTTPSConnection("localhost", srv.port, timeout=20,
                                       context=srv.client_context(cert))

    def ask(c: http.client.HTTPSConnection) -> int:
        c.request("POST", "/", body=site.query(), headers={"Content-Type": "text/xml"})
        reply = c.getresponse()
        reply.read()
        return reply.status

    def within(want: int, probe: Callable[[], int]) -> int:
        deadline = time.monotonic() + settle + 0.5
        got = probe()
        while settle and got != want and time.monotonic() < deadline:
            time.sleep(0.05)
            got = probe()
        return got

    assert ask(conn) == 200
    crl = next(p for p in (os.path.join(site.pki.certdir, f) for f in os.listdir(
        site.pki.certdir)) if p.endswith(".r0"))
    with open(crl, "rb") as fh:
        before = fh.read()
    with open(pep.cert_path, "rb") as fh:
        site.pki.revoke(x509.load_pem_x509_certificate(fh.read()))  # rewritten in place
    try:
        assert within(403, lambda: ask(conn)) == 403  # the same connection
        assert srv.post(site.query(), cert=cert)[0] == 403  # next connection
        tmp = crl + ".new"
        with open(tmp, "wb") as fh:
            fh.write(before)
        os.replace(tmp, crl)
        assert within(200, lambda: srv.post(site.query(), cert=cert)[0]) == 200
    finally:
        conn.close()


def test_crl_replaced_on_disk_revokes_within_the_recheck_interval(
    server: Server, site: Site
) -> None:
    """The default ``trust.recheck_seconds`` (1 s): a CRL change counts within a second."""
    _crl_round_trip(server, site, "two", settle=1.0)


def test_crl_replaced_on_disk_revokes_at_the_next_query_with_recheck_zero(site: Site) -> None:
    """``trust.recheck_seconds: 0``: every query looks at the files, as C SCAS did."""
    settings = site.settings(trust={"certdir": site.pki.certdir, "vomsdir": site.pki.vomsdir,
                                    "recheck_seconds": 0})
    path = os.path.join(site.directory, "scas-recheck0.yaml")
    with open(path, "w") as fh:
        yaml.safe_dump(settings, fh)
    srv = Server(site, settings, config_path=path)
    try:
        _crl_round_trip(srv, site, "three", settle=0)
    finally:
        srv.stop()


def test_monitor_allow_reads_health_but_cannot_query(site: Site) -> None:
    """A monitoring host on ``monitor_allow`` reads /health and /metrics; it is not a PEP."""
    from server_harness import ROGUE_DN

    srv = Server(site, site.write_config(monitor_allow=[ROGUE_DN]))
    try:
        monitor = (site.rogue.cert_path, site.rogue.key_path)
        assert srv.request("GET", "/health", cert=monitor)[0] == 200
        assert srv.request("GET", "/metrics", cert=monitor)[0] == 200
        assert srv.post(site.query(), cert=monitor)[0] == 403
    finally:
        srv.stop()
