"""Build and run the C oracle (real Debian liblcmaps0 / liblcas0).

Reusable by any differential test: :func:`build_oracle` compiles
``lcmaps_oracle`` and ``oracle_lcas_dnlist.mod`` from a copy of
``shared/oracle`` into a directory of the caller's choice, and
:func:`run_oracle` runs the binary and returns ``(exit code, parsed JSON)``.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

ORACLE_SRC = Path(__file__).resolve().parents[3] / "shared" / "oracle"
LIBLCMAPS = Path("/usr/lib/x86_64-linux-gnu/liblcmaps.so.0")
PLUGIN_DIR = Path("/usr/lib/lcmaps")


def missing_reason() -> str | None:
    """Why the oracle cannot run here, or None when it can."""
    if not ORACLE_SRC.is_dir():
        return f"oracle sources not found at {ORACLE_SRC}"
    if not LIBLCMAPS.exists():
        return "liblcmaps0 is not installed (see shared/oracle/install_deps.sh)"
    if not (PLUGIN_DIR / "lcmaps_poolaccount.mod").exists():
        return "lcmaps plugin packages are not installed"
    if shutil.which("cc") is None or shutil.which("make") is None:
        return "no C compiler/make to build the oracle"
    if not Path("/usr/include/lcmaps/lcmaps_basic.h").exists():
        return "liblcmaps-dev headers are not installed"
    return None


@dataclass(frozen=True)
class Oracle:
    directory: Path

    @property
    def binary(self) -> Path:
        return self.directory / "lcmaps_oracle"

    @property
    def lcas_dnlist(self) -> Path:
        return self.directory / "oracle_lcas_dnlist.mod"

    @property
    def make_creds(self) -> Path:
        return self.directory / "make_creds.sh"


def build_oracle(workdir: Path) -> Oracle:
    """Copy shared/oracle to ``workdir/oracle`` and run make there."""
    dest = workdir / "oracle"
    if not dest.exists():
        shutil.copytree(ORACLE_SRC, dest)
        for p in dest.iterdir():
            p.chmod(0o755 if p.suffix in (".sh", "") else 0o644)
        dest.chmod(0o755)
    subprocess.run(["make", "-s", "-C", str(dest)], check=True, capture_output=True)
    return Oracle(dest)


def run_oracle(
    oracle: Oracle,
    *args: str,
    config_dir: Path | None = None,
    lcmaps_db: Path | None = None,
    env: dict[str, str] | None = None,
    timeout: float = 60,
) -> tuple[int, dict]:
    """Run the oracle; returns (exit code, the JSON object it printed)."""
    cmd = [str(oracle.binary)]
    if config_dir is not None:
        cmd += ["--config-dir", str(config_dir)]
    if lcmaps_db is not None:
        cmd += ["--lcmaps-db", str(lcmaps_db)]
    cmd += list(args)
    full_env = dict(os.environ)
    full_env.update(env or {})
    proc = subprocess.run(cmd, capture_output=True, text=True, env=full_env, timeout=timeout)
    line = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else "{}"
    return proc.returncode, json.loads(line)
