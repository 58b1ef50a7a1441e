"""glexec end to end: the real front, as an unprivileged pilot, through a live SCAS over mutual
TLS, into the real setuid helper installed setuid root, and the payload as a pool account.

One module-scoped setup (`e2e_site`, also used by stress/bench_glexec.py):

- throw-away accounts: the pilot `gepilot01`, pool accounts `gepool01`/`gepool02` (ids >= 1000);
- the helper built from glexec/setuid_helper.c with GLEXEC_CONF = a root-owned glexec.conf
  written here and GLEXEC_TEST_HOST = the front's host name (``glexec.scas.host_name()``, the
  lower-cased gethostname()), installed root:root 4755 in a directory that is not nosuid;
- a live ``scas-server`` (mutual TLS) whose lcmaps.db maps every payload to `gepool01`, whose
  lcas.db bans one DN, and which signs v2 tickets for pilots with ``/dteam/Role=pilot``
  (ticket.pep_fqans); optionally a second one on a Unix socket (allowed_uids = the pilot);
- proxies owned by the pilot, mode 0600: its own VOMS proxy with the pilot role
  (X509_USER_PROXY), one without the role, the payload owner's proxy (GLEXEC_CLIENT_CERT) and a
  banned user's.

The front is the installed ``glexec`` console script (.venv/bin/glexec). The venv's interpreter
lives under /root (mode 0700), which an unprivileged pilot cannot reach, so the setup copies the
interpreter and its standard library into the (world-readable) test directory and runs the
console script with a venv made from that copy which sees the project venv's site-packages.

Two glexec.conf files: the helper's compiled-in one, and the front's (GLEXEC_CONFIG) with the
same keys plus ``setuid_helper`` (the helper's path, not at its default here); the helper
accepts and ignores that key, so one shared file serves both halves
(`test_one_shared_file_for_both_halves`).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helper_fixtures import mount_options, suid_dir, throwaway_accounts
from server_harness import USER_DN, Server, Site, free_port

from testkit.pycopy import REPO, VENV
from testkit.pycopy import python_copy as copy_python

pytestmark = [pytest.mark.slow, pytest.mark.root]

CONSOLE_SCRIPT = VENV / "bin" / "glexec"
PILOT, POOL1, POOL2 = "gepilot01", "gepool01", "gepool02"
PILOT_DN = "/DC=org/DC=example/O=Users/CN=Pilot Factory"
BANNED_DN = "/DC=org/DC=example/O=Users/CN=Eve Banned"
PILOT_FQAN = "/dteam/Role=pilot/Capability=NULL"
MEMBER_FQAN = "/dteam/Role=NULL/Capability=NULL"


def missing() -> str:
    """Why this module cannot run here ("" if it can)."""
    if os.geteuid() != 0:
        return "needs root: installs a setuid-root helper, creates accounts, runs as the pilot"
    for tool in ("make", "gcc", "useradd", "userdel", "groupadd", "groupdel"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    if not Path("/usr/include/openssl/evp.h").exists():
        return "libssl-dev (OpenSSL headers) not installed"
    if not CONSOLE_SCRIPT.exists():
        return f"{CONSOLE_SCRIPT} not installed (pip install -e . in the venv)"
    return ""


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid)
    os.chmod(path, mode)


def python_copy(base: Path) -> Path:
    """The interpreter the pilot runs glexec with (testkit.pycopy), with glexec's imports."""
    return copy_python(base, ("glexec.cli", "glexec.scas", "glexec.handover", "glexec.inputs",
                              "client.failover", "client.query"))  # fmt: skip


@dataclass
class E2E:
    base: Path
    helper: Path
    helper_conf: Path  # compiled into the helper
    front_conf: Path  # GLEXEC_CONFIG: helper_conf's keys + setuid_helper
    python: Path
    site: Site
    server: Server
    public_line: str
    ids: dict[str, int]
    pilot_dir: Path
    proxies: dict[str, Path]  # pilot, member, payload, banned (all the pilot's, 0600)
    sticky: Path
    unix_server: Server | None = None
    unix_sock: Path | None = None
    extra: list[Path] = field(default_factory=list)

    @property
    def glexec(self) -> list[str]:
        return [str(self.python), str(CONSOLE_SCRIPT)]

    def conf_keys(self, **overrides: str | None) -> dict[str, str]:
        keys: dict[str, str | None] = {
            "user_white_list": PILOT,
            "min_target_uid": "1000",
            "min_target_gid": "1000",
            "scas_ticket_key": self.public_line,
            "nonce_dir": str(self.base / "nonces"),
            "mode": "setuid",
            "linger": "yes",
            "log_destination": "file",
            "log_file": str(self.base / "glexec.log"),
            "scas_endpoints": f"https://localhost:{self.server.port}/",
            "scas_timeout": "20",
            "scas_deadline": "30",
            "certdir": self.site.pki.certdir,
            "log_level": "0",
        }
        keys.update(overrides)
        return {k: v for k, v in keys.items() if v is not None}

    def write_conf(self, path: Path, *, front: bool = True, **overrides: str | None) -> Path:
        keys = self.conf_keys(**overrides)
        if front:
            keys.setdefault("setuid_helper", str(self.helper))
        path.write_text("[glexec]\n" + "".join(f"{k} = {v}\n" for k, v in keys.items()))
        _own(path, 0, 0, 0o644)
        return path

    def env(self, *, pilot_proxy: str = "pilot", payload: str = "payload",
            conf: Path | None = None, target: str | None = None) -> dict[str, str]:  # fmt: skip
        env = {
            "PATH": "/usr/bin:/bin",
            "HOME": str(self.pilot_dir),
            "XDG_RUNTIME_DIR": str(self.pilot_dir / "run"),
            "X509_USER_PROXY": str(self.proxies[pilot_proxy]),
            "X509_CERT_DIR": self.site.pki.certdir,
            "GLEXEC_CLIENT_CERT": str(self.proxies[payload]),
            "GLEXEC_CONFIG": str(conf or self.front_conf),
        }
        if target is not None:
            env["GLEXEC_TARGET_PROXY"] = target
        return env

    def popen_args(self, args: list[str], env: dict[str, str]) -> dict[str, object]:
        return dict(args=[*self.glexec, *args], env=env, user=PILOT, group=PILOT,
                    extra_groups=[], cwd="/")  # fmt: skip

    def run(self, args: list[str], env: dict[str, str] | None = None,
            timeout: float = 60) -> subprocess.CompletedProcess[str]:  # fmt: skip
        kw = self.popen_args(args, env if env is not None else self.env())
        return subprocess.run(**kw, capture_output=True, text=True, timeout=timeout)  # type: ignore[call-overload]


@contextmanager
def e2e_site(*, unix: bool = True) -> Iterator[E2E | str]:
    """The whole setup; yields an `E2E`, or the reason it cannot be made (skip with it)."""
    reason = missing()
    if reason:
        yield reason
        return
    base, why = suid_dir([tempfile.gettempdir(), "/var/tmp"])
    if base is None:
        yield f"no directory where a setuid binary runs as root: {why}"
        return
    servers: list[Server] = []
    try:
        assert "nosuid" not in mount_options(base)
        with throwaway_accounts([PILOT, POOL1, POOL2]) as problem:
            if problem:
                yield problem
                return
            ids = {n: pwd.getpwnam(n).pw_uid for n in (PILOT, POOL1, POOL2)}
            ids.update({f"{n}:gid": pwd.getpwnam(n).pw_gid for n in (PILOT, POOL1, POOL2)})
            if min(ids.values()) < 1000:
                yield f"useradd made ids below 1000: {ids}"
                return
            e2e = _build(base, ids, servers, unix=unix)
            yield e2e
    finally:
        for srv in servers:
            srv.stop()
        shutil.rmtree(base, ignore_errors=True)


def _build(base: Path, ids: dict[str, int], servers: list[Server], *, unix: bool) -> E2E:
    from glexec.scas import host_name  # what the front sends as dns-host-name
    from scas_server import ticket as tickets

    python = python_copy(base)
    (base / "nonces").mkdir(mode=0o700)
    (base / "bin").mkdir(mode=0o755)
    helper_conf = base / "glexec.conf"
    helper = base / "bin" / "setuid_helper"
    build = subprocess.run(
        ["make", "-C", str(REPO / "glexec"), f"BIN={helper}", f"GLEXEC_CONF={helper_conf}",
         f"GLEXEC_TEST_HOST={host_name()}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    _own(helper, 0, 0, 0o4755)

    # the SCAS site: the payload maps to POOL1; BANNED_DN is banned by LCAS
    site = Site(str(base / "site"))
    site.write_lcmaps(uid=ids[POOL1], gid=ids[f"{POOL1}:gid"], sgid=ids[f"{POOL1}:gid"])
    Path(site.directory, "ban_users.db").write_text(f'# banned\n"{BANNED_DN}"\n')
    Path(site.directory, "lcas.db").write_text(
        'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n'
    )
    site.pki.trust_vo("dteam")
    pilot_user = site.pki.user("pilot", PILOT_DN)
    banned_user = site.pki.user("eve", BANNED_DN)
    private, _, public_line = tickets.keygen(site.directory)
    public_line = public_line.partition("=")[2].strip()  # the line is "scas_ticket_key = ..."
    ticket = {"key": str(private), "pep_fqans": ["/dteam/Role=pilot"]}
    settings = site.write_config(
        pep_allow=[PILOT_DN, "/DC=org/DC=example/CN=pep*"],
        trust={"certdir": site.pki.certdir, "vomsdir": site.pki.vomsdir},
        ticket=ticket,
    )  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rX", site.pki.certdir], check=True)
    for d in Path(site.pki.certdir).parents:
        if d == base:
            break
        os.chmod(d, os.stat(d).st_mode | 0o005)
    server = Server(site, settings)
    servers.append(server)

    # the pilot's files: its home, runtime dir, proxies (0600), a sticky dir for target proxies
    pilot_dir = base / "pilot"
    pilot_dir.mkdir()
    (pilot_dir / "run").mkdir()
    sources = {
        "pilot": site.pki.proxy(pilot_user, fqans=[PILOT_FQAN], vo="dteam"),
        "member": site.pki.proxy(pilot_user, fqans=[MEMBER_FQAN]),
        "payload": site.pki.proxy(site.user, fqans=[MEMBER_FQAN]),
        "banned": site.pki.proxy(banned_user, fqans=[MEMBER_FQAN]),
    }
    proxies = {}
    for name, src in sources.items():
        dst = pilot_dir / f"{name}.pem"
        shutil.copyfile(src, dst)
        _own(dst, ids[PILOT], ids[f"{PILOT}:gid"], 0o600)
        proxies[name] = dst
    for d in (pilot_dir, pilot_dir / "run"):
        _own(d, ids[PILOT], ids[f"{PILOT}:gid"], 0o700)
    sticky = base / "tp"
    sticky.mkdir()
    _own(sticky, 0, 0, 0o1777)

    e2e = E2E(
        base=base, helper=helper, helper_conf=helper_conf, front_conf=base / "front.conf",
        python=python, site=site, server=server, public_line=public_line, ids=ids,
        pilot_dir=pilot_dir, proxies=proxies, sticky=sticky,
    )  # fmt: skip
    e2e.write_conf(helper_conf, front=False)
    e2e.write_conf(e2e.front_conf)

    if unix:  # a node-local SCAS on a Unix socket, same site, its own config file
        sockdir = base / "sock"
        sockdir.mkdir(mode=0o755)
        unix_settings = site.settings(
            listen=f"unix:{sockdir}/scas.sock", socket_mode="0666", tls=None,
            allowed_uids=[ids[PILOT]],
            # the server's default ticket host on the socket is socket.getfqdn(), which need
            # not be the lower-cased gethostname() the helper compares with: name it
            ticket={"key": str(private), "host": host_name()},
            audit={"file": str(base / "site" / "audit-unix.log")},
        )  # fmt: skip
        import yaml

        tls_yaml = Path(site.config_path).read_text()
        Path(site.config_path).write_text(yaml.safe_dump(unix_settings))
        try:
            e2e.unix_server = Server(site, unix_settings)
            servers.append(e2e.unix_server)
        finally:
            Path(site.config_path).write_text(tls_yaml)
        e2e.unix_sock = sockdir / "scas.sock"
    return e2e


# -- the tests -----------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def e2e() -> Iterator[E2E]:
    with e2e_site() as made:
        if isinstance(made, str):
            pytest.skip(made)
        yield made


def _status(path: Path) -> dict[str, object]:
    lines = path.read_text().splitlines()
    assert len(lines) == 1, lines
    return dict(json.loads(lines[0]))


def _status_file(e2e: E2E, name: str) -> Path:
    path = e2e.pilot_dir / f"{name}.json"
    if path.exists():
        path.unlink()
    return path


def test_id_runs_as_the_pool_account(e2e: E2E) -> None:
    status = _status_file(e2e, "id")
    res = e2e.run(["--status-file", str(status), "/usr/bin/id"])
    assert res.returncode == 0, (res.returncode, res.stderr)
    uid, gid = e2e.ids[POOL1], e2e.ids[f"{POOL1}:gid"]
    assert f"uid={uid}({POOL1}) gid={gid}({POOL1})" in res.stdout, res.stdout
    assert _status(status) == {"phase": "payload", "exit": 0, "signal": 0,
                               "reason": _status(status)["reason"]}  # fmt: skip
    assert "glexec_get_account" not in res.stderr
    log = (e2e.base / "glexec.log").read_text(errors="replace")
    assert POOL1 in log and USER_DN in log


def test_target_proxy_owned_by_target_0600_while_payload_runs(e2e: E2E) -> None:
    target = e2e.sticky / f"x509up_{os.getpid()}"
    status = _status_file(e2e, "tp")
    res = e2e.run(
        ["--status-file", str(status), "/bin/sh", "-c", 'stat -c %U:%a "$X509_USER_PROXY"'],
        e2e.env(target=str(target)),
    )
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.strip() == f"{POOL1}:600"
    assert _status(status)["phase"] == "payload" and _status(status)["exit"] == 0
    assert not target.exists()  # target_proxy_cleanup after a lingering payload


def test_banned_payload_user_is_refused_203(e2e: E2E) -> None:
    status = _status_file(e2e, "ban")
    res = e2e.run(["--status-file", str(status), "/usr/bin/id"], e2e.env(payload="banned"))
    assert res.returncode == 203, (res.returncode, res.stderr)
    record = _status(status)
    assert record["phase"] == "scas" and record["exit"] == 203
    assert "denied" in str(record["reason"]) and res.stdout == ""


def test_every_scas_endpoint_down_is_202(e2e: E2E) -> None:
    conf = e2e.write_conf(e2e.base / "front-down.conf",
                          scas_endpoints=f"https://localhost:{free_port()}/, "
                                         f"https://127.0.0.1:{free_port()}/",
                          scas_timeout="2", scas_deadline="5")  # fmt: skip
    status = _status_file(e2e, "down")
    start = time.monotonic()
    res = e2e.run(["--status-file", str(status), "/usr/bin/id"], e2e.env(conf=conf))
    assert res.returncode == 202, (res.returncode, res.stderr)
    assert time.monotonic() - start < 20
    record = _status(status)
    assert record["phase"] == "scas" and record["exit"] == 202 and res.stdout == ""


def test_pilot_proxy_without_pilot_role_gets_no_ticket_203(e2e: E2E) -> None:
    status = _status_file(e2e, "norole")
    res = e2e.run(["--status-file", str(status), "/usr/bin/id"], e2e.env(pilot_proxy="member"))
    assert res.returncode == 203, (res.returncode, res.stderr)
    record = _status(status)
    assert record["phase"] == "scas" and "issued no ticket" in str(record["reason"])
    audit = e2e.site.audit_lines()[-1]
    assert audit["decision"] == "Permit" and audit.get("ticket_nonce") is None


def test_sigterm_to_lingering_glexec_gives_143(e2e: E2E) -> None:
    status = _status_file(e2e, "term")
    kw = e2e.popen_args(["--status-file", str(status), "/bin/sleep", "30"], e2e.env())
    proc = subprocess.Popen(**kw, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # type: ignore[call-overload]
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # the payload runs as the pool account
            found = subprocess.run(["pgrep", "-u", str(e2e.ids[POOL1]), "-x", "sleep"],
                                   capture_output=True, text=True)  # fmt: skip
            if found.stdout.strip() or proc.poll() is not None:
                break
            time.sleep(0.05)
        assert proc.poll() is None, proc.communicate()
        proc.send_signal(signal.SIGTERM)
        _, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 143, (proc.returncode, err)
    record = _status(status)
    assert record["phase"] == "payload" and record["signal"] == 15 and record["exit"] == 143


def test_unix_socket_scas(e2e: E2E) -> None:
    if e2e.unix_server is None:
        pytest.skip("no Unix-socket SCAS in this setup")
    conf = e2e.write_conf(e2e.base / "front-unix.conf", scas_endpoints=None,
                          scas_socket=str(e2e.unix_sock))  # fmt: skip
    env = e2e.env(conf=conf)
    del env["X509_USER_PROXY"]  # not needed on the node-local socket
    status = _status_file(e2e, "unix")
    res = e2e.run(["--status-file", str(status), "/usr/bin/id", "-u"], env)
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.strip() == str(e2e.ids[POOL1])
    assert _status(status)["phase"] == "payload"


def test_one_shared_file_for_both_halves(e2e: E2E) -> None:
    e2e.write_conf(e2e.helper_conf, front=True)  # the front's file, setuid_helper included
    try:
        res = e2e.run(["/usr/bin/id"], e2e.env(conf=e2e.helper_conf))
    finally:
        e2e.write_conf(e2e.helper_conf, front=False)
    assert res.returncode == 0, (res.returncode, res.stderr)


def test_workdir_handover_end_to_end(e2e: E2E) -> None:
    """pilot -> glexec --workdir -> SCAS -> helper: the payload writes in a directory it owns,
    the pilot reads the result and removes the directory, nothing else of the pilot's is seen."""
    work = e2e.pilot_dir / f"job-{os.getpid()}"
    script = "pwd; echo done > result; ls .. >/dev/null 2>&1 || echo sealed"
    res = e2e.run(["--workdir", str(work), "/bin/sh", "-c", script])
    assert res.returncode == 0, (res.returncode, res.stderr)
    assert res.stdout.split() == [str(work), "sealed"]
    st = work.lstat()
    assert (st.st_uid, st.st_mode & 0o7777) == (e2e.ids[POOL1], 0o2770)
    back = subprocess.run(["/bin/sh", "-c", f"cat {work}/result && rm -r {work}"],
                          user=PILOT, group=PILOT, extra_groups=[], capture_output=True,
                          text=True, timeout=20)  # fmt: skip
    assert back.returncode == 0 and back.stdout == "done\n", back.stderr
    assert not work.exists()
