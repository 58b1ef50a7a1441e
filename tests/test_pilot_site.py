"""The site the pilot tests run on (no tests here): every part real, one of each per module.

- throw-away accounts: the pilot ``plpilot01`` and the pool ``plpool01``/``plpool02``;
- a live ``scas-server`` (mutual TLS) whose lcmaps.db leases pool accounts from a gridmapdir
  (each user DN gets its own), whose lcas.db bans Eve, and which signs glexec tickets only for
  PEPs with ``/dteam/Role=pilot``; it can be stopped and started again on the same port;
- the real setuid helper (root:root 4755, its glexec.conf compiled in) and the ``glexec`` and
  ``pilot`` console scripts run by an interpreter copy the pilot account can execute
  (``python_copy`` of tests/test_glexec_e2e.py);
- Debian's ``myproxy-server`` (testkit/myproxy.py), whose policy lets only
  ``FQAN:/dteam/Role=pilot*`` retrieve; Carol, Alice and Eve store VOMS proxies there with
  ``myproxy-init -n``, Dave a plain proxy;
- a Slurm cluster (testkit/batch.py) where the pilot runs with ``sbatch`` as ``plpilot01``;
- the test task queue (testkit/taskqueue.py).
"""

from __future__ import annotations

import json
import os
import pwd
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

from helper_fixtures import suid_dir, throwaway_accounts
from server_harness import USER_DN, Server, Site
from test_glexec_e2e import CONSOLE_SCRIPT, VENV, python_copy

from testkit.batch import Cluster, missing_programs, slurm_cluster
from testkit.myproxy import MyProxyServer, RetrieverPolicy, myproxy_server
from testkit.myproxy import missing as myproxy_missing
from testkit.taskqueue import MyProxyRef, TaskQueue, task_queue

REPO = Path(__file__).resolve().parent.parent
PILOT_SCRIPT = VENV / "bin" / "pilot"
PILOT, POOL = "plpilot01", ("plpool01", "plpool02")
PILOT_DN = "/DC=org/DC=example/O=Users/CN=Pilot Factory"
ALICE_DN = "/DC=org/DC=example/O=Users/CN=Alice Payload"
EVE_DN = "/DC=org/DC=example/O=Users/CN=Eve Banned"
DAVE_DN = "/DC=org/DC=example/O=Users/CN=Dave Plain"
CAROL_DN = USER_DN
PILOT_FQAN = "/dteam/Role=pilot/Capability=NULL"
MEMBER_FQAN = "/dteam/Role=NULL/Capability=NULL"
OWNERS = {"carol": CAROL_DN, "alice": ALICE_DN, "eve": EVE_DN, "dave": DAVE_DN}
RETRY_DELAY = 2


def missing() -> str:
    """Why the pilot tests cannot run here ("" if they can)."""
    if os.geteuid() != 0:
        return "needs root: Slurm daemons, a setuid-root helper, throw-away accounts"
    for tool in ("make", "gcc", "useradd", "userdel", "groupadd", "groupdel"):
        if not shutil.which(tool):
            return f"{tool} not installed"
    if not Path("/usr/include/openssl/evp.h").exists():
        return "libssl-dev (OpenSSL headers) not installed"
    gone = missing_programs() + myproxy_missing(RetrieverPolicy.pilots_only("FQAN:/x/*"))
    if gone:
        return (f"not installed: {', '.join(gone)} (packages slurmctld slurmd slurm-client "
                "munge myproxy myproxy-server libmyproxy-voms)")  # fmt: skip
    if not (CONSOLE_SCRIPT.exists() and PILOT_SCRIPT.exists()):
        return "glexec/pilot console scripts not installed (pip install -e . in the venv)"
    return ""


def _own(path: Path, uid: int, gid: int, mode: int) -> None:
    os.chown(path, uid, gid)
    os.chmod(path, mode)


@dataclass
class PilotSite:
    base: Path
    ids: dict[str, int]
    python: Path
    helper: Path
    site: Site
    settings: dict[str, Any]
    server: Server | None
    pilot_dir: Path
    proxies: dict[str, Path]  # the pilot's own: "role" and "member" (no pilot role)
    root_proxies: dict[str, Path]  # the same credentials, root's files (for root's clients)
    sticky: Path
    cluster: Cluster = field(init=False)
    myproxy: MyProxyServer = field(init=False)
    queue: TaskQueue = field(init=False)
    jobs: int = 0

    # -- SCAS ------------------------------------------------------------------------------

    def stop_scas(self) -> None:
        if self.server is not None:
            self.server.stop()
            self.server = None

    def start_scas(self) -> None:
        if self.server is None:
            self.server = Server(self.site, self.settings)

    def audit(self) -> list[dict[str, Any]]:
        return self.site.audit_lines()

    # -- payloads and pilots ---------------------------------------------------------------

    def add(self, user: str, command: list[str], **kw: Any) -> str:
        ref = MyProxyRef("localhost", self.myproxy.port, user)
        return self.queue.add(owner=OWNERS.get(user, user), myproxy=ref, command=command, **kw)

    def submit(self, name: str, *, budget: float = 90, proxy: str = "role",
               extra: tuple[str, ...] = ("--json",)) -> tuple[str, Path, Path]:  # fmt: skip
        """sbatch the pilot as PILOT; returns (job id, its output file, its work parent)."""
        self.jobs += 1
        work = self.pilot_dir / f"work-{name}"
        work.mkdir()
        _own(work, self.ids[PILOT], self.ids[f"{PILOT}:gid"], 0o700)
        out = self.pilot_dir / f"{name}.out"
        script = self.pilot_dir / f"{name}.sh"
        env = {
            "PATH": "/usr/bin:/bin", "HOME": str(self.pilot_dir), "TMPDIR": str(self.pilot_dir),
            "XDG_RUNTIME_DIR": str(self.pilot_dir / "run"),
            "X509_USER_PROXY": str(self.proxies[proxy]), "X509_CERT_DIR": self.site.pki.certdir,
            "X509_VOMS_DIR": self.site.pki.vomsdir, "GLEXEC_CONFIG": str(self.base / "front.conf"),
        }  # fmt: skip
        argv = [str(self.python), str(PILOT_SCRIPT), "--queue", self.queue.url,
                "--budget", str(budget), "--work-dir", str(work),
                "--glexec", f"{self.python} {CONSOLE_SCRIPT}",
                "--target-proxy-dir", str(self.sticky), "--retry-delay", str(RETRY_DELAY),
                *extra]  # fmt: skip
        lines = ["#!/bin/sh", *(f"export {k}='{v}'" for k, v in env.items()),
                 "exec " + " ".join(f"'{a}'" for a in argv)]  # fmt: skip
        script.write_text("\n".join(lines) + "\n")
        _own(script, self.ids[PILOT], self.ids[f"{PILOT}:gid"], 0o700)
        job = self.cluster.sbatch(["--export=NONE", "-J", name, "-o", str(out), str(script)],
                                  user=PILOT, cwd=self.pilot_dir)  # fmt: skip
        return job, out, work

    def events(self, out: Path) -> list[dict[str, Any]]:
        """The pilot's JSON lines from its job output (other lines are kept under "text")."""
        found = []
        for line in out.read_text(errors="replace").splitlines() if out.exists() else []:
            try:
                found.append(json.loads(line))
            except ValueError:
                found.append({"text": line})
        return found

    # -- what is left on the node ----------------------------------------------------------

    def pool_processes(self) -> list[tuple[int, str]]:
        """(pid, comm) of every process whose real uid is a pool account."""
        uids = {self.ids[p] for p in POOL}
        found = []
        for entry in filter(str.isdigit, os.listdir("/proc")):
            try:
                if os.stat(f"/proc/{entry}").st_uid in uids:
                    found.append((int(entry), Path(f"/proc/{entry}/comm").read_text().strip()))
            except OSError:
                continue
        return found

    def proxy_files(self) -> list[str]:
        """Files holding a private key anywhere the pilot or a payload could leave one."""
        inputs = {str(p) for p in self.proxies.values()}
        found = []
        for top in (self.pilot_dir, self.sticky):
            for root, _, names in os.walk(top):
                for name in names:
                    path = os.path.join(root, name)
                    if path not in inputs and _has_key(path):
                        found.append(path)
        return found

    def until(self, check: Callable[[], object], timeout: float = 30.0) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if check():
                return True
            time.sleep(0.1)
        return bool(check())


def _has_key(path: str) -> bool:
    try:
        with open(path, "rb") as fh:
            return b"PRIVATE KEY-----" in fh.read(1 << 20)
    except OSError:
        return False


@contextmanager
def pilot_site() -> Iterator[PilotSite | str]:
    """The whole site, or the reason it cannot be made (skip with it)."""
    reason = missing()
    if reason:
        yield reason
        return
    base, why = suid_dir([tempfile.gettempdir(), "/var/tmp"])
    if base is None:
        yield f"no directory where a setuid binary runs as root: {why}"
        return
    try:
        with throwaway_accounts([PILOT, *POOL]) as problem, ExitStack() as stack:
            if problem:
                yield problem
                return
            names = (PILOT, *POOL)
            ids = {n: pwd.getpwnam(n).pw_uid for n in names}
            ids.update({f"{n}:gid": pwd.getpwnam(n).pw_gid for n in names})
            ps = _build(base, ids)
            stack.callback(ps.stop_scas)
            ps.cluster = stack.enter_context(slurm_cluster(base / "slurm"))
            ps.myproxy = stack.enter_context(myproxy_server(
                base / "myproxy", ps.site.pki,
                policy=RetrieverPolicy.pilots_only("FQAN:/dteam/Role=pilot*")))  # fmt: skip
            ps.queue = stack.enter_context(task_queue())
            _store_users(ps)
            yield ps
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _build(base: Path, ids: dict[str, int]) -> PilotSite:
    from glexec.scas import host_name
    from scas_server import ticket as tickets

    python = python_copy(base)
    (base / "nonces").mkdir(mode=0o700)
    (base / "bin").mkdir(mode=0o755)
    helper = base / "bin" / "setuid_helper"
    build = subprocess.run(
        ["make", "-C", str(REPO / "glexec"), f"BIN={helper}",
         f"GLEXEC_CONF={base / 'glexec.conf'}", f"GLEXEC_TEST_HOST={host_name()}"],
        capture_output=True, text=True,
    )  # fmt: skip
    assert build.returncode == 0, build.stderr
    _own(helper, 0, 0, 0o4755)

    site = Site(str(base / "site"))
    _write_policy(Path(site.directory))
    site.pki.trust_vo("dteam")
    private, _, public_line = tickets.keygen(site.directory)
    settings = site.write_config(
        pep_allow=[PILOT_DN, "/DC=org/DC=example/CN=pep*"],
        trust={"certdir": site.pki.certdir, "vomsdir": site.pki.vomsdir},
        ticket={"key": str(private), "pep_fqans": ["/dteam/Role=pilot"]},
    )  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rX", site.pki.certdir, site.pki.vomsdir], check=True)
    for d in Path(site.pki.certdir).parents:
        if d == base:
            break
        os.chmod(d, os.stat(d).st_mode | 0o005)

    pilot_dir = base / "pilot"
    (pilot_dir / "run").mkdir(parents=True)
    pilot_user = site.pki.user("pilot", PILOT_DN)
    proxies, root_proxies = {}, {}
    for name, fqan in (("role", PILOT_FQAN), ("member", MEMBER_FQAN)):
        dst = pilot_dir / f"{name}.pem"
        root_proxies[name] = Path(site.pki.proxy(pilot_user, fqans=[fqan], vo="dteam"))
        shutil.copyfile(root_proxies[name], dst)
        _own(dst, ids[PILOT], ids[f"{PILOT}:gid"], 0o600)
        proxies[name] = dst
    for d in (pilot_dir, pilot_dir / "run"):
        _own(d, ids[PILOT], ids[f"{PILOT}:gid"], 0o700)
    sticky = base / "tp"
    sticky.mkdir()
    _own(sticky, 0, 0, 0o1777)

    keys = {
        "user_white_list": PILOT, "min_target_uid": "1000", "min_target_gid": "1000",
        "scas_ticket_key": public_line.partition("=")[2].strip(),
        "nonce_dir": str(base / "nonces"), "linger": "yes", "log_destination": "file",
        "log_file": str(base / "glexec.log"), "preserve_env_variables": "PAYLOAD_TAG",
        "scas_endpoints": f"https://localhost:{settings['listen'].rsplit(':', 1)[1]}/",
        "scas_timeout": "5", "scas_deadline": "8", "certdir": site.pki.certdir,
    }  # fmt: skip
    for name, extra in (("glexec.conf", {}), ("front.conf", {"setuid_helper": str(helper)})):
        path = base / name
        path.write_text("[glexec]\n" + "".join(f"{k} = {v}\n" for k, v in
                                               {**keys, **extra}.items()))  # fmt: skip
        _own(path, 0, 0, 0o644)
    return PilotSite(base, ids, python, helper, site, settings, Server(site, settings),
                     pilot_dir, proxies, root_proxies, sticky)  # fmt: skip


def _write_policy(site_dir: Path) -> None:
    """Every user DN leases its own pool account; Eve is banned by LCAS."""
    gmd = site_dir / "gridmapdir"
    gmd.mkdir()
    for name in POOL:
        (gmd / name).touch()
    mapfile = site_dir / "grid-mapfile"
    mapfile.write_text("".join(f'"{dn}" .plpool\n' for dn in OWNERS.values()))
    (site_dir / "lcmaps.db").write_text(
        'noop = "lcmaps_voms.mod"\n'
        f'pool = "lcmaps_poolaccount.mod" "-gridmapfile {mapfile}" "-gridmapdir {gmd}"\n\n'
        "glexec_get_account:\nnoop -> pool\n\ngatekeeper:\nnoop -> pool\n")  # fmt: skip
    (site_dir / "ban_users.db").write_text(f'"{EVE_DN}"\n')
    (site_dir / "lcas.db").write_text('pluginname="lcas_userban.mod",pluginargs="ban_users.db"\n')


def _store_users(ps: PilotSite) -> None:
    """Users store their proxies in MyProxy with the real client (``myproxy-init -n``)."""
    pki = ps.site.pki
    people = {"carol": ps.site.user, "alice": pki.user("alice", ALICE_DN),
              "eve": pki.user("eve", EVE_DN), "dave": pki.user("dave", DAVE_DN)}  # fmt: skip
    for name, user in people.items():
        fqans = [] if name == "dave" else [MEMBER_FQAN]
        ps.myproxy.store(pki.proxy(user, fqans=fqans, vo="dteam"), name)
