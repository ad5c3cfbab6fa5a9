"""Subcommands of the scheduler service (filled in by its issue)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Add this service's subcommands to the ``damselfly`` parser."""
