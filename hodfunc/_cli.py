"""The ``hodfunc`` command line: ``hodfunc demo`` (more subcommands arrive with the CLI issue)."""

from __future__ import annotations

import argparse
from collections.abc import Sequence


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hodfunc",
        description="Derivatives of any order in PyTorch.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser(
        "demo",
        help="replay the seed documents' examples: printed vs functional vs imperative",
        description="Replay every example of the seed documents and compare the values they "
        "printed "
        "with hodfunc's functional and imperative results, with a verdict for each.",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the command line; returns the exit status."""
    args = _parser().parse_args(argv)
    if args.command == "demo":
        from ._demo import run_demo

        return run_demo()
    raise AssertionError(args.command)  # argparse rejects unknown commands
