"""``python -m testkit.demo_site [WORKDIR] [--port 8443] [--keep]``: the SCAS service, end to end.

Writes a throw-away PKI, a grid-mapfile, a ban list, lcas.db, lcmaps.db and a
server YAML into WORKDIR, starts ``scas-server`` on https://127.0.0.1:PORT with
mutual TLS, and asks it, as a PEP with a host certificate, about a mapped user
(Permit with obligations) and a banned user (Deny).

As root it creates pool accounts ``scasdemo001..003`` (group ``scasdemo``) and
maps through the gridmapdir; as an ordinary user it maps to the invoking
account with the localaccount plugin, so a decision is shown either way.
"""

from __future__ import annotations

import argparse
import getpass
import http.client
import os
import shutil
import signal
import ssl
import subprocess
import sys
import time

from client import xacml

ALICE = "/DC=org/DC=example/O=Users/CN=Alice Smith"
BOB = "/DC=org/DC=example/O=Users/CN=Bob Banned"
PEP = "/DC=org/DC=example/O=Hosts/CN=ce1.example.org"
POOL = [f"scasdemo{i:03d}" for i in (1, 2, 3)]


def _pool_accounts(work: str) -> str:
    """Create the demo pool (root only) and its gridmapdir; return the mapfile target."""
    import pwd

    if subprocess.run(["getent", "group", "scasdemo"], capture_output=True).returncode:
        subprocess.run(["groupadd", "scasdemo"], check=True)
    gridmapdir = os.path.join(work, "gridmapdir")
    os.makedirs(gridmapdir, exist_ok=True)
    for name in POOL:
        try:
            pwd.getpwnam(name)
        except KeyError:
            subprocess.run(["useradd", "-M", "-N", "-g", "scasdemo", "-d", "/nonexistent",
                            "-s", "/usr/sbin/nologin", name], check=True)
        open(os.path.join(gridmapdir, name), "a").close()
    return gridmapdir


def _write(path: str, text: str) -> None:
    with open(path, "w") as fh:
        fh.write(text)


def setup(work: str, port: int) -> dict[str, str]:
    from testkit.pki import TestPKI

    pki = TestPKI(os.path.join(work, "pki"), reuse_keys=True)
    server = pki.host("localhost", "/DC=org/DC=example/O=Hosts/CN=localhost")
    pep = pki.host("ce1.example.org", PEP)
    alice, bob = pki.user("alice", ALICE), pki.user("bob", BOB)
    _write(os.path.join(work, "ban_users.db"), f'"{BOB}"\n')
    if os.geteuid() == 0:
        gridmapdir = _pool_accounts(work)
        _write(os.path.join(work, "grid-mapfile"), f'"{ALICE}" .scasdemo\n"{BOB}" .scasdemo\n')
        mapper = (f'pool = "lcmaps_poolaccount.mod" " -gridmapfile {work}/grid-mapfile"'
                  f' " -gridmapdir {gridmapdir}"\n')
    else:
        me = getpass.getuser()
        _write(os.path.join(work, "grid-mapfile"), f'"{ALICE}" {me}\n"{BOB}" {me}\n')
        mapper = f'pool = "lcmaps_localaccount.mod" " -gridmapfile {work}/grid-mapfile"\n'
    _write(os.path.join(work, "lcmaps.db"),
           f'ban = "lcmaps_ban_dn.mod" " -banmapfile {work}/ban_users.db"\n{mapper}\n'
           "glexec_get_account:\nban -> pool\n\ngatekeeper:\nban -> pool\n")
    _write(os.path.join(work, "lcas.db"), 'pluginname="lcas_plugin_example.mod"\n')
    _write(os.path.join(work, "scas.yaml"), f"""\
listen: "127.0.0.1:{port}"
workers: 2
tls: {{cert: {server.cert_path}, key: {server.key_path}, ca_dir: {pki.certdir}}}
trust: {{certdir: {pki.certdir}, vomsdir: {pki.vomsdir}}}
pep_allow: ["/DC=org/DC=example/O=Hosts/CN=ce*.example.org"]
lcas: {{db: lcas.db}}
lcmaps: {{db: lcmaps.db}}
policies:
  - {{resource: wn, action: execute-now, lcmaps: [glexec_get_account]}}
  - {{resource: ce, action: queue, lcmaps: [gatekeeper]}}
audit: {{file: {work}/audit.log}}
issuer: scas.demo
""")
    return {"pep_cert": pep.cert_path, "pep_key": pep.key_path, "ca": pki.dir + "/ca.pem",
            "alice": alice.cert_path, "bob": bob.cert_path}


def ask(port: int, files: dict[str, str], who: str, dn: str) -> xacml.Decision:
    with open(files[who], "rb") as fh:
        body = xacml.build_request(subject_dn=dn, cert_chain=fh.read(), resource="ce",
                                   action="queue", pep_dn=PEP)
    ctx = ssl.create_default_context(cafile=files["ca"])
    ctx.load_cert_chain(files["pep_cert"], files["pep_key"])
    conn = http.client.HTTPSConnection("localhost", port, context=ctx, timeout=20)
    conn.request("POST", "/", body, {"Content-Type": xacml.CONTENT_TYPE_SOAP11})
    return xacml.parse_response(conn.getresponse().read())


def show(name: str, dn: str, d: xacml.Decision) -> None:
    print(f"\n{name} ({dn}): {d.decision}")
    if d.decision == "Permit":
        print(f"  uidgid: uid={d.uid} gid={d.gid}   secondary-gids: {list(d.sgids)}")
        print(f"  username: {d.username}")
    elif d.status_message:
        print(f"  reason: {d.status_message}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m testkit.demo_site")
    parser.add_argument("workdir", nargs="?", default="demo-work/scas")
    parser.add_argument("--port", type=int, default=8443)
    parser.add_argument("--keep", action="store_true", help="leave the server running")
    args = parser.parse_args(argv)
    work = os.path.abspath(args.workdir)
    shutil.rmtree(work, ignore_errors=True)
    os.makedirs(work)
    files = setup(work, args.port)
    exe = os.path.join(os.path.dirname(sys.executable), "scas-server")
    log = open(os.path.join(work, "server.log"), "ab")
    proc = subprocess.Popen([exe, "--config", os.path.join(work, "scas.yaml")],
                            stdout=log, stderr=subprocess.STDOUT)
    print(f"scas-server on https://127.0.0.1:{args.port} (config {work}/scas.yaml)")
    try:
        for _ in range(150):
            if proc.poll() is not None:
                print(open(os.path.join(work, "server.log")).read(), file=sys.stderr)
                return 1
            try:
                alice = ask(args.port, files, "alice", ALICE)
                break
            except OSError:
                time.sleep(0.2)
        else:
            return 1
        show("alice", ALICE, alice)
        show("bob", BOB, ask(args.port, files, "bob", BOB))
        print(f"\naudit log: {work}/audit.log")
    finally:
        if args.keep:
            print(f"server left running: kill {proc.pid}")
        else:
            proc.send_signal(signal.SIGTERM)
            proc.wait(15)
        log.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
