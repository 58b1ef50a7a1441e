"""SIGHUP: a valid new configuration takes effect; an invalid one never takes the service down."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest
from server_harness import Server, Site

from client import xacml

pytestmark = pytest.mark.slow


@pytest.fixture
def running(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Server]]:
    site = Site(str(tmp_path_factory.mktemp("scas-reload")))
    srv = Server(site, site.write_config())
    yield site, srv
    srv.stop()


def _uid(site: Site, srv: Server) -> int | None:
    status, body = srv.post(site.query())
    assert status == 200
    return xacml.parse_response(body).uid


def _wait_log(srv: Server, text: str, count: int = 1, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while srv.log_text().count(text) < count:
        assert time.monotonic() < deadline, f"no {text!r} in server log:\n{srv.log_text()}"
        time.sleep(0.1)


def _wait_uid(site: Site, srv: Server, uid: int, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while _uid(site, srv) != uid:
        assert time.monotonic() < deadline, "new policy never took effect"
        time.sleep(0.2)


def test_server_reload_invalid_lcmaps_db_keeps_old_policy(running: tuple[Site, Server]) -> None:
    site, srv = running
    assert _uid(site, srv) == 40001
    with open(site.directory + "/lcmaps.db", "a") as fh:
        fh.write("broken policy line ->\n")
    srv.hup()
    _wait_log(srv, "reload rejected, keeping the running policy")
    assert "lcmaps.db:" in srv.log_text().split("reload rejected")[-1].splitlines()[0]
    time.sleep(1.0)  # gunicorn has replaced the workers by now
    for _ in range(6):  # whichever worker answers, the old policy is served
        assert _uid(site, srv) == 40001
    assert srv.proc.poll() is None


def test_server_reload_invalid_yaml_keeps_serving(running: tuple[Site, Server]) -> None:
    site, srv = running
    with open(site.config_path, "a") as fh:
        fh.write("workers: [unclosed\n")
    srv.hup()
    _wait_log(srv, "reload rejected")
    assert "scas.yaml:" in srv.log_text()
    time.sleep(1.0)
    assert _uid(site, srv) == 40001
    status, _ = srv.request("GET", "/health")
    assert status == 200


def test_server_reload_valid_config_takes_effect(running: tuple[Site, Server]) -> None:
    site, srv = running
    site.write_lcmaps(uid=40002, gid=4000, sgid=4001, name="lcmaps-new.db")
    settings = dict(srv.settings)
    settings["lcmaps"] = {"db": "lcmaps-new.db"}
    import yaml

    with open(site.config_path, "w") as fh:
        yaml.safe_dump(settings, fh)
    srv.hup()
    _wait_log(srv, "configuration reloaded")
    _wait_uid(site, srv, 40002)
    time.sleep(1.0)
    for _ in range(6):
        assert _uid(site, srv) == 40002


def test_server_reload_lcas_plugin_that_cannot_initialise_is_refused(
    running: tuple[Site, Server],
) -> None:
    """An LCAS plugin refusing its arguments refuses the new configuration, like an LCMAPS
    one, instead of loading and then denying everyone while /health says ok."""
    site, srv = running
    with open(site.directory + "/lcas.db", "w") as fh:
        fh.write('pluginname="lcas_userban.mod",pluginargs="no-such-ban-file.db"\n')
    srv.hup()
    _wait_log(srv, "reload rejected, keeping the running policy")
    assert "cannot initialise lcas_userban.mod" in srv.log_text().split("reload rejected")[-1]
    time.sleep(1.0)
    assert _uid(site, srv) == 40001
    assert srv.request("GET", "/health")[0] == 200


def test_server_check_names_an_lcas_plugin_that_cannot_initialise(
    tmp_path_factory: pytest.TempPathFactory,
) -> None:
    import subprocess

    from server_harness import SCAS_SERVER

    site = Site(str(tmp_path_factory.mktemp("scas-lcas-init")))
    site.write_config()
    with open(site.directory + "/lcas.db", "w") as fh:
        fh.write('pluginname="lcas_userban.mod",pluginargs="no-such-ban-file.db"\n')
    proc = subprocess.run([SCAS_SERVER, "--config", site.config_path, "--check"],
                          capture_output=True, text=True, cwd=site.directory, timeout=60)
    assert proc.returncode != 0
    assert "lcas.db: cannot initialise lcas_userban.mod" in proc.stderr + proc.stdout
