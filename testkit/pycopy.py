"""An interpreter an unprivileged test account can run, with this project importable.

The project venv's base Python lives under /root (mode 0700 here), so a pilot or pool
account cannot start it. :func:`python_copy` copies that Python into ``base``, makes a venv
from the copy whose ``sys.path`` holds the repository and the project venv's site-packages
(plain path lines, as a regular non-editable install puts packages on ``sys.path``: the
project venv's own ``.pth`` hooks are not run), byte-compiles the glexec path as root once,
as an install does, and checks that ``imports`` load. Used by the glexec, pilot and job
submission tests and by the job-submission demo.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PY_VER", "REPO", "VENV", "python_copy"]

REPO = Path(__file__).resolve().parent.parent
VENV = REPO / ".venv"
PY_VER = f"python{sys.version_info.major}.{sys.version_info.minor}"
#: what glexec imports on a run: compiled once as root, so the runs need not compile
COMPILED = ("glexec", "client", "safetext.py")


def _copy_base_python(py: Path) -> Path:
    """The base interpreter and its standard library under ``py``; returns the binary."""
    real = Path(os.path.realpath(sys.executable))
    prefix = Path(sys.base_prefix)
    (py / "bin").mkdir(parents=True)
    (py / "lib").mkdir()
    exe = real.read_bytes()
    runpath = str(prefix / "lib").encode() + b"\0"  # RUNPATH: unreachable for the account
    if runpath in exe and len(runpath) > len(b"$ORIGIN/../lib"):
        exe = exe.replace(runpath, b"$ORIGIN/../lib".ljust(len(runpath), b"\0"))
    (py / "bin" / real.name).write_bytes(exe)
    os.chmod(py / "bin" / real.name, 0o755)
    for lib in (prefix / "lib").glob("libpython*.so*"):
        shutil.copy2(lib, py / "lib" / lib.name, follow_symlinks=True)
    tar = (f"tar -C {str(prefix / 'lib')!r} -cf - --exclude={PY_VER}/site-packages "
           f"--exclude={PY_VER}/test --exclude={PY_VER}/idlelib {PY_VER} "
           f"| tar -C {str(py / 'lib')!r} -xf -")  # fmt: skip
    subprocess.run(["/bin/sh", "-c", tar], check=True)
    (py / "lib" / PY_VER / "site-packages").mkdir(exist_ok=True)
    return py / "bin" / real.name


def python_copy(base: Path, imports: Sequence[str] = ("glexec.cli", "client.query")) -> Path:
    """A venv's python under ``base`` that any account can run; ``imports`` must load in it."""
    binary = _copy_base_python(base / "py")
    venv = base / "venv"
    subprocess.run([str(binary), "-m", "venv", "--without-pip", str(venv)],
                   check=True, capture_output=True)  # fmt: skip
    site_pkgs = VENV / "lib" / PY_VER / "site-packages"
    (venv / "lib" / PY_VER / "site-packages" / "scas_project_venv.pth").write_text(
        f"{REPO}\n{site_pkgs}\n")  # fmt: skip
    subprocess.run(["chmod", "-R", "a+rX,go-w", str(base / "py"), str(venv)], check=True)
    # compileall writes even under PYTHONDONTWRITEBYTECODE, which the imports below obey
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "compileall", "-q", *(str(REPO / c) for c in COMPILED)],
                   check=True, capture_output=True)  # fmt: skip
    subprocess.run([str(python), "-c", "import " + ", ".join(imports)],
                   check=True, capture_output=True)  # fmt: skip
    return python
