"""Entry point of the `streamflow` console script.

Each subcommand lives in its own module under ``streamflow.cli/`` and exposes
``add_parser(subparsers)``, which registers its options and sets ``func``.
A :class:`~streamflow.errors.StreamflowError` becomes one line on stderr and
exit code 2; Ctrl-C exits with 130. A user never sees a traceback for their mistake.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from streamflow import __version__
from streamflow.errors import StreamflowError

SUBCOMMANDS = (
    "replay", "proxy", "reco", "consume", "sink", "run", "monitor", "hub", "report", "sample", "ephemeral",
    "coordinates", "keys",
)


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with ``only``, just that subcommand's module is imported (fast start-up)."""
    parser = argparse.ArgumentParser(
        prog="streamflow",
        description="Online anomaly detection for collider event streams.",
    )
    parser.add_argument("--version", action="version", version=f"streamflow {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    for name in SUBCOMMANDS:
        if only is None or name == only:
            importlib.import_module(f"streamflow.cli.{name}").add_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    chosen = next((a for a in argv if not a.startswith("-")), None)
    parser = build_parser(chosen if chosen in SUBCOMMANDS else None)
    args = parser.parse_args(argv)
    args.argv = argv  # the command line as given, for a subcommand that starts copies of itself
    try:
        return int(args.func(args) or 0)
    except StreamflowError as exc:
        print(f"streamflow {args.command}: error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"streamflow {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
