"""The failover client's parts without a network: strategies, endpoint memory, queries, config."""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from client import xacml
from client.endpoint_memory import EndpointMemory, default_path
from client.failover import STRATEGIES, FailoverClient, order_endpoints
from client.failures import AllEndpointsFailed, Attempt, ClientConfigError
from client.query import build_query, certificates, read_chain
from client.transport import parse_endpoint
from testkit.pki import TestPKI

REPO = Path(__file__).resolve().parent.parent
URLS = [f"https://scas{i}.example.org:8443" for i in range(4)]


# -- strategies --------------------------------------------------------------------------


def test_client_round_robin_keeps_configured_order() -> None:
    rng = random.Random(1)
    assert all(order_endpoints(URLS, "round-robin", rng) == URLS for _ in range(20))


def test_client_random_start_is_a_rotation_from_the_seeded_start() -> None:
    rng, twin = random.Random(7), random.Random(7)
    for _ in range(50):
        start = twin.randrange(len(URLS))
        rotated = URLS[start:] + URLS[:start]
        assert order_endpoints(URLS, "round-robin-random-start", rng) == rotated


def test_client_random_is_the_seeded_permutation() -> None:
    rng, twin = random.Random(11), random.Random(11)
    seen = set()
    for _ in range(50):
        expected = list(URLS)
        twin.shuffle(expected)
        got = order_endpoints(URLS, "random", rng)
        assert got == expected and sorted(got) == sorted(URLS)
        seen.add(tuple(got))
    assert len(seen) > 10  # really shuffled, not one fixed order


@pytest.mark.parametrize("strategy", ["round-robin-random-start", "random"])
def test_client_first_endpoint_roughly_uniform(strategy: str) -> None:
    """Over 1,000 queries each replica comes first about 250 times (chi-square, 3 dof).

    The RNG is seeded, so this never flakes; 16.27 is the p=0.001 critical value.
    """
    rng = random.Random(2024)
    firsts = Counter(order_endpoints(URLS, strategy, rng)[0] for _ in range(1000))
    chi2 = sum((firsts[url] - 250) ** 2 / 250 for url in URLS)
    assert chi2 < 16.27, firsts


def test_client_default_strategy_through_the_client() -> None:
    c = FailoverClient(URLS, cert="/dev/null", memory=False, rng=random.Random(3))
    assert c.strategy == "round-robin-random-start" and STRATEGIES[1] == c.strategy
    starts = {c.plan()[0] for _ in range(100)}
    assert starts == set(URLS)
    assert all(sorted(c.plan()) == sorted(URLS) for _ in range(10))


# -- endpoint memory ---------------------------------------------------------------------


class Clock:
    def __init__(self) -> None:
        self.now = 1_000_000.0

    def __call__(self) -> float:
        return self.now


def test_client_memory_puts_recent_failures_last(tmp_path: Path) -> None:
    clock = Clock()
    memory = EndpointMemory(str(tmp_path / "m.json"), hold=60, clock=clock)
    memory.record(failed=[URLS[0]])
    clock.now += 1
    memory.record(failed=[URLS[2]])
    assert memory.order(URLS) == [URLS[1], URLS[3], URLS[0], URLS[2]]  # oldest failure first
    clock.now += 59.5  # URLS[0]'s hold is over, URLS[2]'s is not
    assert memory.order(URLS) == [URLS[0], URLS[1], URLS[3], URLS[2]]
    memory.record(answered=[URLS[2]])
    assert memory.order(URLS) == URLS
    assert memory.failures() == {}


def test_client_memory_writes_only_on_change(tmp_path: Path) -> None:
    path = tmp_path / "m.json"
    memory = EndpointMemory(str(path))
    memory.record(answered=[URLS[0]])
    assert not path.exists()  # nothing to remember: no write on the success path
    memory.record(failed=[URLS[1]])
    before = path.stat().st_mtime_ns, path.stat().st_ino
    memory.record(answered=[URLS[0]])
    assert (path.stat().st_mtime_ns, path.stat().st_ino) == before
    data = json.loads(path.read_text())
    assert data["version"] == 1 and list(data["failed"]) == [URLS[1]]
    assert path.stat().st_mode & 0o777 == 0o600


@pytest.mark.parametrize(
    "content",
    [b"", b"\x00\xff garbage", b"[1, 2]", b'{"failed": [1]}', b'{"failed": {"x": "soon"}}',
     b"[" * 50000, b" " * (70 * 1024)],
    ids=["empty", "binary", "list", "failed-list", "bad-time", "deep", "huge"],
)  # fmt: skip
def test_client_memory_corrupt_file_ignored(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.json"
    path.write_bytes(content)
    memory = EndpointMemory(str(path))
    assert memory.order(URLS) == URLS
    memory.record(failed=[URLS[3]])
    assert memory.order(URLS) == [*URLS[:3], URLS[3]]
    assert list(json.loads(path.read_text())["failed"]) == [URLS[3]]


def test_client_memory_unreadable_or_unwritable_ignored(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("")
    memory = EndpointMemory(str(blocker / "m.json"))  # its "directory" is a file
    memory.record(failed=[URLS[0]])
    assert "cannot write" in (memory.problem or "")
    assert memory.order(URLS) == URLS
    directory = EndpointMemory(str(tmp_path))  # a directory where the file should be
    directory.record(failed=[URLS[0]])
    assert directory.order(URLS) == URLS and directory.problem
    assert sorted(os.listdir(tmp_path)) == ["file"]  # no temporary file left behind


def test_client_memory_default_path(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("XDG_RUNTIME_DIR", str(tmp_path))
    assert default_path() == str(tmp_path / "scas-client" / "endpoints.json")
    monkeypatch.delenv("XDG_RUNTIME_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_path() == str(tmp_path / "home" / ".cache" / "scas-client" / "endpoints.json")


# -- endpoints, queries, configuration ----------------------------------------------------


@pytest.mark.parametrize(
    "url,parsed",
    [
        ("https://scas.example.org", ("https", "scas.example.org", 8443, "/")),
        ("https://scas:9443/gums/x?y", ("https", "scas", 9443, "/gums/x?y")),
        ("https://[::1]:8443/", ("https", "::1", 8443, "/")),
        ("unix:/run/scas/scas.sock", ("unix", "localhost", None, "/run/scas/scas.sock")),
        ("unix:///run/scas.sock", ("unix", "localhost", None, "/run/scas.sock")),
    ],
)
def test_client_endpoint_parsed(url: str, parsed: tuple[object, ...]) -> None:
    ep = parse_endpoint(url)
    assert (ep.scheme, ep.host, ep.port, ep.path) == parsed


@pytest.mark.parametrize(
    "url",
    ["http://scas:8443", "scas:8443", "https://", "https://scas:99999", "unix:relative.sock",
     "https://user:pw@scas/", "ftp://x"],
)  # fmt: skip
def test_client_bad_endpoint_refused(url: str) -> None:
    with pytest.raises(ClientConfigError, match="endpoint"):
        parse_endpoint(url)


def test_client_bad_options_refused() -> None:
    good = {"cert": "/dev/null", "memory": False}
    cases: list[tuple[list[str], dict[str, object], str]] = [
        ([], good, "no SCAS endpoint"),
        ([URLS[0], URLS[0]], good, "listed twice"),
        (URLS, {**good, "strategy": "fastest"}, "unknown strategy"),
        (URLS, {**good, "deadline": 0}, "deadline must be positive"),
        (URLS, {**good, "connect_timeout": float("nan")}, "connect timeout"),
        (URLS, {"memory": False}, "need a client certificate"),
        (URLS, {"key": "/k", "memory": False}, "key without a certificate"),
    ]
    for urls, kw, message in cases:
        with pytest.raises(ClientConfigError, match=message.replace(" positive", ".*positive")):
            FailoverClient(urls, **kw)  # type: ignore[arg-type]


def test_client_query_carries_the_chain_never_the_key(tmp_path: Path) -> None:
    pki = TestPKI(tmp_path, reuse_keys=True)
    user = pki.user("dora", "/DC=org/DC=example/CN=Dora")
    proxy = pki.proxy(user)
    chain = read_chain(proxy)
    assert chain.count(b"BEGIN CERTIFICATE") == 2 and b"PRIVATE KEY" not in chain
    query = build_query(
        Path(proxy).read_bytes(), fqans=["/dteam/Role=NULL", "/dteam/test"],
        resource_type="wn", action="execute-now", host="wn7.example.org",
        pilot_dn="/DC=org/DC=example/CN=Pilot",
        obligations=(*xacml.ids.MAPPING_OBLIGATIONS, xacml.ids.OBLIG_TICKET),
    )  # fmt: skip
    assert b"PRIVATE KEY" not in query.body
    request = xacml.parse_request(query.body)
    assert request.request_id == query.request_id
    assert request.cert_chain is not None and certificates(request.cert_chain) == chain
    assert request.fqans == ("/dteam/Role=NULL", "/dteam/test") and request.vo == "dteam"
    assert (request.resource_type, request.action_type) == ("wn", "execute-now")
    assert request.host == "wn7.example.org" and request.pilot_dn == "/DC=org/DC=example/CN=Pilot"
    assert xacml.ids.OBLIG_TICKET in request.pep_oblig_supported


def test_client_query_input_errors(tmp_path: Path) -> None:
    with pytest.raises(ClientConfigError, match="cannot read credential"):
        read_chain(str(tmp_path / "missing.pem"))
    (tmp_path / "key.pem").write_text("-----BEGIN RSA PRIVATE KEY-----\nAAAA\n")
    with pytest.raises(ClientConfigError, match="no PEM certificate"):
        read_chain(str(tmp_path / "key.pem"))
    pem = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n"
    with pytest.raises(ClientConfigError, match="unknown resource type 'cluster'"):
        build_query(pem, resource_type="cluster")
    with pytest.raises(ClientConfigError, match="unknown action"):
        build_query(pem, action="run")


def test_client_all_failed_message_is_one_line() -> None:
    err = AllEndpointsFailed(
        [Attempt("https://a", "refused", 0.001, "connection refused"),
         Attempt("unix:/s", "skipped", 0.0, "60 s deadline")], 60.0,
    )  # fmt: skip
    assert str(err) == (
        "no SCAS answer: all 2 endpoints failed within 60 s: "
        "https://a: refused (connection refused) after 0.001 s; unix:/s: not tried (60 s deadline)"
    )


def test_client_import_stays_cheap() -> None:
    """glexec imports the failover client per payload: no TLS or HTTP stack, no lxml yet."""
    code = (
        "import sys, client, client.failover, client.cli\n"
        "print(*sorted(m for m in sys.modules if m.split('.')[0] in "
        "('ssl', 'http', 'lxml', 'email', 'client')))"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    loaded = out.stdout.split()
    assert not [m for m in loaded if m.split(".")[0] in ("ssl", "http", "lxml", "email")], loaded
    assert "client.transport" not in loaded
