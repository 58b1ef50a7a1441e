"""A whole job-submission site on loopback, for tests, the demo and the benchmark (root only).

    with wms_site(base) as site:                  # everything below, stopped afterwards
        res = site.wms(["submit", jdl], user="alice")

What it builds under ``base`` (a directory every user can traverse, not mounted nosuid):

- throw-away accounts: the CE's service account ``wmsce01``, pool accounts ``wmspool01..03``
  (each with its own group, ids >= 1000), marked so a crashed run's leftovers are removed;
- a test PKI: one host certificate ``localhost`` (the SCAS server's and the CE's, as one host
  has one), users alice and bob (mapped to the pool) and eve (banned), VOMS proxies (dteam);
- a live ``scas-server`` (mutual TLS): LCAS bans eve, LCMAPS leases pool accounts by DN
  (gridmapdir), ``ce``/``queue`` and ``wn``/``execute-now`` both map, and glexec tickets are
  signed for the CE's host DN (``ticket.pep_allow``);
- the setuid helper built with this site's glexec.conf compiled in, installed root 4755;
- a single-node Slurm cluster (:mod:`testkit.batch`);
- the CE (``wms-ce``) running as ``wmsce01`` from a copy of the interpreter that account can
  run (the venv's lives under /root, mode 0700), with its config in ``base/ce/wms-ce.yaml``.

``python -m testkit.wms_site DIR`` starts it all, writes ``DIR/env.sh`` and an example job
``DIR/hello.jdl``, prints the command that submits it, and runs until Ctrl-C.
"""

from __future__ import annotations

import http.client
import os
import pwd
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from testkit.batch import Cluster, free_port, missing_programs, slurm_cluster
from testkit.pki import TestPKI
from testkit.pycopy import REPO, VENV
from testkit.pycopy import python_copy as copy_python

__all__ = ["CE_ACCOUNT", "POOL", "WmsSite", "missing", "wms_site"]

MARK = "scas-stack wms site test account"
CE_ACCOUNT = "wmsce01"
POOL = ("wmspool01", "wmspool02", "wmspool03")
HOST_DN = "/DC=org/DC=example/CN=localhost"
DNS = {
    "alice": "/DC=org/DC=example/O=Users/CN=Alice Smith",
    "bob": "/DC=org/DC=example/O=Users/CN=Bob Jones",
    "eve": "/DC=org/DC=example/O=Users/CN=Eve Banned",
}
FQAN = "/dteam/Role=NULL/Capability=NULL"


def missing() -> str:
    """Why the site cannot be built here ("" if it can)."""
    if os.geteuid() != 0:
        return "needs root: runs slurmd, installs a setuid helper, creates accounts"
    gone = missing_programs()
    if gone:
        return f"not installed: {', '.join(gone)} (slurmctld slurmd slurm-client munge)"
    for tool in ("make", "gcc", "useradd", "userdel", "tar"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    if not Path("/usr/include/openssl/evp.h").exists():
        return "libssl-dev (OpenSSL headers) not installed"
    if "nosuid" in _mount_options(tempfile_dir()):
        return f"{tempfile_dir()} is mounted nosuid: the setuid helper cannot run there"
    return ""


def tempfile_dir() -> str:
    import tempfile

    return tempfile.gettempdir()


def _mount_options(path: str) -> set[str]:
    target, best, options = os.path.realpath(path), "", set()
    with open("/proc/self/mountinfo", encoding="utf-8") as fh:
        for line in fh:
            fields = line.split()
            point = fields[4].replace("\\040", " ")
            if (target == point or target.startswith(point.rstrip("/") + "/")) and len(
                    point) >= len(best):  # fmt: skip
                best, options = point, set(fields[5].split(","))
    return options


# -- accounts ---------------------------------------------------------------------------


def _ours(name: str) -> bool | None:
    try:
        return pwd.getpwnam(name).pw_gecos == MARK
    except KeyError:
        return None


@contextmanager
def accounts(names: Sequence[str]) -> Iterator[dict[str, tuple[int, int]]]:
    """Make the accounts (each with its own group); yield name -> (uid, gid); remove after."""
    foreign = [n for n in names if _ours(n) is False]
    if foreign:
        raise RuntimeError(f"accounts {foreign} exist and are not this site's")
    for name in names:
        if _ours(name):
            subprocess.run(["userdel", name], capture_output=True)
            subprocess.run(["groupdel", name], capture_output=True)
    try:
        for name in names:
            subprocess.run(["useradd", "-M", "-U", "-s", "/usr/sbin/nologin", "-c", MARK, name],
                           check=True, capture_output=True)  # fmt: skip
        ids = {n: (pwd.getpwnam(n).pw_uid, pwd.getpwnam(n).pw_gid) for n in names}
        if min(min(v) for v in ids.values()) < 1000:
            raise RuntimeError(f"useradd made ids below 1000: {ids}")
        yield ids
    finally:
        for name in names:
            if _ours(name):
                subprocess.run(["userdel", name], capture_output=True)
                subprocess.run(["groupdel", name], capture_output=True)


def python_copy(base: Path) -> Path:
    """An interpreter the CE's service account and the pool accounts can run."""
    return copy_python(base, ("glexec.cli", "glexec.scas", "client.failover", "client.query",
                              "wms.ce", "wms.app", "wms.service", "flask",
                              "gunicorn.app.base"))  # fmt: skip


# -- the site ---------------------------------------------------------------------------


@dataclass
class WmsSite:
    base: Path
    pki: TestPKI
    ids: dict[str, tuple[int, int]]
    python: Path
    cluster: Cluster
    scas_port: int
    ce_port: int
    proxies: dict[str, str] = field(default_factory=dict)
    dns: dict[str, str] = field(default_factory=lambda: dict(DNS))
    pool: tuple[str, ...] = POOL
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)

    @property
    def ce_url(self) -> str:
        return f"https://localhost:{self.ce_port}"

    @property
    def ce_dir(self) -> Path:
        return self.base / "ce"

    @property
    def job_dir(self) -> Path:
        return self.ce_dir / "jobs"

    @property
    def ce_config(self) -> Path:
        return self.ce_dir / "wms-ce.yaml"

    @property
    def db_path(self) -> Path:
        return self.ce_dir / "state" / "wms-ce.sqlite"

    def env(self, user: str) -> dict[str, str]:
        """The environment ``wms`` runs with as ``user`` (their proxy, the CA directory)."""
        return {"PATH": f"{VENV / 'bin'}:/usr/bin:/bin", "LANG": "C.UTF-8",
                "X509_USER_PROXY": self.proxies[user], "X509_CERT_DIR": self.pki.certdir,
                "WMS_CE": self.ce_url, "HOME": str(self.base)}  # fmt: skip

    def wms(self, args: Sequence[str], user: str = "alice", cwd: str | None = None,
            timeout: float = 120) -> subprocess.CompletedProcess[str]:  # fmt: skip
        """The installed ``wms`` command with ``user``'s proxy."""
        return subprocess.run([str(VENV / "bin" / "wms"), *args], env=self.env(user),
                              capture_output=True, text=True, cwd=cwd or str(self.base),
                              timeout=timeout)  # fmt: skip

    # -- services --

    def start_scas(self) -> None:
        log = open(self.base / "scas" / "server.log", "ab")
        self.procs["scas"] = subprocess.Popen(
            [str(VENV / "bin" / "scas-server"), "--config", str(self.base / "scas" / "scas.yaml")],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.base / "scas")  # fmt: skip
        log.close()
        self._wait("scas", self.scas_port, (f"{self.base}/host.pem", f"{self.base}/hostkey.pem"))

    def start_ce(self) -> None:
        log = open(self.ce_dir / "ce.log", "ab")
        uid, gid = self.ids[CE_ACCOUNT]
        self.procs["ce"] = subprocess.Popen(
            [str(self.python), str(VENV / "bin" / "wms-ce"), "--config", str(self.ce_config)],
            stdout=log, stderr=subprocess.STDOUT, cwd=self.ce_dir, user=uid, group=gid,
            extra_groups=[], env={"PATH": "/usr/bin:/bin", "LANG": "C.UTF-8",
                                  "HOME": str(self.ce_dir)},
        )  # fmt: skip
        log.close()
        self._wait("ce", self.ce_port, self.proxies["alice"])

    def stop_all(self) -> None:
        for name in list(self.procs):
            self.stop(name)

    def stop(self, name: str) -> None:
        proc = self.procs.pop(name, None)
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)

    def _wait(self, name: str, port: int, cert: tuple[str, str] | str,
              timeout: float = 60) -> None:  # fmt: skip
        ctx = ssl.create_default_context(cafile=os.path.join(self.pki.dir, "ca.pem"))
        ctx.load_cert_chain(*cert) if isinstance(cert, tuple) else ctx.load_cert_chain(cert)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            proc = self.procs[name]
            if proc.poll() is not None:
                raise RuntimeError(f"{name} exited {proc.returncode}:\n{self.log_tail(name)}")
            try:
                conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=5)
                conn.request("GET", "/health")
                status = conn.getresponse().status
                conn.close()
                if status in (200, 503):
                    return
            except OSError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"{name} not ready in {timeout:.0f} s:\n{self.log_tail(name)}")

    def log_tail(self, name: str, lines: int = 30) -> str:
        path = self.ce_dir / "ce.log" if name == "ce" else self.base / "scas" / "server.log"
        try:
            return "".join(path.read_text(errors="replace").splitlines(True)[-lines:])
        except OSError as exc:
            return f"({exc.strerror})"


def _write(path: Path, text: str, mode: int = 0o644) -> Path:
    path.write_text(text)
    os.chmod(path, mode)
    return path


def _scas_files(site: WmsSite) -> str:
    """The SCAS site: ban list, grid-mapfile, gridmapdir, lcas.db, lcmaps.db, ticket key,
    config. Returns the glexec.conf line of the ticket key."""
    d = site.base / "scas"
    d.mkdir()
    _write(d / "ban_users.db", f'"{DNS["eve"]}"\n')
    _write(d / "grid-mapfile", "".join(f'"{dn}" .wmspool\n' for dn in site.dns.values()))
    (d / "gridmapdir").mkdir()
    for name in site.pool:
        (d / "gridmapdir" / name).touch()
    _write(d / "lcas.db", 'pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')
    _write(d / "lcmaps.db", f'''noop = "lcmaps_voms.mod"
pool = "lcmaps_poolaccount.mod" "-gridmapfile {d}/grid-mapfile" "-gridmapdir {d}/gridmapdir"

glexec_get_account:
noop -> pool

gatekeeper:
noop -> pool
''')
    subprocess.run([str(VENV / "bin" / "scas-admin"), "keygen", str(d)], check=True,
                   capture_output=True)  # fmt: skip
    line = (d / "scas_ticket_ed25519.key.pub").read_text().partition("=")[2].strip()
    _write(d / "scas.yaml", f"""\
listen: "127.0.0.1:{site.scas_port}"
workers: 2
tls: {{cert: {site.base}/host.pem, key: {site.base}/hostkey.pem, ca_dir: {site.pki.certdir}}}
trust: {{certdir: {site.pki.certdir}, vomsdir: {site.pki.vomsdir}}}
pep_allow: ["{HOST_DN}"]
lcas: {{db: lcas.db}}
lcmaps: {{db: lcmaps.db}}
policies:
  - {{resource: wn, action: execute-now, lcmaps: [glexec_get_account]}}
  - {{resource: ce, action: queue, lcmaps: [gatekeeper]}}
ticket: {{key: {d}/scas_ticket_ed25519.key, pep_allow: ["{HOST_DN}"]}}
audit: {{file: {d}/audit.log}}
issuer: scas.wms-site
""")
    return line


def _glexec(site: WmsSite, key_line: str) -> Path:
    """Build and install the helper with this site's glexec.conf (one file for both halves)."""
    conf, helper = site.base / "glexec.conf", site.base / "bin" / "setuid_helper"
    (site.base / "bin").mkdir(mode=0o755)
    (site.base / "nonces").mkdir(mode=0o700)
    _write(conf, f"""[glexec]
user_white_list = {CE_ACCOUNT}
min_target_uid = 1000
min_target_gid = 1000
scas_ticket_key = {key_line}
nonce_dir = {site.base}/nonces
mode = setuid
linger = yes
log_destination = file
log_file = {site.base}/glexec.log
scas_endpoints = https://localhost:{site.scas_port}/
scas_timeout = 20
scas_deadline = 30
certdir = {site.pki.certdir}
log_level = 0
setuid_helper = {helper}
""")
    build = subprocess.run(["make", "-C", str(REPO / "glexec"), f"BIN={helper}",
                            f"GLEXEC_CONF={conf}",
                            f"GLEXEC_TEST_HOST={socket.gethostname().lower()}"],
                           capture_output=True, text=True)  # fmt: skip
    if build.returncode != 0:
        raise RuntimeError(f"building the setuid helper failed:\n{build.stderr}")
    os.chown(helper, 0, 0)
    os.chmod(helper, 0o4755)
    return conf


def _ce_files(site: WmsSite, glexec_conf: Path, limit: int, key: str) -> None:
    uid, gid = site.ids[CE_ACCOUNT]
    d = site.ce_dir
    d.mkdir(mode=0o755)
    for name in ("host.pem", "hostkey.pem"):
        shutil.copyfile(site.base / name, d / name)
        os.chown(d / name, uid, gid)
        os.chmod(d / name, 0o600 if "key" in name else 0o644)
    _write(site.ce_config, f"""\
listen: "127.0.0.1:{site.ce_port}"
public_url: "{site.ce_url}"
workers: 2
threads: 8
tls: {{cert: host.pem, key: hostkey.pem, ca_dir: {site.pki.certdir}}}
trust: {{vomsdir: {site.pki.vomsdir}}}
state_dir: {d}/state
job_dir: {d}/jobs
scas:
  endpoints: ["https://localhost:{site.scas_port}/"]
  timeout: 10
  deadline: 20
glexec:
  command: ["{site.python}", "{VENV}/bin/glexec"]
  config: {glexec_conf}
slurm:
  conf: {site.cluster.conf_path}
  accounting: {site.cluster.jobcomp_log}
limits: {{input_sandbox: {limit}}}
delegation: {{key: {key}}}
""")
    os.chown(d, uid, gid)


def _pki(site: WmsSite) -> None:
    host = site.pki.host("localhost", HOST_DN)
    shutil.copyfile(host.cert_path, site.base / "host.pem")
    shutil.copyfile(host.key_path, site.base / "hostkey.pem")
    os.chmod(site.base / "hostkey.pem", 0o600)
    subprocess.run(["chmod", "-R", "a+rX", site.pki.certdir, site.pki.vomsdir], check=True)
    for d in Path(site.pki.certdir).parents:
        if d == site.base:
            break
        os.chmod(d, os.stat(d).st_mode | 0o005)
    for name, dn in site.dns.items():
        user = site.pki.user(name, dn)
        site.proxies[name] = site.pki.proxy(user, fqans=[FQAN], vo="dteam",
                                            out=str(site.base / f"{name}.pem"))  # fmt: skip


@contextmanager
def wms_site(base: str | os.PathLike[str], *, input_limit: int = 1024 * 1024, users: int = 0,
             delegation_key: str = "ec-p256") -> Iterator[WmsSite]:  # fmt: skip
    """Build and start the whole site in ``base`` (made 0755); stop everything after.

    ``users`` adds that many mapped users ``user001...`` (and as many more pool accounts).
    """
    reason = missing()
    if reason:
        raise RuntimeError(reason)
    root = Path(base).resolve()
    root.mkdir(parents=True, exist_ok=True)
    os.chmod(root, 0o755)
    with ExitStack() as stack:
        pool = POOL + tuple(f"wmspool{i:02d}" for i in range(4, 4 + users))
        ids = stack.enter_context(accounts([CE_ACCOUNT, *pool]))
        python = python_copy(root / "python")
        cluster = stack.enter_context(slurm_cluster(root / "slurm"))
        site = WmsSite(base=root, pki=TestPKI(root / "pki", reuse_keys=True), ids=ids,
                       python=python, cluster=cluster, scas_port=free_port(),
                       ce_port=free_port(), pool=pool)  # fmt: skip
        site.dns.update({f"user{i:03d}": f"/DC=org/DC=example/O=Users/CN=User {i:03d}"
                         for i in range(1, users + 1)})
        stack.callback(site.stop_all)
        _pki(site)
        site.pki.trust_vo("dteam")
        key_line = _scas_files(site)
        conf = _glexec(site, key_line)
        _ce_files(site, conf, input_limit, delegation_key)
        site.start_scas()
        site.start_ce()
        yield site


HELLO_JDL = """\
[
  Executable    = "hello.sh";
  Arguments     = "world";
  StdOutput     = "std.out";
  StdError      = "std.err";
  InputSandbox  = {"hello.sh"};
  OutputSandbox = {"greeting.txt"};
  VirtualOrganisation = "dteam";
]
"""
HELLO_SH = """#!/bin/sh
echo "hello $1 from $(id -un) on $(hostname)"
echo "a file from the job" > greeting.txt
"""


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m testkit.wms_site DIR``: run the site until Ctrl-C (root only)."""
    import argparse

    from testkit.batch import wait_for_signal

    parser = argparse.ArgumentParser(prog="python -m testkit.wms_site", description=main.__doc__)
    parser.add_argument("dir", help="directory for the whole site (made 0755)")
    args = parser.parse_args(argv)
    try:
        with wms_site(args.dir) as site:
            _write(site.base / "hello.jdl", HELLO_JDL)
            _write(site.base / "hello.sh", HELLO_SH, 0o755)
            env = site.env("alice")
            _write(site.base / "env.sh", "".join(f"export {k}={v}\n" for k, v in env.items()
                                                 if k != "HOME"))  # fmt: skip
            print(f"CE {site.ce_url} (as {CE_ACCOUNT}), SCAS https://localhost:"
                  f"{site.scas_port}, Slurm node {site.cluster.node}\n"
                  f"submit as alice:  . {site.base}/env.sh && wms submit {site.base}/hello.jdl\n"
                  "Ctrl-C stops everything.", flush=True)  # fmt: skip
            wait_for_signal()
    except (RuntimeError, OSError) as exc:
        print(f"testkit.wms_site: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
