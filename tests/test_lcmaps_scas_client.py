"""lcmaps_scas_client.mod in an lcmaps.db run by lcmaps-run, against a live scas-server."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest
from server_harness import Server, Site, free_port

from lcmaps.plugin_api import PluginInitError
from lcmaps.plugins.scas_client import ScasClient

pytestmark = pytest.mark.slow
LCMAPS_RUN = os.path.join(os.path.dirname(sys.executable), "lcmaps-run")


@pytest.fixture(scope="module")
def live(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Site, Server]]:
    site = Site(str(tmp_path_factory.mktemp("scas-plugin")))
    srv = Server(site, site.write_config())
    yield site, srv
    srv.stop()


def run(site: Site, tmp: str, *endpoints: str, resource: str = "wn",
        action: str = "execute-now", name: str = "lcmaps_scas_client.mod") -> tuple[int, dict]:
    eps = " ".join(f'"-endpoint {e}"' for e in endpoints)
    db = os.path.join(tmp, "lcmaps.db")
    with open(db, "w") as fh:
        fh.write(f'scas = "{name}" {eps} "-resourcetype {resource}" "-actiontype {action}"'
                 f' "-capath {site.pki.certdir}" "-cert {site.pep.cert_path}"'
                 f' "-key {site.pep.key_path}" "-timeout 5" "-deadline 10"\n'
                 'noop = "lcmaps_voms.mod"\n\nmap:\nnoop -> scas\n')
    env = dict(os.environ, XDG_RUNTIME_DIR=tmp)
    proc = subprocess.run([LCMAPS_RUN, "--db", db, "--pem", site.user.cert_path],
                          capture_output=True, text=True, timeout=60, env=env)
    return proc.returncode, json.loads(proc.stdout.strip().splitlines()[-1])


def test_permit_gives_uid_gids(live: tuple[Site, Server], tmp_path: Path) -> None:
    site, srv = live
    rc, out = run(site, str(tmp_path), f"https://localhost:{srv.port}/")
    assert rc == 0 and out["decision"] == "permit"
    assert (out["uid"], out["pgid"], out["sgids"]) == (40001, 4000, [4001])


def test_deny_is_a_deny_and_gums_name_works(live: tuple[Site, Server], tmp_path: Path) -> None:
    site, srv = live
    rc, out = run(site, str(tmp_path), f"https://localhost:{srv.port}/", resource="ce",
                  action="queue", name="lcmaps_gums_client.mod")
    assert rc == 1 and out["decision"] == "deny" and "Deny at https://localhost" in out["reason"]


def test_failover_past_a_dead_endpoint(live: tuple[Site, Server], tmp_path: Path) -> None:
    site, srv = live
    rc, out = run(site, str(tmp_path), f"https://localhost:{free_port()}/",
                  f"https://localhost:{srv.port}/")
    assert rc == 0 and out["uid"] == 40001


def test_no_endpoint_answering_is_an_error_not_a_deny(
    live: tuple[Site, Server], tmp_path: Path
) -> None:
    site, _ = live
    rc, out = run(site, str(tmp_path), f"https://localhost:{free_port()}/")
    assert rc == 2 and out["decision"] == "error" and "refused" in out["reason"]


@pytest.mark.parametrize(("argv", "reason"), [
    ((), "no -endpoint given"),
    (("-endpoint",), "needs to be followed by a URL"),
    (("-endpoint", "https://x/", "-resourcetype", "xx"), "takes wn, ce, se"),
    (("-endpoint", "https://x/", "-timeout", "0"), "between 0 and 3600"),
    (("-endpoint", "https://x/", "-bogus"), "unknown argument '-bogus'"),
])
def test_bad_arguments_refused(argv: tuple[str, ...], reason: str) -> None:
    with pytest.raises(PluginInitError, match=reason):
        ScasClient(("lcmaps_scas_client.mod", *argv))
