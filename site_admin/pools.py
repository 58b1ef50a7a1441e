"""Placeholder: filled in by the pools work (register() adds no command yet)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands."""
