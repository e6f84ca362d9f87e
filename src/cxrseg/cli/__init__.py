"""The ``cxrseg`` command line: one module per subcommand, each with ``register(subparsers)``.

Each ``register`` adds its parser and sets ``func`` (called with the parsed namespace; returns an exit code), and
``sets_up_logging=True`` if the command configures logging itself (``train``, as ``run_train.py``).
A command-line mistake is one line naming the option (:class:`CommandLineParser`), like every user error.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys
from collections.abc import Callable

from cxrseg.errors import CxrsegError, UsageError, environment_problem, report

# Subcommand modules under cxrseg.cli, in the order `cxrseg --help` lists them.
SUBCOMMANDS = (
    "make_demo_data",
    "prepare",
    "train",
    "average",
    "evaluate",
    "predict",
    "visualize",
    "app",
    "push",
    "env",
)


class CommandLineParser(argparse.ArgumentParser):
    """argparse whose errors are a :class:`~cxrseg.errors.UsageError` (one line, exit status 2) instead of the usage
    text; subcommand parsers inherit it."""

    def error(self, message: str):
        raise UsageError(f"{self.prog}: {message} (see `{self.prog} --help`).")


def int_at_least(minimum: int) -> Callable[[str], int]:
    """An argparse ``type``: an integer >= ``minimum``."""

    def parse(text: str) -> int:
        value = int(text)
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be at least {minimum}, got {value}")
        return value

    parse.__name__ = "int"  # argparse names the type in its message: "invalid int value: 'x'"
    return parse


def build_parser(argv: list[str] | None = None) -> argparse.ArgumentParser:
    """The parser; with a known subcommand in ``argv`` only that module is imported (some import torch, which
    takes seconds), otherwise all of them (``cxrseg --help``)."""
    parser = CommandLineParser(
        prog="cxrseg",
        description="Chest X-ray segmentation with UperNet-Swin: data, training, evaluation, prediction, Hub.",
    )
    subparsers = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    chosen = next((arg.replace("-", "_") for arg in (argv or []) if not arg.startswith("-")), None)
    for name in [chosen] if chosen in SUBCOMMANDS else SUBCOMMANDS:
        importlib.import_module(f"cxrseg.cli.{name}").register(subparsers)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = None
    try:
        args = build_parser(argv).parse_args(argv)
        if not getattr(args, "sets_up_logging", False):  # `cxrseg train` logs as run_train.py does
            logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
        return int(args.func(args) or 0)
    except CxrsegError as error:  # a user error: one line, its exit status; anything else is a bug (traceback)
        return report(error)
    except Exception as error:  # the machine's (disk full, no permission): one line saying what to free or change
        problem = environment_problem(error, [getattr(args, "out", None), getattr(args, "submission", None)])
        if problem is None:
            raise
        return report(problem)


if __name__ == "__main__":
    sys.exit(main())
