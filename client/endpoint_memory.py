"""Which endpoints failed lately, remembered across processes in a small JSON file.

glexec runs once per payload, so a client that only remembered failures in memory would
try a dead replica first on every job and pay its timeout each time. Instead the failover
loop records each failure here and tries an endpoint that failed in the last `hold`
seconds (60 by default) after the others; once the hold passes, or the endpoint answers,
it takes its normal place again.

The file belongs to the caller (``$XDG_RUNTIME_DIR/scas-client/endpoints.json``, else
``~/.cache/scas-client/endpoints.json``, or a path given). It is advisory: a missing,
corrupt, unreadable or unwritable file is ignored, never fatal, and two processes writing
at once lose at most one note. It is written only when something changes, atomically
(a temporary file in the same directory, mode 0600, then rename), so a reader never sees
half a file; once no failure is left to remember it is removed, so the common case (no file)
costs glexec neither a read nor the import of json.

Standard library only.
"""

from __future__ import annotations

import os
import time

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Sequence

#: seconds a failed endpoint is tried last
DEFAULT_HOLD = 60.0
#: a state file larger than this is not ours: ignored
MAX_STATE = 64 * 1024
_NAME = os.path.join("scas-client", "endpoints.json")


def default_path() -> str:
    """``$XDG_RUNTIME_DIR/scas-client/endpoints.json``, else under ``~/.cache``."""
    runtime = os.environ.get("XDG_RUNTIME_DIR")
    if runtime and os.path.isabs(runtime) and os.path.isdir(runtime):
        return os.path.join(runtime, _NAME)
    return os.path.join(os.path.expanduser("~"), ".cache", _NAME)


class EndpointMemory:
    """Recent failures per endpoint URL (wall-clock times, shared between processes)."""

    def __init__(
        self,
        path: str | None = None,
        *,
        hold: float = DEFAULT_HOLD,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self.path = path or default_path()
        self.hold = hold
        self._clock = clock
        #: the last reason the file could not be used (for diagnostics), or None
        self.problem: str | None = None

    def failures(self) -> dict[str, float]:
        """{url: time of the last failure} for failures still within the hold."""
        now = self._clock()
        return {url: when for url, when in self._load().items() if 0 <= now - when < self.hold}

    def order(self, endpoints: Sequence[str]) -> list[str]:
        """`endpoints` with those that failed lately moved to the end, oldest failure first.

        Endpoints without a recent failure keep their order (the strategy's).
        """
        failed = self.failures()
        fine = [e for e in endpoints if e not in failed]
        late = sorted((e for e in endpoints if e in failed), key=lambda e: failed[e])
        return fine + late

    def record(self, failed: Sequence[str] = (), answered: Sequence[str] = ()) -> None:
        """Note new failures and forget endpoints that answered; write only on a change."""
        state = self._load()
        now = self._clock()
        new = {url: when for url, when in state.items() if 0 <= now - when < self.hold}
        for url in answered:
            new.pop(url, None)
        for url in failed:
            new[url] = now
        if new != state:
            self._save(new)

    def _load(self) -> dict[str, float]:
        try:
            with open(self.path, "rb") as fh:
                raw = fh.read(MAX_STATE + 1)
        except FileNotFoundError:
            return {}
        except OSError as exc:
            self.problem = f"cannot read {self.path}: {exc.strerror}"
            return {}
        if len(raw) > MAX_STATE:
            self.problem = f"{self.path}: larger than {MAX_STATE} bytes, ignored"
            return {}
        import json

        try:
            data = json.loads(raw)
            failed = data["failed"]
            return {
                str(url): float(when)
                for url, when in failed.items()
                if isinstance(when, int | float) and not isinstance(when, bool)
            }
        except (ValueError, TypeError, KeyError, AttributeError, RecursionError) as exc:
            self.problem = f"{self.path}: not a state file ({type(exc).__name__}), ignored"
            return {}

    def _save(self, failed: dict[str, float]) -> None:
        if not failed:
            try:
                os.unlink(self.path)
            except FileNotFoundError:
                pass
            except OSError as exc:
                self.problem = f"cannot remove {self.path}: {exc.strerror}"
            return
        import json

        directory = os.path.dirname(self.path) or "."
        # a private temporary name next to the file (tempfile would cost 6 ms of imports)
        tmp = os.path.join(directory, f".endpoints-{os.getpid()}-{os.urandom(6).hex()}.tmp")
        made = False
        try:
            os.makedirs(directory, mode=0o700, exist_ok=True)
            flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC
            fd = os.open(tmp, flags, 0o600)
            made = True
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                json.dump({"version": 1, "failed": failed}, fh, sort_keys=True)
            os.replace(tmp, self.path)
            made = False
        except OSError as exc:
            self.problem = f"cannot write {self.path}: {exc.strerror}"
        finally:
            if made:
                try:
                    os.unlink(tmp)
                except OSError:
                    pass
