"""How the one-shot commands (``lcas-run``, ``lcmaps-run``) end.

From the command line the process ends with ``os._exit`` after flushing: a one-shot has
nothing left to clean up, and the interpreter's teardown (freeing every object of every
imported module) would add tens of milliseconds to each run. Called with an argv (tests,
other Python code) it returns the exit code instead.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence

__all__ = ["finish"]


def finish(run: Callable[[Sequence[str] | None], int], argv: Sequence[str] | None) -> int:
    """``run(argv)``; from the command line (``argv`` None) flush and end the process."""
    code = run(argv)
    if argv is None:
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)
    return code
