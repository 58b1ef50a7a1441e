"""What a one-shot command imports: its ``main`` run once in a fresh interpreter.

Start-up time is a feature of a command that runs once per payload, so tests pin which
heavy modules each path may load.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Sequence


def run_main(module: str, argv: Sequence[str],
             watched: Sequence[str]) -> tuple[int, list[str], list[str]]:  # fmt: skip
    """(exit code of ``module.main(argv)``, the ``watched`` modules it imported, sorted,
    the lines it printed)."""
    code = (f"import sys\nfrom {module} import main\nrc = main({list(argv)!r})\n"
            f"loaded = sorted(m for m in {tuple(watched)!r} if m in sys.modules)\n"
            "import json\nprint(json.dumps([rc, loaded]))\n")  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)  # fmt: skip
    *printed, last = proc.stdout.strip().splitlines() or [""]
    if not last.startswith("["):
        raise AssertionError(f"{module} did not finish: {proc.stderr.strip()[-2000:]}")
    rc, loaded = json.loads(last)
    return int(rc), list(loaded), printed
