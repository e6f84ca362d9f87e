"""cxrseg evaluate: metrics, per-image Dice and a PR curve of a trained model on a data split (constant memory)."""

from __future__ import annotations

import argparse
from pathlib import Path

from cxrseg.cli.model_options import add_model_arguments, load_model, run_options
from cxrseg.errors import UsageError


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Metrics, per-image Dice and a PR curve of a trained model on a data split.",
        description=__doc__.splitlines()[0] + " The model runs at its working resolution (its image processor "
        "size); its predictions are scored at each image's original size (as Kaggle scores) or, with --score-size "
        "working, at the working size as training's evaluation does. Writes metrics.json, per_image.csv and "
        "pr_curve.png.",
    )
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="data root in the PNG layout (ROOT/images/<split>/*.png)")
    parser.add_argument(
        "--split",
        help="on the model's training data: a split of its splits.json (default val, the images it never trained "
        "on; for a CV folder, out of fold: each image by the fold model that never trained on it) or a folder "
        "ROOT/images/<split>; on any other dataset: a folder ROOT/images/<split> (default: every image, scored whole)",
    )
    parser.add_argument(
        "--out",
        help="output folder (default MODEL/evaluation/<split>, or MODEL/evaluation/<data folder name> for a whole "
        "dataset, for a local model; ./evaluation/<owner>--<name>/... for a Hub id)",
    )
    parser.add_argument(
        "--search-postprocess",
        action="store_true",
        help="grid-search the SIIM triplet (top threshold, min area, bottom threshold; one per class for "
        "multi-label models) for the Kaggle mean Dice on this split and save the winner as postprocess.json next "
        "to the model; on a CV folder, tuned on the out-of-fold predictions with a cross-validated estimate",
    )
    parser.add_argument(
        "--score-size",
        choices=("original", "working"),
        default="original",
        help="where predictions are scored: original (default; each image's stored mask size, as Kaggle scores: "
        "probabilities resized bilinearly, min_area in those pixels) or working (the model's working size, as "
        "training's eval_* metrics)",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.inference.cv_folder import is_cv_folder

    if len(args.model) == 1 and is_cv_folder(args.model[0]) and _is_cv_training_data(args):
        # deferred for start-up time: torch and datasets load only when this runs
        from cxrseg.evaluation.engine import EvaluationOptions
        from cxrseg.evaluation.out_of_fold import evaluate_out_of_fold
        from cxrseg.evaluation.report import out_of_fold_summary

        if args.postprocess:
            raise UsageError(
                f"--postprocess {args.postprocess}: out-of-fold evaluation scores each fold's own images and tunes "
                "its rule with --search-postprocess; a given rule applies to other splits (--split test)."
            )
        running = {"device": args.device, "precision": args.precision, "compile": args.compile}
        options = EvaluationOptions(search=args.search_postprocess, score_size=args.score_size, **run_options(args))
        result = evaluate_out_of_fold(args.model[0], args.data, args.out, options, **running)
        print(out_of_fold_summary(result))
    else:
        # deferred for start-up time: torch and datasets load only when this runs
        from cxrseg.evaluation.evaluate import evaluate
        from cxrseg.evaluation.report import summary_table

        result = evaluate(
            load_model(args),
            args.data,
            args.split,
            args.out,
            search=args.search_postprocess,
            score_size=args.score_size,
            rule_mismatch="warn" if args.allow_rule_mismatch or args.search_postprocess else "error",
            **run_options(args),
        )
        print(summary_table(result))
    print(f"Wrote {result.out_dir}/metrics.json, per_image.csv, pr_curve.png")
    return 0


def _is_cv_training_data(args: argparse.Namespace) -> bool:
    """Whether a CV folder is asked for its out-of-fold evaluation: ``--split`` val or none, on the data its folds
    were trained on (another dataset is scored by the folds' ensemble)."""
    # deferred for start-up time: torch and datasets load only when this runs
    from cxrseg.evaluation.stream import holds_training_images
    from cxrseg.inference.cv_folder import read_cross_validation

    if args.split not in (None, "val"):
        return False
    run = read_cross_validation(args.model[0])
    known = {image_id for fold in run.folds for image_id in fold["val"]}
    return args.split == "val" or holds_training_images(Path(args.data), known, f"{run.root}/splits.json")
