"""The damselfly command: one subcommand per service or tool."""

from __future__ import annotations

import argparse
import logging
import sys
from importlib import import_module, metadata

# Each module has register(subparsers) and sets ``run`` on its parsers.
COMMAND_MODULES = [
    "damselfly.services.launcher.up",
    "damselfly.services.runtime.eventlog",
    "damselfly.services.scheduler.cli",
    "damselfly.services.peer.cli",
    "damselfly.services.launcher.demo",
    "damselfly.services.manager.cli",
    "damselfly.services.manager.preheat",
]


def _version() -> str:
    try:
        return metadata.version("damselfly")
    except metadata.PackageNotFoundError:  # run from a checkout that was never installed
        return "unknown"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="damselfly", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--version", action="version", version=f"damselfly {_version()}")
    sub = parser.add_subparsers(dest="command", required=True)
    for name in COMMAND_MODULES:
        import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"damselfly {args.command}: {exc}", file=sys.stderr)
        return 1

