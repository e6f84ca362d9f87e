"""cxrseg evaluate: metrics, per-image Dice and a PR curve of a trained model on a data split (constant memory)."""

from __future__ import annotations

import argparse
import logging

from cxrseg.inference import TTA_MODES, load_segmenter

logger = logging.getLogger(__name__)


def add_model_arguments(parser: argparse.ArgumentParser, postprocess: bool = True) -> None:
    """--model, --tta, --batch-size, --num-workers, --device (and --no-postprocess): shared by the subcommands."""
    parser.add_argument("--model", required=True, help="trained model folder (run_train.py output) or Hub id")
    parser.add_argument(
        "--tta",
        choices=TTA_MODES,
        default="none",
        help="test-time augmentation: hflip averages the probabilities of the image and its mirror",
    )
    parser.add_argument("--batch-size", type=int, default=8, help="images per forward pass (default 8)")
    parser.add_argument("--num-workers", type=int, default=2, help="DataLoader processes reading images (default 2)")
    parser.add_argument("--device", default="auto", help="auto (GPU if available), cpu, cuda, cuda:1, ...")
    if postprocess:
        parser.add_argument(
            "--no-postprocess", action="store_true", help="ignore the model's postprocess.json: masks are prob >= 0.5"
        )


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "evaluate",
        help="Metrics, per-image Dice and a PR curve of a trained model on a data split.",
        description=__doc__.splitlines()[0] + " Runs at the model's working resolution (its image processor size), "
        "as training's evaluation does. Writes metrics.json, per_image.csv and pr_curve.png.",
    )
    add_model_arguments(parser)
    parser.add_argument("--data", required=True, help="data root in the PNG layout (ROOT/images/<split>/*.png)")
    parser.add_argument(
        "--split",
        default="val",
        help="a split of the model's splits.json (val: images it never trained on), else a folder "
        "ROOT/images/<split> (default val)",
    )
    parser.add_argument(
        "--out",
        help="output folder (default MODEL/evaluation/<split> for a local model, "
        "./evaluation/<owner>--<name>/<split> for a Hub id)",
    )
    parser.add_argument(
        "--search-postprocess",
        action="store_true",
        help="grid-search the SIIM triplet (top threshold, min area, bottom threshold) for the Kaggle "
        "mean Dice on this split and save the winner as postprocess.json next to the model",
    )
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cxrseg.evaluate import evaluate, summary_table

    segmenter = load_segmenter(args.model, device=args.device, use_postprocess=not args.no_postprocess)
    result = evaluate(
        segmenter,
        args.data,
        args.split,
        args.out,
        tta=args.tta,
        batch_size=args.batch_size,
        num_workers=args.num_workers,
        search=args.search_postprocess,
    )
    print(summary_table(result))
    print(f"Wrote {result.out_dir}/metrics.json, per_image.csv, pr_curve.png")
    return 0
