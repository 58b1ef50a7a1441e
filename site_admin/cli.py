"""``scas-admin``: one parser; each command module registers its own subcommands."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from site_admin.common import USAGE, AdminError, warn

# Each module has register(subparsers); a subcommand's func(args) -> exit code.
COMMAND_MODULES = (
    "site_admin.credentials_cmds",  # inspect-proxy, keygen
    "site_admin.edits",             # ban, unban, bans, map add|rm, maps
    "site_admin.explain",           # explain
    "site_admin.check",             # check
    "site_admin.pools",             # pools, leases, release, expire
    "site_admin.who",               # who
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="scas-admin",
        description="Edit, explain and check a site's authorization policy; manage leases.",
        epilog="Exit codes: 0 ok, 1 refused or a problem found, 2 usage or system error.",
    )
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMAND_MODULES:
        importlib.import_module(name).register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return int(args.func(args))
    except AdminError as exc:
        warn(exc.reason)
        return exc.exit_code
    except KeyboardInterrupt:
        warn("interrupted")
        return USAGE


if __name__ == "__main__":
    sys.exit(main())
