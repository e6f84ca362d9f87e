"""``cxrseg train``: ``run_train.py`` as a subcommand. The same recipe parser (:func:`cxrseg.config.parse_recipe`:
``--config recipe.yaml`` plus ``--key value`` overrides) and the same :func:`cxrseg.training.train.main`, so the
same runs, errors and exit statuses. ``accelerate launch -m cxrseg train ...`` starts it on several processes, as
``accelerate launch run_train.py ...`` does."""

from __future__ import annotations

import argparse

from cxrseg.training.train import main


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "train",
        help="Train a model from a recipe, as run_train.py: --config recipe.yaml [--key value ...] (--help: the keys).",
        add_help=False,
        # No option prefix: every word after `train`, --help included, goes to the recipe parser, which knows the
        # keys (argparse would reject them as unrecognized arguments).
        prefix_chars="\0",
    )
    parser.add_argument("recipe_args", nargs="*")
    parser.set_defaults(func=run, sets_up_logging=True)


def run(args: argparse.Namespace) -> int:
    return main(args.recipe_args)
