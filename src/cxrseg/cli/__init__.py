"""The ``cxrseg`` command line: one module per subcommand, each with ``register(subparsers)``.

Each ``register`` adds its parser and sets ``func`` (called with the parsed namespace; returns an exit code).
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from cxrseg.errors import CxrsegError, report

# Subcommand modules under cxrseg.cli, in the order `cxrseg --help` lists them.
SUBCOMMANDS = ("make_demo_data", "prepare", "evaluate", "predict", "visualize", "app", "push", "env")


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with a known subcommand in ``argv`` only that module is imported (some import torch, which
    takes seconds), otherwise all of them (``cxrseg --help``)."""
    parser = argparse.ArgumentParser(
        prog="cxrseg", description="Chest X-ray segmentation with UperNet-Swin: data, evaluation, prediction, Hub."
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg.replace("-", "_") for arg in (argv or []) if not arg.startswith("-")), None)
    for name in [chosen] if chosen in SUBCOMMANDS else SUBCOMMANDS:
        importlib.import_module(f"cxrseg.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(argv).parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except CxrsegError as error:  # a user error: one line, its exit status; anything else is a bug (traceback)
        return report(error)


if __name__ == "__main__":
    sys.exit(main())
