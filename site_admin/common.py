"""What every ``scas-admin`` command shares: exit codes, errors, output, the server config."""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Iterable
from typing import Any

from safetext import one_line

OK, PROBLEM, USAGE = 0, 1, 2
DEFAULT_CONFIG = os.environ.get("SCAS_CONFIG", "/etc/scas/scas.yaml")


class AdminError(Exception):
    """A system or usage failure (exit 2): unreadable file, bad argument, no server."""

    exit_code = USAGE

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = one_line(reason)


class Refused(AdminError):
    """The command was understood but refused, or found a problem (exit 1)."""

    exit_code = PROBLEM


def add_common(parser: argparse.ArgumentParser) -> None:
    """``--config`` and ``--json``, which every command takes."""
    parser.add_argument("--config", default=DEFAULT_CONFIG,
                        help="the server's YAML (default $SCAS_CONFIG or %(default)s)")
    parser.add_argument("--json", action="store_true", help="one JSON document on stdout")


def load_server_config(args: argparse.Namespace) -> Any:
    """The validated server configuration (``scas_server.config.ServerConfig``)."""
    from scas_server.config import ConfigError, load_config

    try:
        return load_config(args.config)
    except ConfigError as exc:
        raise AdminError(f"{args.config}: {exc.errors[0]}") from None
    except OSError as exc:
        raise AdminError(f"{args.config}: {exc.strerror}") from None


def emit(args: argparse.Namespace, document: Any, lines: Iterable[str]) -> None:
    """Print ``document`` as JSON under ``--json``, else the human ``lines``."""
    if getattr(args, "json", False):
        print(json.dumps(document, sort_keys=True, default=str))
    else:
        for line in lines:
            print(line)


def warn(message: str) -> None:
    """One sanitised line on stderr."""
    print(f"scas-admin: {one_line(message)}", file=sys.stderr)


def progress(done: int, total: int, label: str) -> None:
    """A progress bar on stderr, only when stderr is a terminal."""
    if not sys.stderr.isatty() or total <= 0:
        return
    width = 30
    filled = width * done // total
    end = "\n" if done >= total else ""
    print(f"\r{label} [{'#' * filled}{'.' * (width - filled)}] {done}/{total}", end=end,
          file=sys.stderr, flush=True)
