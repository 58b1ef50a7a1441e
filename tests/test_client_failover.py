"""The failover client against misbehaving endpoints: real sockets, real TLS, loopback only.

Each fault endpoint is a tiny server written here (socket + ssl + threads) that does one
wrong thing: refuse, stay silent, stall mid-reply, trickle, answer garbage, 500, 403, use a
certificate from an unknown CA, answer Indeterminate, drop kept connections. Every test asks
in a fixed order (round-robin) and checks what each endpoint saw.
"""

from __future__ import annotations

import json
import os
import socket
import ssl
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from client import transport, xacml
from client.endpoint_memory import EndpointMemory
from client.failover import FailoverClient
from client.failures import AllEndpointsFailed, ClientConfigError
from client.query import Query, build_query, read_chain
from testkit.pki import Host, TestPKI, User

REPO = Path(__file__).resolve().parent.parent
PEP_DN = "/DC=org/DC=example/CN=pep.example.org"
USER_DN = "/DC=org/DC=example/O=Users/CN=Carol Client"


def _http(status: str, body: bytes, extra: str = "") -> bytes:
    head = f"HTTP/1.1 {status}\r\nContent-Type: text/xml\r\nContent-Length: {len(body)}\r\n"
    return (head + extra + "\r\n").encode() + body


def _read_request(conn: socket.socket) -> bytes | None:
    """One HTTP request's body, or None when the client closed the connection."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    while len(body) < length:
        chunk = conn.recv(65536)
        if not chunk:
            return None
        body += chunk
    return body


class Fake:
    """A one-behaviour server on 127.0.0.1 (or a Unix socket); counts connections, requests."""

    def __init__(
        self, behaviour: str, cert: Host | None = None, *, unix_path: str | None = None
    ) -> None:
        self.behaviour = behaviour
        self.accepts = 0
        self.requests = 0
        self._stop = threading.Event()
        self._conns: list[socket.socket] = []
        if unix_path:
            self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            self.sock.bind(unix_path)
            self.url = f"unix:{unix_path}"
        else:
            self.sock = socket.create_server(("127.0.0.1", 0))
            self.url = f"https://localhost:{self.sock.getsockname()[1]}"
        self.sock.listen(64)
        self.ctx: ssl.SSLContext | None = None
        if cert is not None:
            self.ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
            self.ctx.load_cert_chain(cert.cert_path, cert.key_path)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            self.accepts += 1
            self._conns.append(conn)
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        try:
            conn.settimeout(15)
            if self.behaviour == "silent":  # accept, never a byte: not even a handshake
                self._stop.wait()
                return
            if self.ctx is not None:
                conn = self.ctx.wrap_socket(conn, server_side=True)
                self._conns.append(conn)
            while (body := _read_request(conn)) is not None:
                self.requests += 1
                if not self._answer(conn, body):
                    break
        except OSError:  # ssl.SSLError too: the client gave up on us
            pass
        conn.close()

    def _answer(self, conn: socket.socket, body: bytes) -> bool:
        """Answer one request; False closes the connection."""
        kind = self.behaviour
        if kind in ("permit", "deny", "indeterminate", "drop"):
            request = xacml.parse_request(body)
            decision = {
                "deny": xacml.Decision.deny("banned"),
                "indeterminate": xacml.Decision.indeterminate(
                    xacml.ids.STATUS_PROCESSING_ERROR, "service unavailable"
                ),
            }.get(kind, xacml.Decision.permit(uid=501, gid=502, sgids=[503]))
            conn.sendall(_http("200 OK", xacml.build_response(request, decision, issuer="fake")))
            return kind != "drop"  # drop: close a kept-alive connection without a word
        if kind == "mute":  # the request is read, no reply byte ever comes
            self._stop.wait()
            return False
        if kind == "hangup":  # the request is read, then the connection is closed
            return False
        if kind in ("stall", "trickle"):  # headers, then (almost) no body
            conn.sendall(b"HTTP/1.1 200 OK\r\nContent-Length: 9000\r\n\r\n")
            while kind == "trickle" and not self._stop.wait(0.05):
                conn.sendall(b"<")
            self._stop.wait()
            return False
        if kind == "garbage":
            conn.sendall(_http("200 OK", b"this is not a SAML response"))
        elif kind == "raw-garbage":
            conn.sendall(b"\x16\x03 hello, I am no HTTP server\r\n\r\n")
            return False
        else:  # "500", "403"
            conn.sendall(_http(f"{kind} Nope", b"go away"))
        return True

    def close(self) -> None:
        self._stop.set()
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        for conn in self._conns:
            try:
                conn.close()
            except OSError:
                pass


class Pki:
    """The test PKI: a trusted CA with the server's and the PEP's certs, and a rogue CA."""

    def __init__(self, base: Path) -> None:
        self.pki = TestPKI(base / "pki", reuse_keys=True)
        self.server = self.pki.host("localhost")
        self.pep = self.pki.host("pep.example.org", PEP_DN)
        self.user: User = self.pki.user("carol", USER_DN)
        other = TestPKI(base / "other", ca_dn="/DC=org/DC=evil/CN=Evil CA", reuse_keys=True)
        self.rogue_server = other.host("localhost")
        self.query: Query = build_query(read_chain(self.user.cert_path), host="wn1.example.org")


@pytest.fixture(scope="module")
def env(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    return Pki(tmp_path_factory.mktemp("client-faults"))


@pytest.fixture
def fake(env: Pki) -> Iterator[Callable[..., Fake]]:
    made: list[Fake] = []

    def make(behaviour: str, cert: Host | None = None, **kw: str) -> Fake:
        made.append(Fake(behaviour, cert or env.server, **kw))
        return made[-1]

    yield make
    for f in made:
        f.close()


_HELD: list[socket.socket] = []


def closed_url() -> str:
    """A port that refuses connections: bound but never listening, and kept bound for the
    run, so no server started later gets it (a released port did come back, in CI)."""
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    _HELD.append(s)
    return f"https://localhost:{s.getsockname()[1]}"


def client(env: Pki, urls: list[str], **kw: object) -> FailoverClient:
    options: dict[str, object] = dict(
        cert=env.pep.cert_path, key=env.pep.key_path, certdir=env.pki.certdir,
        strategy="round-robin", memory=False, connect_timeout=1.0, read_timeout=1.0,
        deadline=10.0,
    )  # fmt: skip
    options.update(kw)
    return FailoverClient(urls, **options)  # type: ignore[arg-type]


def test_client_refused_endpoint_skipped(env: Pki, fake: Callable[..., Fake]) -> None:
    good = fake("permit")
    dead = closed_url()
    result = client(env, [dead, good.url]).ask(env.query)
    assert [(a.endpoint, a.outcome) for a in result.attempts] == [
        (dead, "refused"),
        (good.url, "permit"),
    ]
    assert result.endpoint == good.url and result.permitted
    assert (result.decision.uid, result.decision.gid, result.decision.sgids) == (501, 502, (503,))


def test_client_silent_endpoint_times_out_then_next(env: Pki, fake: Callable[..., Fake]) -> None:
    silent, good = fake("silent"), fake("permit")
    result = client(env, [silent.url, good.url], connect_timeout=0.4).ask(env.query)
    first = result.attempts[0]
    assert (first.outcome, result.endpoint) == ("timeout", good.url)
    assert "TLS handshake within 0.40 s" in first.detail
    assert 0.35 < first.seconds < 0.9
    assert silent.accepts == 1 and good.requests == 1


@pytest.mark.parametrize("behaviour", ["mute", "stall", "trickle"])
def test_client_reply_stalled_midway_times_out(
    env: Pki, fake: Callable[..., Fake], behaviour: str
) -> None:
    """No reply, or headers then nothing (or a byte every 50 ms): the limit is for all of it."""
    slow, good = fake(behaviour), fake("permit")
    result = client(env, [slow.url, good.url], read_timeout=0.5).ask(env.query)
    first = result.attempts[0]
    assert first.outcome == "timeout" and "no complete reply within 0.50 s" in first.detail
    assert 0.45 < first.seconds < 1.0
    assert slow.requests == 1 and result.endpoint == good.url


@pytest.mark.parametrize(
    "behaviour,outcome",
    [
        ("garbage", "garbage"),
        ("raw-garbage", "garbage"),
        ("500", "http-500"),
        ("403", "http-403"),
        ("indeterminate", "indeterminate"),
        ("hangup", "closed"),
    ],
)
def test_client_bad_answer_moves_on(
    env: Pki, fake: Callable[..., Fake], behaviour: str, outcome: str
) -> None:
    bad, good = fake(behaviour), fake("permit")
    result = client(env, [bad.url, good.url]).ask(env.query)
    assert [a.outcome for a in result.attempts] == [outcome, "permit"]
    assert bad.requests == 1 and good.requests == 1
    if outcome == "indeterminate":
        assert result.attempts[0].detail == "service unavailable"


def test_client_unknown_ca_refused(env: Pki, fake: Callable[..., Fake]) -> None:
    rogue, good = fake("permit", env.rogue_server), fake("permit")
    result = client(env, [rogue.url, good.url]).ask(env.query)
    first = result.attempts[0]
    assert first.outcome == "tls" and "unable to get local issuer" in first.detail
    assert rogue.requests == 0 and result.endpoint == good.url


def test_client_host_name_checked(env: Pki, fake: Callable[..., Fake]) -> None:
    """The server's certificate names localhost; asking 127.0.0.1 must fail the check."""
    server = fake("permit")
    by_ip = server.url.replace("localhost", "127.0.0.1")
    with pytest.raises(AllEndpointsFailed) as err:
        client(env, [by_ip]).ask(env.query)
    assert err.value.attempts[0].outcome == "tls"
    assert "IP address mismatch" in err.value.attempts[0].detail
    assert server.requests == 0


def test_client_deny_stops_the_loop(env: Pki, fake: Callable[..., Fake]) -> None:
    dead = closed_url()
    deny, later1, later2 = fake("deny"), fake("permit"), fake("permit")
    result = client(env, [dead, deny.url, later1.url, later2.url]).ask(env.query)
    assert result.decision.decision == "Deny" and result.decision.status_message == "banned"
    assert [a.outcome for a in result.attempts] == ["refused", "deny"]
    time.sleep(0.1)  # a stray connection would have been accepted by now
    assert (later1.accepts, later2.accepts) == (0, 0)


def test_client_all_down_fails_within_deadline(env: Pki, fake: Callable[..., Fake]) -> None:
    """Each attempt's limits shrink to the deadline; the error names every endpoint."""
    dead = closed_url()
    silent, stall, never = fake("silent"), fake("stall"), fake("permit")
    urls = [dead, silent.url, stall.url, never.url]
    c = client(env, urls, connect_timeout=1.0, read_timeout=1.0, deadline=1.5)
    start = time.monotonic()
    with pytest.raises(AllEndpointsFailed) as err:
        c.ask(env.query)
    took = time.monotonic() - start
    assert 1.45 < took < 1.5 + 0.25  # beyond the deadline: only scheduling latency
    attempts = err.value.attempts
    assert [a.outcome for a in attempts] == ["refused", "timeout", "timeout", "skipped"]
    assert attempts[2].seconds < 0.5  # the stalled reply got only what was left
    message = str(err.value)
    assert all(url in message for url in urls)
    assert "within 1.5 s" in message and "not tried" in message
    assert never.accepts == 0


def test_client_every_kind_of_failure_named(env: Pki, fake: Callable[..., Fake]) -> None:
    servers = [fake("garbage"), fake("500"), fake("403"), fake("permit", env.rogue_server)]
    urls = [closed_url(), *(s.url for s in servers)]
    with pytest.raises(AllEndpointsFailed) as err:
        client(env, urls).ask(env.query)
    outcomes = [a.outcome for a in err.value.attempts]
    assert outcomes == ["refused", "garbage", "http-500", "http-403", "tls"]
    assert str(err.value).startswith("no SCAS answer: all 5 endpoints failed within 10 s: ")
    assert "\n" not in str(err.value)


def test_client_backoff_jittered_between_attempts(env: Pki, fake: Callable[..., Fake]) -> None:
    pauses: list[float] = []
    good = fake("permit")
    c = client(env, [closed_url(), closed_url(), good.url], sleep=pauses.append)
    assert c.ask(env.query).permitted
    assert len(pauses) == 2 and all(0.05 <= p <= 0.1 for p in pauses)


def test_client_keeps_one_connection(env: Pki, fake: Callable[..., Fake]) -> None:
    server = fake("permit")
    c = client(env, [server.url])
    for _ in range(10):
        assert c.ask(env.query).permitted
    assert (server.accepts, server.requests) == (1, 10)
    assert transport.pooled(server.url) == 1


def test_client_dropped_keepalive_retried_once(env: Pki, fake: Callable[..., Fake]) -> None:
    """A kept connection the server closed is retried on a fresh one, not counted failed."""
    server = fake("drop")
    c = client(env, [server.url])
    for _ in range(3):
        result = c.ask(env.query)
        assert [a.outcome for a in result.attempts] == ["permit"]
    assert (server.accepts, server.requests) == (3, 3)


def test_client_unix_socket_endpoint(env: Pki, fake: Callable[..., Fake], tmp_path: Path) -> None:
    server = Fake("permit", None, unix_path=str(tmp_path / "scas.sock"))
    try:
        result = FailoverClient([server.url], memory=False).ask(env.query)
        assert result.permitted and result.endpoint == server.url
        missing = f"unix:{tmp_path}/nothing.sock"
        with pytest.raises(AllEndpointsFailed) as err:
            FailoverClient([missing], memory=False).ask(env.query)
        assert err.value.attempts[0].outcome == "network"
    finally:
        server.close()


def test_client_unreadable_credential_is_config_error(env: Pki, tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match=r"missing\.pem"):
        client(env, [closed_url()], cert=str(tmp_path / "missing.pem")).ask(env.query)
    with pytest.raises(ClientConfigError, match="cannot use client credential"):
        client(env, [closed_url()], key=env.server.key_path).ask(env.query)  # wrong key
    with pytest.raises(ClientConfigError, match="not a directory"):
        client(env, [closed_url()], certdir=str(tmp_path / "nowhere")).ask(env.query)


MEMORY_PROBE = """
import json, sys
from client.endpoint_memory import EndpointMemory
from client.failover import FailoverClient
from client.query import build_query, read_chain
a, b, state, cert, key, certdir, chain = sys.argv[1:]
c = FailoverClient([a, b], cert=cert, key=key, certdir=certdir, strategy="round-robin",
                   memory=EndpointMemory(state), deadline=10)
result = c.ask(build_query(read_chain(chain)))
print(json.dumps([[x.endpoint, x.outcome] for x in result.attempts]))
"""


def test_client_memory_across_processes(
    env: Pki, fake: Callable[..., Fake], tmp_path: Path
) -> None:
    """Process 1 finds A failing; process 2, same state file, asks B first and never A."""
    a, b = fake("500"), fake("permit")
    state = tmp_path / "state" / "endpoints.json"
    args = [a.url, b.url, str(state), env.pep.cert_path, env.pep.key_path, env.pki.certdir,
            env.user.cert_path]  # fmt: skip

    def run() -> list[list[str]]:
        proc = subprocess.run(
            [sys.executable, "-c", MEMORY_PROBE, *args],
            cwd=REPO, capture_output=True, text=True, timeout=30,
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr
        result: list[list[str]] = json.loads(proc.stdout)
        return result

    assert run() == [[a.url, "http-500"], [b.url, "permit"]]
    assert list(json.loads(state.read_text())["failed"]) == [a.url]
    assert oct(state.stat().st_mode & 0o777) == "0o600"
    assert run() == [[b.url, "permit"]]
    assert a.requests == 1  # the second process did not ask A at all
    assert os.listdir(state.parent) == ["endpoints.json"]  # no temporary file left


def test_client_bad_state_file_never_fatal(
    env: Pki, fake: Callable[..., Fake], tmp_path: Path
) -> None:
    good = fake("permit")
    dead = closed_url()
    corrupt = tmp_path / "corrupt.json"
    corrupt.write_bytes(b"\x00{not json")
    blocker = tmp_path / "a-file"
    blocker.write_text("")
    for path in (corrupt, blocker / "endpoints.json"):  # the second cannot be written
        memory = EndpointMemory(str(path))
        result = client(env, [dead, good.url], memory=memory).ask(env.query)
        assert result.permitted
    assert json.loads(corrupt.read_text())["failed"].keys() == {dead}  # rewritten whole
    assert memory.problem is not None and "cannot write" in memory.problem


def test_client_cli_indeterminate_everywhere_exits_2(
    env: Pki, fake: Callable[..., Fake], capsys: pytest.CaptureFixture[str]
) -> None:
    from client.cli import main

    one, two = fake("indeterminate"), fake("indeterminate")
    args = [
        "--endpoint", one.url, "--endpoint", two.url, "--strategy", "round-robin",
        "--proxy", env.user.cert_path, "--cert", env.pep.cert_path, "--key", env.pep.key_path,
        "--certdir", env.pki.certdir, "--resource-type", "wn", "--action", "execute-now",
        "--no-state",
    ]  # fmt: skip
    assert main(args) == 2
    out, err = capsys.readouterr()
    lines = err.splitlines()
    assert out == "" and len(lines) == 3
    assert lines[0].startswith(f"scas-query: {one.url}: indeterminate (service unavailable) after")
    assert lines[1].startswith(f"scas-query: {two.url}: indeterminate (service unavailable) after")
    assert lines[2] == "scas-query: error: no answer: all 2 endpoints failed (deadline 60 s)"
    assert main([*args, "--json"]) == 2
    shown = json.loads(capsys.readouterr().out)
    assert shown["decision"] is None and [a["outcome"] for a in shown["attempts"]] == [
        "indeterminate",
        "indeterminate",
    ]
