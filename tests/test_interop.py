"""Interop with the real grid tools: Debian's grid-proxy-init, voms-proxy-fake,
voms-proxy-info and C LCMAPS read the same credentials we do.

Skipped (with the reason) where the Debian packages are missing; ``.ci/run``
installs them, so CI always runs these.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from credentials.credential import ProxyType, TrustStore, load_proxy_file, verify_credential
from testkit.pki import TestPKI, User

pytestmark = pytest.mark.interop

PROD = "/dteam/production/Role=NULL/Capability=NULL"
DTEAM = "/dteam/Role=NULL/Capability=NULL"


def _need(tool: str) -> None:
    if shutil.which(tool) is None:
        pytest.skip(f"{tool} is not installed (Debian packages globus-proxy-utils, voms-clients)")


def _env(pki: TestPKI) -> dict[str, str]:
    return {**os.environ, "X509_CERT_DIR": pki.certdir, "X509_VOMS_DIR": pki.vomsdir,
            "HOME": pki.dir}


def _grid_proxy_init(pki: TestPKI, user: User, out: Path, *extra: str) -> Path:
    _need("grid-proxy-init")
    subprocess.run(
        ["grid-proxy-init", "-q", *extra, "-cert", user.cert_path, "-key", user.key_path,
         "-certdir", pki.certdir, "-out", str(out)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL, env=_env(pki), timeout=60,
    )
    return out


def test_interop_grid_proxy_init_rfc(pki: TestPKI, users: dict[str, User],
                                     tmp_path: Path) -> None:
    path = _grid_proxy_init(pki, users["jurgen"], tmp_path / "p.pem", "-rfc")
    cred = verify_credential(load_proxy_file(path), TrustStore(pki.certdir))
    assert cred.identity == "/DC=org/DC=example/O=Users/CN=J\\xC3\\xBCrgen M\\xC3\\xBCller"
    assert cred.proxy_type is ProxyType.RFC3820 and not cred.limited
    assert timedelta(hours=11, minutes=55) < cred.not_after - datetime.now(UTC) \
        <= timedelta(hours=12)


def test_interop_grid_proxy_init_legacy_and_limited(pki: TestPKI, users: dict[str, User],
                                                    tmp_path: Path) -> None:
    legacy = _grid_proxy_init(pki, users["alice"], tmp_path / "old.pem", "-old")
    cred = verify_credential(load_proxy_file(legacy), TrustStore(pki.certdir))
    assert cred.proxy_type is ProxyType.LEGACY and cred.subject.endswith("/CN=proxy")
    limited = _grid_proxy_init(pki, users["alice"], tmp_path / "lim.pem", "-rfc", "-limited")
    cred = verify_credential(load_proxy_file(limited), TrustStore(pki.certdir))
    assert cred.limited and cred.proxy_type is ProxyType.RFC3820


def test_interop_voms_proxy_fake(pki: TestPKI, users: dict[str, User], tmp_path: Path) -> None:
    _need("voms-proxy-fake")
    out = tmp_path / "voms.pem"
    alice = users["alice"]
    subprocess.run(
        ["voms-proxy-fake", "-q", "-rfc", "-cert", alice.cert_path, "-key", alice.key_path,
         "-hostcert", pki.voms_cert_path, "-hostkey", pki.voms_key_path,
         "-certdir", pki.certdir, "-voms", "dteam", "-uri", f"{pki.voms_host}:15000",
         "-fqan", PROD, "-fqan", DTEAM, "-hours", "6", "-out", str(out)],
        check=True, capture_output=True, stdin=subprocess.DEVNULL, env=_env(pki), timeout=60,
    )
    cred = verify_credential(load_proxy_file(out), TrustStore(pki.certdir, pki.vomsdir))
    assert cred.identity == alice.dn
    assert cred.fqans == (PROD, DTEAM) and cred.vo == "dteam"
    ac = cred.voms[0]
    assert ac.server_subject == pki.voms_dn and ac.uri == f"{pki.voms_host}:15000"
    # voms-proxy-fake gives the AC the proxy's lifetime (-hours 6).
    assert timedelta(hours=5, minutes=55) < ac.not_after - datetime.now(UTC) \
        <= timedelta(hours=6)


def test_interop_voms_proxy_info_reads_our_proxy(pki: TestPKI, users: dict[str, User]) -> None:
    """voms-proxy-info reads our ACs: identity and FQANs in order. (It does not report a bad
    signature, so the proof that C verifies our ACs is the C LCMAPS test below.)"""
    _need("voms-proxy-info")
    path = pki.proxy(users["bob"], fqans=[DTEAM, PROD])
    proc = subprocess.run(["voms-proxy-info", "--all", "--file", path], capture_output=True,
                          text=True, env=_env(pki), timeout=60)
    assert proc.returncode == 0, proc.stderr
    assert "Unable to verify" not in proc.stderr + proc.stdout
    assert re.findall(r"^attribute : (\S+)$", proc.stdout, re.M) == [DTEAM, PROD]
    assert re.search(r"^identity\s+: (.+)$", proc.stdout, re.M).group(1) == users["bob"].dn  # type: ignore[union-attr]


def test_interop_c_lcmaps_maps_our_proxies(pki: TestPKI, users: dict[str, User],
                                           tmp_path: Path) -> None:
    """Debian's C LCMAPS maps our proxies through mapfiles keyed on OUR DN strings, and
    verifies our VOMS ACs (a VOMS-only policy permits only when it read the FQAN)."""
    from credentials import errors as err
    from tests.compat.oracle import build_oracle, missing_reason, run_oracle

    reason = missing_reason()
    if reason:
        pytest.skip(reason)
    oracle = build_oracle(tmp_path)
    cfg = tmp_path / "etc"
    cfg.mkdir()
    gridmap, vomsmap = cfg / "grid-mapfile", cfg / "voms-mapfile"
    gridmap.write_text("".join(
        f'"{load_proxy_file(u.cert_path).identity}" nobody\n' for u in users.values()))
    vomsmap.write_text(f'"{DTEAM}" nobody\n')
    (cfg / "lcmaps.db").write_text(
        "path = /usr/lib/lcmaps\n"
        f'local = "lcmaps_localaccount.mod" "-gridmapfile {gridmap}"\n'
        f'vomslocal = "lcmaps_voms_localaccount.mod" "-gridmapfile {vomsmap}"\n'
        'good = "lcmaps_dummy_good.mod"\n'
        "standard:\nlocal -> good\n"
        "vomsonly:\nvomslocal -> good\n"
    )
    env = {"X509_CERT_DIR": pki.certdir, "X509_VOMS_DIR": pki.vomsdir}
    trust = TrustStore(pki.certdir, pki.vomsdir)

    def c_maps(proxy: str, policy: str) -> bool:
        code, out = run_oracle(oracle, "--no-lcas", "--policy", policy, "--pem", proxy,
                               config_dir=cfg, env=env)
        assert code in (0, 1), out
        return code == 0 and out.get("username") == "nobody"

    for user in users.values():
        plain, with_voms = pki.proxy(user), pki.proxy(user, fqans=(DTEAM, PROD))
        assert c_maps(plain, "standard") and c_maps(with_voms, "standard"), user.dn
        assert c_maps(with_voms, "vomsonly") and not c_maps(plain, "vomsonly"), user.dn
    # C ignores a bad AC and maps by DN alone: ignore_bad_acs=True gives the same view.
    alice = users["alice"]
    bad = {
        err.ACSignatureInvalid: pki.proxy(alice, fqans=[DTEAM], ac_forged=True),
        err.ACHolderMismatch: pki.proxy(alice, fqans=[DTEAM], ac_holder=users["bob"]),
        err.ACUntrusted: pki.proxy(alice, fqans=[DTEAM], ac_voms_host="voms.rogue.org"),
    }
    for kind, proxy in bad.items():
        assert c_maps(proxy, "standard") and not c_maps(proxy, "vomsonly"), kind
        with pytest.raises(kind):
            verify_credential(load_proxy_file(proxy), trust)
        lenient = verify_credential(load_proxy_file(proxy), trust, ignore_bad_acs=True)
        assert lenient.fqans == () and lenient.voms_error
