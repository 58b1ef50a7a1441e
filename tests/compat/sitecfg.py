"""A test site like the oracle demo's (accounts prefixed ``c``), for C and Python alike."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

POOL_ENTRIES = ("cpool001", "cpool002", "cpool003", "cdteam001", "cdteam002", "cdteam003",
                "cextra001")
COMPARED = ("decision", "uid", "username", "pgid", "pgids", "sgids", "poolindex")


def make_site(root: Path, certdir: Path, entries: tuple[str, ...] = POOL_ENTRIES) -> Path:
    """Write grid-mapfile, groupmapfile, ban lists, lcmaps.db and a gridmapdir; return cfg dir."""
    cfg, gmd = root / "etc", root / "gridmapdir"
    cfg.mkdir(parents=True)
    gmd.mkdir()
    for e in entries:
        (gmd / e).touch()
    (cfg / "grid-mapfile").write_text(
        '"/DC=org/DC=example/O=Users/CN=Alice Smith" .cpool\n'
        '"/DC=org/DC=example/O=Users/CN=Bob Jones"   .cpool\n'
        '"/DC=org/DC=example/O=Users/CN=Carol White" .cpool\n'
        '"/DC=org/DC=example/O=Users/CN=Dave Black"  .cpool\n'
        '"/DC=org/DC=example/O=Users/CN=Frank Local" cjohn\n'
        '"/DC=org/DC=example/O=Users/CN=J\\xC3\\xBCrgen M\\xC3\\xBCller" .cextra\n'
        '"/dteam/*" .cdteam\n'
    )
    (cfg / "groupmapfile").write_text(
        '"/dteam/Role=admin/*"  cadmin\n"/dteam/production/*"  cprod\n"/dteam/*"  cdteam\n'
    )
    (cfg / "ban_users.db").write_text('"/DC=org/DC=example/O=Users/CN=Eve*"\n')
    (cfg / "ban_fqans.db").write_text('"/dteam/Role=banned/*"\n')
    (cfg / "lcmaps.db").write_text(f"""# demo.sh's lcmaps.db with the c-prefixed accounts
path = /usr/lib/lcmaps

verify   = "lcmaps_verify_proxy.mod" "-certdir {certdir}"
ban      = "lcmaps_ban_dn.mod" "-banmapfile {cfg}/ban_users.db"
banfqan  = "lcmaps_ban_fqan.mod" "-banmapfile {cfg}/ban_fqans.db"
local    = "lcmaps_localaccount.mod" "-gridmapfile {cfg}/grid-mapfile"
pool     = "lcmaps_poolaccount.mod"
           "-gridmapfile {cfg}/grid-mapfile"
           "-gridmapdir {gmd}"
vomsgrp  = "lcmaps_voms_localgroup.mod" "-groupmapfile {cfg}/groupmapfile" "-mapmin 0"
vomspool = "lcmaps_voms_poolaccount.mod"
           "-gridmapfile {cfg}/grid-mapfile"
           "-gridmapdir {gmd}"
good     = "lcmaps_dummy_good.mod"
posixenf = "lcmaps_posix_enf.mod" "-maxuid 1" "-maxpgid 1" "-maxsgid 32"

voms:
verify -> ban
ban -> banfqan
banfqan -> vomsgrp
vomsgrp -> vomspool
vomspool -> good

standard:
verify -> ban
ban -> local
local -> good | pool
pool -> good

fqan:
ban -> banfqan
banfqan -> vomsgrp
vomsgrp -> vomspool
vomspool -> good

enforce:
local -> posixenf
""")
    return cfg


def cred_env(certdir: Path, vomsdir: Path) -> dict[str, str]:
    return {"X509_CERT_DIR": str(certdir), "X509_VOMS_DIR": str(vomsdir)}


def run_python(cfg: Path, *args: str, env: dict[str, str] | None = None) -> tuple[int, dict]:
    """Run the real ``lcmaps-run`` command on ``cfg/lcmaps.db``."""
    full = dict(os.environ)
    full.update(env or {})
    proc = subprocess.run(
        [sys.executable, "-m", "lcmaps.cli", "--db", str(cfg / "lcmaps.db"), *args],
        capture_output=True, text=True, env=full, timeout=60,
    )
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return proc.returncode, json.loads(line)


def compared(result: dict) -> dict:
    return {k: result.get(k) for k in COMPARED if k in result}
