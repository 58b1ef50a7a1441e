"""The failover client and ``scas-query`` against a real scas-server (gunicorn, mutual TLS).

One TLS server and one node-local Unix-socket server (with glexec tickets) per module.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sysconfig
import tempfile
from collections.abc import Iterator
from pathlib import Path

import psutil
import pytest
from server_harness import PEP_DN, USER_DN, Server, Site

from client import transport
from client.failover import FailoverClient, authorize
from client.query import Query, build_query, read_chain
from client.xacml import ids

pytestmark = pytest.mark.slow

SCAS_QUERY = str(Path(sysconfig.get_path("scripts")) / "scas-query")
NOBODY = 65534


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Site:
    return Site(str(tmp_path_factory.mktemp("client-live")))


@pytest.fixture(scope="module")
def server(site: Site) -> Iterator[Server]:
    """One worker, so that a resumed TLS session always meets the worker that issued it."""
    srv = Server(site, site.write_config(workers=1))
    yield srv
    transport.close_all()  # a kept connection would hold up the graceful stop
    srv.stop()


@pytest.fixture(scope="module")
def url(server: Server) -> str:
    return f"https://localhost:{server.port}"


@pytest.fixture(scope="module")
def query(site: Site) -> Query:
    return build_query(read_chain(site.user.cert_path))


def _client(site: Site, urls: list[str], **kw: object) -> FailoverClient:
    options: dict[str, object] = dict(
        cert=site.pep.cert_path, key=site.pep.key_path, certdir=site.pki.certdir,
        strategy="round-robin", memory=False, connect_timeout=5.0, read_timeout=10.0,
        deadline=20.0,
    )  # fmt: skip
    options.update(kw)
    return FailoverClient(urls, **options)  # type: ignore[arg-type]


def _closed_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"https://localhost:{s.getsockname()[1]}"


def test_client_live_permit_with_host_certificate(site: Site, url: str, query: Query) -> None:
    result = _client(site, [url]).ask(query)
    d = result.decision
    assert (d.decision, d.uid, d.gid, d.sgids) == ("Permit", 40001, 4000, (4001,))
    assert d.obligations == (ids.OBLIG_UIDGID, ids.OBLIG_SECONDARY_GIDS)
    assert result.endpoint == url and [a.outcome for a in result.attempts] == ["permit"]
    line = site.audit_lines()[-1]
    assert (line["pep"], line["dn"], line["request_id"]) == (PEP_DN, USER_DN, query.request_id)


def test_client_live_deny_is_an_answer(site: Site, url: str) -> None:
    second = _closed_url()
    deny = build_query(read_chain(site.user.cert_path), resource_type="ce", action="queue")
    result = _client(site, [url, second]).ask(deny)
    assert result.decision.decision == "Deny"
    assert result.decision.status_message == "not authorized"
    assert [a.endpoint for a in result.attempts] == [url]  # the second was never asked


def test_client_live_failover_past_a_dead_replica(site: Site, url: str, query: Query) -> None:
    dead = _closed_url()
    result = _client(site, [dead, url]).ask(query)
    assert [a.outcome for a in result.attempts] == ["refused", "permit"]


def test_client_live_proxy_as_tls_credential(site: Site, url: str) -> None:
    """A pilot's proxy file as the TLS identity: its chain must go along in the handshake."""
    proxy = site.pki.proxy(site.user)
    result = authorize([url], proxy, certdir=site.pki.certdir, memory=False)
    assert result.permitted and result.decision.uid == 40001
    assert site.audit_lines()[-1]["pep"] == USER_DN  # the identity behind the proxy


def _server_connections(server: Server) -> list[tuple[int, int]]:
    """(worker pid, peer port) of every established connection the server's workers hold."""
    found = []
    for worker in psutil.Process(server.proc.pid).children():
        for conn in worker.net_connections(kind="tcp"):
            if conn.status == psutil.CONN_ESTABLISHED and conn.raddr:
                found.append((worker.pid, conn.raddr.port))
    return found


def test_client_live_one_handshake_for_many_queries(
    site: Site, server: Server, url: str, query: Query
) -> None:
    transport.close_all()
    client = _client(site, [url])
    already = len(site.audit_lines())
    for _ in range(20):
        assert client.ask(query).permitted
    assert client.tls is not None
    stats = transport.tls_context(client.tls).session_stats()
    assert (stats["connect"], stats["connect_good"]) == (1, 1)  # one handshake in all
    held = _server_connections(server)
    assert len(held) == 1  # the server holds exactly one connection: ours, kept alive
    assert len(site.audit_lines()) - already == 20
    assert transport.pooled(url) == 1


def test_client_live_reconnect_resumes_tls_session(site: Site, url: str, query: Query) -> None:
    transport.close_all()
    client = _client(site, [url])
    assert client.ask(query).permitted
    transport.close_all(keep_sessions=True)  # the connection is gone, its session is not
    assert client.ask(query).permitted
    assert client.tls is not None
    stats = transport.tls_context(client.tls).session_stats()
    assert (stats["connect"], stats["hits"]) == (2, 1)


def _run(*args: str, env_dir: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "XDG_RUNTIME_DIR": str(env_dir)}
    env.pop("X509_USER_PROXY", None)
    return subprocess.run(
        [SCAS_QUERY, *args], capture_output=True, text=True, timeout=60, env=env, cwd=env_dir
    )


def _cli_args(site: Site, *endpoints: str, resource: str = "wn", action: str = "execute-now"):
    args = [f"--endpoint={e}" for e in endpoints]
    return [
        *args, "--proxy", site.user.cert_path + ".proxy", "--cert", site.pep.cert_path,
        "--key", site.pep.key_path, "--certdir", site.pki.certdir, "--strategy", "round-robin",
        "--resource-type", resource, "--action", action,
    ]  # fmt: skip


@pytest.fixture(scope="module")
def user_proxy(site: Site) -> str:
    return site.pki.proxy(site.user, out=site.user.cert_path + ".proxy")


@pytest.mark.usefixtures("user_proxy")
def test_client_cli_permit_deny_error(site: Site, url: str, tmp_path: Path) -> None:
    dead = _closed_url()
    permit = _run(*_cli_args(site, dead, url), env_dir=tmp_path)
    assert permit.returncode == 0, permit.stderr
    lines = permit.stdout.splitlines()
    assert lines[0].startswith(f"Permit from {url} (")
    assert lines[1].split() == ["uid", "40001", "gid", "4000", "secondary", "gids", "4001"]
    assert lines[-1] == "  obligations: uidgid, secondary-gids"
    assert permit.stderr.startswith(f"scas-query: {dead}: refused (connection refused) after ")
    state = json.loads((tmp_path / "scas-client" / "endpoints.json").read_text())
    assert list(state["failed"]) == [dead]  # the default state file, under XDG_RUNTIME_DIR

    deny = _run(*_cli_args(site, url, resource="ce", action="queue"), env_dir=tmp_path)
    assert deny.returncode == 1, deny.stderr
    assert deny.stdout.startswith(f"Deny from {url} (") and ": not authorized" in deny.stdout

    down = _run(*_cli_args(site, dead), "--no-state", env_dir=tmp_path)
    assert down.returncode == 2 and down.stdout == ""
    assert down.stderr.splitlines()[-1] == (
        "scas-query: error: no answer: the endpoint failed (deadline 60 s)"
    )
    assert f"scas-query: {dead}: refused" in down.stderr


@pytest.mark.usefixtures("user_proxy")
def test_client_cli_json_shape(site: Site, url: str, tmp_path: Path) -> None:
    permit = _run(*_cli_args(site, url), "--json", "--no-state", env_dir=tmp_path)
    assert permit.returncode == 0, permit.stderr
    out = json.loads(permit.stdout)
    assert set(out) == {
        "decision", "status_code", "status_message", "uid", "gid", "sgids", "username",
        "ticket", "obligations", "endpoint", "attempts", "error",
    }  # fmt: skip
    assert (out["decision"], out["uid"], out["gid"]) == ("Permit", 40001, 4000)
    assert out["sgids"] == [4001] and out["username"] is None and out["ticket"] is None
    assert out["endpoint"] == url and out["error"] is None
    assert [a["outcome"] for a in out["attempts"]] == ["permit"]
    assert set(out["attempts"][0]) == {"endpoint", "outcome", "seconds", "detail"}

    dead = _closed_url()
    down = _run(*_cli_args(site, dead), "--json", "--no-state", "--deadline", "3",
                env_dir=tmp_path)  # fmt: skip
    assert down.returncode == 2
    err = json.loads(down.stdout)
    assert err["decision"] is None and dead in err["error"]
    assert [a["outcome"] for a in err["attempts"]] == ["refused"]


def test_client_cli_usage_errors(site: Site, tmp_path: Path) -> None:
    no_endpoint = _run("--proxy", site.user.cert_path, "--resource-type", "wn",
                       "--action", "execute-now", env_dir=tmp_path)  # fmt: skip
    assert no_endpoint.returncode == 2
    assert no_endpoint.stderr == "scas-query: error: give at least one --endpoint or --socket\n"
    nope = str(tmp_path / "nope.pem")
    missing = _run(
        "--endpoint", "https://localhost:1", "--proxy", nope,
        "--resource-type", "wn", "--action", "execute-now", env_dir=tmp_path,
    )  # fmt: skip
    assert missing.returncode == 2
    assert missing.stderr.startswith("scas-query: error: cannot read credential ")
    assert len(missing.stderr.splitlines()) == 1
    bad = _run("--endpoint", "http://x", "--resource-type", "wn", env_dir=tmp_path)
    assert bad.returncode == 2 and "--action" in bad.stderr  # argparse: required option


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Server]]:
    """A node-local server on a Unix socket that signs glexec tickets."""
    from scas_server import ticket as tickets

    site = Site(str(tmp_path_factory.mktemp("client-node")))
    site.write_lcmaps(uid=NOBODY, gid=NOBODY, sgid=NOBODY)  # an account that exists
    private, _, _ = tickets.keygen(site.directory)
    sockdir = tempfile.mkdtemp(prefix="scas-client-sock-")
    settings = site.write_config(
        listen=f"unix:{sockdir}/scas.sock", socket_mode="0600", tls=None,
        allowed_uids=[os.getuid()], ticket={"key": str(private), "host": socket.gethostname()},
    )  # fmt: skip
    srv = Server(site, settings)
    yield site, srv
    transport.close_all()
    srv.stop()
    shutil.rmtree(sockdir, ignore_errors=True)


def test_client_live_unix_socket_with_ticket(node: tuple[Site, Server], tmp_path: Path) -> None:
    site, srv = node
    proxy = site.pki.proxy(site.user)
    result = authorize(
        [srv.listen], proxy, memory=False,
        obligations=(*ids.MAPPING_OBLIGATIONS, ids.OBLIG_TICKET),
    )  # fmt: skip
    d = result.decision
    assert (d.decision, d.uid, d.gid) == ("Permit", NOBODY, NOBODY)
    assert d.username == "nobody" and d.ticket, site.audit_lines()[-1]
    cli = _run("--socket", srv.listen[5:], "--proxy", proxy, "--resource-type", "wn",
               "--action", "execute-now", "--ticket", "--json", "--no-state",
               env_dir=tmp_path)  # fmt: skip
    assert cli.returncode == 0, cli.stderr
    out = json.loads(cli.stdout)
    assert out["endpoint"] == srv.listen and out["ticket"] and out["username"] == "nobody"
    assert "x-scas-stack/glexec-ticket" in out["obligations"]
