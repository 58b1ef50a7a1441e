"""scas-admin inspect-proxy: what an admin sees, and the exit codes scripts rely on."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

from testkit.pki import TestPKI, User

DTEAM = "/dteam/Role=NULL/Capability=NULL"


def _inspect(pki: TestPKI, path: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "site_admin.cli", "inspect-proxy", path,
         "--certdir", pki.certdir, "--vomsdir", pki.vomsdir, *extra],
        capture_output=True, text=True, timeout=60,
    )


def test_inspect_proxy_valid_voms_proxy(pki: TestPKI, users: dict[str, User]) -> None:
    path = pki.proxy(users["jurgen"], fqans=[DTEAM, "/dteam/production/Role=NULL/Capability=NULL"])
    proc = _inspect(pki, path)
    assert proc.returncode == 0 and proc.stderr == ""
    assert "identity    : /DC=org/DC=example/O=Users/CN=J\\xC3\\xBCrgen M\\xC3\\xBCller" \
        in proc.stdout
    assert "type        : RFC 3820 proxy\n" in proc.stdout
    assert proc.stdout.index(DTEAM) < proc.stdout.index("/dteam/production")
    info = json.loads(_inspect(pki, path, "--json").stdout)
    assert info["valid"] and info["vo"] == "dteam" and info["voms_verified"]
    assert info["fqans"][0] == DTEAM and info["proxy_depth"] == 1
    assert 11 * 3600 < info["time_left"] <= 12 * 3600


def test_inspect_proxy_invalid_exits_1_with_reason(pki: TestPKI, users: dict[str, User],
                                                   tmp_path: Path) -> None:
    old = pki.proxy(users["alice"], lifetime=timedelta(hours=1),
                    not_before=datetime.now(UTC) - timedelta(hours=3))
    proc = _inspect(pki, old)
    assert proc.returncode == 1
    assert "expired" in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
    assert "verdict     : INVALID" in proc.stdout
    info = json.loads(_inspect(pki, old, "--json").stdout)
    assert info["valid"] is False and info["failure"] == "expired"
    limited = json.loads(_inspect(pki, pki.proxy(users["alice"], legacy=True, limited=True),
                                  "--json").stdout)
    assert limited["type"] == "legacy proxy (limited)" and limited["valid"]
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n")
    proc = _inspect(pki, str(garbage))
    assert proc.returncode == 1 and "no parseable certificate" in proc.stderr


def test_inspect_proxy_usage_error_exits_2() -> None:
    proc = subprocess.run([sys.executable, "-m", "site_admin.cli", "inspect-proxy"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and "usage" in proc.stderr
