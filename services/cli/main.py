"""The damselfly command: one subcommand per service or tool."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from importlib import import_module

from damselfly.services.runtime import logs

# Each module has register(subparsers) and sets ``run`` on its parsers. A command imports
# only its own module, so ``damselfly daemon`` and ``damselfly get`` never load DuckDB or the
# manager (``test_cli`` checks this table against what each module registers).
COMMANDS = {
    "up": "damselfly.services.launcher.up",
    "grant-keys": "damselfly.services.launcher.up",
    "events": "damselfly.services.runtime.eventlog",
    "scheduler": "damselfly.services.scheduler.cli",
    "replay": "damselfly.services.scheduler.cli",
    "daemon": "damselfly.services.peer.cli",
    "get": "damselfly.services.peer.cli",
    "init": "damselfly.services.peer.cli",
    "demo": "damselfly.services.launcher.demo",
    "manager": "damselfly.services.manager.cli",
    "sql": "damselfly.services.manager.cli",
    "dashboards": "damselfly.services.manager.cli",
    "projections": "damselfly.services.manager.cli",
    "preheat": "damselfly.services.manager.preheat",
}


class _Version(argparse.Action):
    """``--version``, reading the installed distribution's metadata only when asked."""

    def __init__(self, option_strings: list[str], dest: str, **kwargs: object) -> None:
        super().__init__(option_strings, dest, nargs=0, help="print the version and exit")

    def __call__(self, parser: argparse.ArgumentParser, *_: object) -> None:
        from importlib import metadata

        try:
            version = metadata.version("damselfly")
        except metadata.PackageNotFoundError:  # a checkout that was never installed
            version = "unknown"
        print(f"damselfly {version}")
        parser.exit()


def _command(argv: Sequence[str]) -> str | None:
    """The subcommand named in ``argv`` (after any global flags and their values)."""
    return next((arg for arg in argv if arg in COMMANDS), None)


def build_parser(argv: Sequence[str] | None = None) -> argparse.ArgumentParser:
    """The parser for ``argv``: only its command's module when it names one, else all."""
    parser = argparse.ArgumentParser(prog="damselfly", description=__doc__)
    parser.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    parser.add_argument("--log-format", choices=logs.FORMATS, default=logs.default_format(),
                        help=f"text lines or one JSON object per line (default: ${logs.ENV} "
                             "or text)")
    parser.add_argument("--version", action=_Version)
    sub = parser.add_subparsers(dest="command", required=True)
    command = _command(sys.argv[1:] if argv is None else argv)
    modules = [COMMANDS[command]] if command else COMMANDS.values()
    for name in dict.fromkeys(modules):
        import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser(argv).parse_args(argv)
    logs.configure(args.log_format, verbose=args.verbose)
    try:
        return int(args.run(args))
    except KeyboardInterrupt:
        return 130
    except (OSError, RuntimeError, ValueError) as exc:
        print(f"damselfly {args.command}: {exc}", file=sys.stderr)
        return 1
