"""``scas-admin`` edits against the real running ``scas-server``: reload, confirmation, undo.

The server's side is ``<pidfile>.status`` (scas_server/gunicorn_conf.py); the admin's side
is site_admin/reload.py and site_admin/sitefile_edit.py.
"""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator

import pytest
from server_harness import USER_DN, Server
from test_admin_edits import AdminSite

from client import xacml
from site_admin.cli import main

pytestmark = pytest.mark.slow

SCAS_ADMIN = os.path.join(os.path.dirname(sys.executable), "scas-admin")


@pytest.fixture
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[AdminSite, Server]]:
    site = AdminSite(str(tmp_path_factory.mktemp("scas-admin-live")))
    srv = Server(site, site.write_config(pidfile=str(site.path("scas.pid"))))
    yield site, srv
    srv.stop()


def status(site: AdminSite) -> dict:
    return json.loads(site.path("scas.pid.status").read_text())


def decide(site: AdminSite, srv: Server, **kw: str) -> xacml.Decision:
    code, body = srv.post(site.query(**kw))
    assert code == 200
    return xacml.parse_response(body)


def workers(master: int) -> set[int]:
    found = set()
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                with open(f"/proc/{name}/stat", "rb") as fh:
                    data = fh.read()
            except OSError:
                continue
            if int(data[data.rfind(b")") + 2:].split()[1]) == master:
                found.add(int(name))
    return found


def admin(site: AdminSite, *argv: str, capsys: pytest.CaptureFixture[str]
          ) -> tuple[int, str, str]:
    capsys.readouterr()
    code = main([*argv, "--config", site.config_path])
    out, err = capsys.readouterr()
    return code, out, err


def test_admin_status_file_counts_loads_and_gives_the_reason_of_a_rejection(
    live: tuple[AdminSite, Server],
) -> None:
    site, srv = live
    first = status(site)
    assert first["pid"] == srv.proc.pid == int(site.path("scas.pid").read_text())
    assert (first["generation"], first["attempt"]) == (1, 1)
    assert first["last"]["result"] == "applied" and first["last"]["errors"] == []
    site.write_lcmaps_db(uid="notanumber")
    srv.hup()
    deadline = time.monotonic() + 20
    while status(site)["attempt"] < 2:
        assert time.monotonic() < deadline, srv.log_text()
        time.sleep(0.1)
    second = status(site)
    assert (second["generation"], second["attempt"]) == (1, 2)
    assert second["loaded_at"] == first["loaded_at"]
    assert second["last"]["result"] == "rejected"
    assert "lcmaps.db:" in second["last"]["errors"][0]
    assert "notanumber" in second["last"]["errors"][0]
    assert second["last"]["started"] > first["last"]["at"]


def test_admin_ban_is_live_without_restart_and_unban_lifts_it(
    live: tuple[AdminSite, Server], capsys: pytest.CaptureFixture[str],
) -> None:
    site, srv = live
    assert decide(site, srv).decision == "Permit"
    old_workers = workers(srv.proc.pid)
    code, out, err = admin(site, "ban", "--dn", USER_DN, "--reason", "incident 42",
                           capsys=capsys)
    assert code == 0, err
    assert out.splitlines()[-1] == "policy live (generation 2)"
    assert status(site)["generation"] == 2
    now = workers(srv.proc.pid)  # every worker that serves started after the signal
    assert now and not now & old_workers
    for _ in range(4):  # whichever worker answers
        answer = decide(site, srv)
        assert answer.decision == "Deny" and answer.uid is None
    assert site.audit_lines()[-1]["reason"].startswith("LCAS: user is banned")
    code, out, err = admin(site, "unban", "--dn", USER_DN, "--json", capsys=capsys)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["reload"] == {"live": True, "pid": srv.proc.pid, "generation": 3}
    for _ in range(4):
        assert decide(site, srv).decision == "Permit"
    assert srv.proc.poll() is None


def test_admin_map_add_is_live(live: tuple[AdminSite, Server],
                               capsys: pytest.CaptureFixture[str]) -> None:
    site, srv = live
    assert decide(site, srv, resource="ce", action="queue").decision != "Permit"
    code, out, err = admin(site, "map", "add", USER_DN, "daemon", capsys=capsys)
    assert code == 0, err
    assert "policy live (generation 2)" in out
    answer = decide(site, srv, resource="ce", action="queue")
    assert (answer.decision, answer.username, answer.uid) == ("Permit", "daemon", 1)
    assert admin(site, "map", "rm", USER_DN, capsys=capsys)[0] == 0
    assert decide(site, srv, resource="ce", action="queue").decision != "Permit"


def test_admin_rejected_reload_restores_the_files_and_keeps_the_policy(
    live: tuple[AdminSite, Server], capsys: pytest.CaptureFixture[str],
) -> None:
    """Another hand broke lcmaps.db beside our edit: the server refuses the reload, so the
    edit is undone (exact bytes) and the running policy is the one before."""
    site, srv = live
    before = site.snapshot()
    inodes = {n: os.stat(site.path(n)).st_ino for n in before}
    site.write_lcmaps_db(uid="notanumber")
    code, _out, err = admin(site, "ban", "--dn", USER_DN, capsys=capsys)
    assert code == 1
    assert err.startswith("scas-admin: the server rejected the new policy, so the edit was "
                          "undone") and err.count("\n") == 1
    assert re.search(rf"{site.directory}/lcmaps.db:\d+: cannot initialise lcmaps_dummy_good", err)
    assert site.snapshot() == before
    assert os.stat(site.path("ban_users.db")).st_ino != inodes["ban_users.db"]  # rewritten
    st = status(site)  # our reload and the one after the restore, both refused
    assert (st["generation"], st["attempt"], st["last"]["result"]) == (1, 3, "rejected")
    time.sleep(1.0)  # the workers gunicorn restarted serve the old policy
    for _ in range(4):
        answer = decide(site, srv)
        assert (answer.decision, answer.uid) == ("Permit", 40001)
    assert srv.proc.poll() is None


def test_admin_concurrent_bans_with_live_reloads_all_land(
    live: tuple[AdminSite, Server],
) -> None:
    site, _srv = live
    script = (
        "import sys\nfrom site_admin.cli import main\n"
        "for i in range(4):\n"
        "    code = main(['ban', '--dn', sys.argv[1] + str(i), '--config', sys.argv[2]])\n"
        "    if code:\n        sys.exit(code)\n"
    )
    procs = [subprocess.Popen([sys.executable, "-c", script, f"/DC=org/CN=Admin{n} ",
                               site.config_path], stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for n in "AB"]
    for proc in procs:
        out, err = proc.communicate(timeout=300)
        assert proc.returncode == 0, err
        assert out.count("policy live (generation") == 4
    data = site.path("ban_dn.db").read_text()
    assert all(f'"/DC=org/CN=Admin{n} {i}"\n' in data for n in "AB" for i in range(4))
    assert status(site)["generation"] == 9


def test_admin_reload_that_is_never_reported_times_out_with_exit_2(
    live: tuple[AdminSite, Server],
) -> None:
    """A master that cannot handle the SIGHUP (here: stopped) gives a clear exit 2."""
    from site_admin.reload import ReloadTimeout, reload_server

    site, srv = live
    os.kill(srv.proc.pid, signal.SIGSTOP)
    try:
        with pytest.raises(ReloadTimeout) as info:
            reload_server(str(site.path("scas.pid")), timeout=1.5)
    finally:
        os.kill(srv.proc.pid, signal.SIGCONT)
    assert info.value.exit_code == 2
    assert f"scas-server (pid {srv.proc.pid}) did not report the reload" in info.value.reason
    deadline = time.monotonic() + 20  # the queued SIGHUP is handled once it runs again
    while status(site)["attempt"] < 2:
        assert time.monotonic() < deadline
        time.sleep(0.1)
    assert decide(site, srv).decision == "Permit"


def test_admin_edit_while_the_server_is_stopped_stays_written(
    live: tuple[AdminSite, Server],
) -> None:
    site, srv = live
    srv.stop()
    proc = subprocess.run([SCAS_ADMIN, "ban", "--dn", USER_DN, "--config", site.config_path],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "server not running; the change takes effect at its next start" in proc.stdout
    assert f'"{USER_DN}"\n' in site.path("ban_dn.db").read_text()
    again = Server(site, srv.settings)
    try:
        assert decide(site, again).decision == "Deny"
    finally:
        again.stop()


def test_admin_never_signals_a_process_the_status_file_names_but_is_no_scas_server(
    live: tuple[AdminSite, Server],
) -> None:
    """A crash leaves the pidfile and <pidfile>.status naming a pid the kernel may reuse, and
    whoever runs the server can write both: root checks the process before SIGHUP."""
    site, _ = live
    stranger = subprocess.Popen(["sleep", "60"])
    pidfile = str(site.path("scas.pid"))
    saved = {}
    for path in (pidfile, pidfile + ".status"):
        with open(path) as fh:
            saved[path] = fh.read()
    try:
        status = json.loads(saved[pidfile + ".status"])
        status["pid"] = stranger.pid
        with open(pidfile, "w") as fh:
            fh.write(f"{stranger.pid}\n")
        with open(pidfile + ".status", "w") as fh:
            json.dump(status, fh)
        proc = subprocess.run([SCAS_ADMIN, "ban", "--dn", USER_DN, "--config",
                               site.config_path], capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert "not the scas-server master" in proc.stderr
        assert stranger.poll() is None  # not signalled
        assert USER_DN not in site.path("ban_dn.db").read_text()  # nothing written
    finally:
        stranger.kill()
        stranger.wait()
        for path, text in saved.items():
            with open(path, "w") as fh:
                fh.write(text)
